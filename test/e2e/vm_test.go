package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-sh/banger/api"
)

// sharedVM returns a running VM reused by the tests that do not need a
// fresh one (booting costs seconds under emulation).
var (
	vmOnce sync.Once
	vmName string
)

func sharedVM(t *testing.T) (*harness, string) {
	h := env(t)
	vmOnce.Do(func() {
		// Cold: a long-lived clone would hold its template (a damaged
		// template in use by a clone's disk cannot be rebuilt), which
		// the warm tests damage and rebuild.
		h.must(t, "vm", "create", "--cold", "shared")
		vmName = "shared"
	})
	if vmName == "" {
		t.Fatal("shared VM was not created")
	}
	return h, vmName
}

func TestRunRmUname(t *testing.T) {
	h := env(t)
	r, code := h.run(t, nil, "vm", "run", "--rm", "--", "uname", "-a")
	if code != 0 || !strings.HasPrefix(r.stdout, "Linux ") {
		t.Fatalf("exit %d\nstdout: %q\nstderr: %s", code, r.stdout, r.stderr)
	}
	h.assertNoLeftovers(t, "shared")
}

func TestExecExitCodesAndQuoting(t *testing.T) {
	h, vm := sharedVM(t)
	for _, tc := range []struct {
		argv   []string
		code   int
		stdout string
	}{
		{[]string{"sh", "-c", "exit 42"}, 42, ""},
		{[]string{"false"}, 1, ""},
		{[]string{"true"}, 0, ""},
		{[]string{"sh", "-c", `echo "a b"; exit 3`}, 3, "a b\n"},
		{[]string{"sh", "-c", "kill -9 $$"}, 128 + 9, ""},
		{[]string{"sh", "-c", "kill -TERM $$"}, 128 + 15, ""},
		{[]string{"printf", "%s|", "x y", "", "'q'"}, 0, "x y||'q'|"},
		{[]string{"/no/such/program"}, 127, ""},
	} {
		r, code := h.run(t, nil, append([]string{"vm", "exec", vm, "--"}, tc.argv...)...)
		if code != tc.code || (tc.stdout != "" && r.stdout != tc.stdout) {
			t.Errorf("%q: exit %d stdout %q (stderr %q), want exit %d stdout %q", tc.argv, code, r.stdout, r.stderr, tc.code, tc.stdout)
		}
	}
}

func TestExecStdinAndLargeOutput(t *testing.T) {
	h, vm := sharedVM(t)
	r, code := h.run(t, strings.NewReader("hi\n"), "vm", "exec", vm, "--", "cat")
	if code != 0 || r.stdout != "hi\n" {
		t.Fatalf("cat: exit %d %q %s", code, r.stdout, r.stderr)
	}
	// 8 MiB through stdin and back, binary-safe.
	data := bytes.Repeat([]byte{0, 1, 2, 255, '\n', 'x'}, 8<<20/6)
	r, code = h.run(t, bytes.NewReader(data), "vm", "exec", vm, "--", "sh", "-c", "cat; echo err >&2")
	if code != 0 || r.stdout != string(data) || r.stderr != "err\n" {
		t.Fatalf("large: exit %d, %d bytes back (want %d), stderr %q", code, len(r.stdout), len(data), r.stderr)
	}
	// --cwd and --env
	r, code = h.run(t, nil, "vm", "exec", "--cwd", "/tmp", "--env", "FOO=bar baz", vm, "--", "sh", "-c", `echo "$PWD:$FOO"`)
	if code != 0 || r.stdout != "/tmp:bar baz\n" {
		t.Fatalf("cwd/env: exit %d %q %s", code, r.stdout, r.stderr)
	}
}

func TestRunExitCodesAndStdin(t *testing.T) {
	h := env(t)
	r, code := h.run(t, nil, "vm", "run", "--rm", "--", "sh", "-c", "exit 42")
	if code != 42 {
		t.Fatalf("exit 42: got %d: %s", code, r.stderr)
	}
	r, code = h.run(t, strings.NewReader("hi\n"), "vm", "run", "--rm", "--", "cat")
	if code != 0 || r.stdout != "hi\n" {
		t.Fatalf("stdin: exit %d %q %s", code, r.stdout, r.stderr)
	}
	h.assertNoLeftovers(t, "shared")
}

func TestConcurrentRunRm(t *testing.T) {
	h := env(t)
	var wg sync.WaitGroup
	codes := make([]int, 3)
	outs := make([]result, 3)
	for i := range codes {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			outs[i], codes[i] = h.run(t, nil, "vm", "run", "--rm", "--", "sh", "-c", fmt.Sprintf("echo run-%d; exit %d", i, i+10))
		}(i)
	}
	wg.Wait()
	for i := range codes {
		if codes[i] != i+10 || outs[i].stdout != fmt.Sprintf("run-%d\n", i) {
			t.Errorf("run %d: exit %d %q %s", i, codes[i], outs[i].stdout, outs[i].stderr)
		}
	}
	h.assertNoLeftovers(t, "shared")
}

func TestInvalidSpecLeavesNothing(t *testing.T) {
	h := env(t)
	for _, args := range [][]string{
		{"vm", "create", "bad1", "--vcpu", "0"},
		{"vm", "create", "bad2", "--mem", "64"},
		{"vm", "create", "Bad_Name"},
		{"vm", "create", "bad3", "--image", "no-such-image"},
		{"vm", "create", "bad4", "--disk", "1M"},
		{"vm", "run", "--rm", "--vcpu", "0", "--", "true"},
	} {
		r, code := h.run(t, nil, args...)
		if code == 0 || r.stderr == "" {
			t.Errorf("%v: exit %d, stderr %q", args, code, r.stderr)
		}
	}
	if _, code := h.run(t, nil, "vm", "run", "--rm", "--vcpu", "0", "--", "true"); code != 125 {
		t.Errorf("vm run with a bad spec: exit %d, want 125", code)
	}
	h.assertNoLeftovers(t, "shared")
}

func TestInterruptedRunRmLeavesNothing(t *testing.T) {
	h := env(t)
	var out, errb syncBuffer
	// Not `sh -c 'echo started; sleep 300'`: dash catches SIGINT when run
	// with -c, and one that lands between the echo and the fork of sleep
	// is only acted on once sleep has ended (seen once in CI: 300 s). perl
	// is in its sleep, with SIGINT's default action, once "started" shows.
	p := h.start(t, &out, &errb, "vm", "run", "--rm", "--name", "sigint", "--", "perl", "-e", `$| = 1; print "started\n"; sleep 300`)
	deadline := time.Now().Add(3 * time.Minute)
	for !strings.Contains(out.String(), "started") {
		if time.Now().After(deadline) {
			p.Signal(syscall.SIGKILL)
			t.Fatalf("command did not start: %s", errb.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.Signal(syscall.SIGINT)
	exited := make(chan error, 1)
	go func() { exited <- p.Wait() }()
	var err error
	select {
	case err = <-exited:
	case <-time.After(30 * time.Second):
		// The guest command outlived the SIGINT: say what the guest's
		// processes had pending, blocked, ignored and caught.
		r, _ := h.run(t, nil, "vm", "exec", "sigint", "--", "sh", "-c",
			`for d in /proc/[0-9]*; do c=$(tr '\0' ' ' < $d/cmdline 2>/dev/null); [ -n "$c" ] && echo "${d#/proc/} $c $(grep -E '^(State|SigPnd|ShdPnd|SigBlk|SigIgn|SigCgt)' $d/status | tr -s '\t\n' '  ')"; done`)
		p.Signal(syscall.SIGKILL)
		<-exited
		h.run(t, nil, "vm", "delete", "--force", "sigint")
		t.Fatalf("the command did not end within 30 s of SIGINT; guest processes:\n%s\nstderr: %s\ndaemon log:%s", r.stdout, errb.String(), h.daemonLogTail())
	}
	if code := exitCodeOf(err); code != 130 {
		t.Errorf("interrupted run: exit %d (%v), want 130; stderr %s", code, err, errb.String())
	}
	h.assertNoLeftovers(t, "shared")
	if _, code := h.run(t, nil, "vm", "show", "sigint"); code != 3 {
		t.Errorf("vm show of the removed VM: exit %d, want 3 (not found)", code)
	}
}

func TestCreateShowLsDelete(t *testing.T) {
	h, vm := sharedVM(t)
	var v api.VM
	if err := json.Unmarshal([]byte(h.must(t, "vm", "show", "--json", vm)), &v); err != nil {
		t.Fatal(err)
	}
	if v.State != "running" || v.PID == 0 || v.VCPUs != 1 || v.Image != "default" {
		t.Fatalf("show: %+v", v)
	}
	if out := h.must(t, "vm", "exec", vm, "--", "hostname"); out != vm+"\n" {
		t.Errorf("hostname %q, want %q", out, vm)
	}
	if r, code := h.run(t, nil, "vm", "create", vm); code != 4 || !strings.Contains(r.stderr, "already exists") {
		t.Errorf("duplicate create: exit %d %s", code, r.stderr)
	}
	if _, code := h.run(t, nil, "vm", "exec", "nope", "--", "true"); code != 125 {
		t.Errorf("exec in a missing VM: exit %d, want 125", code)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
