package e2e

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-sh/banger/internal/consolelog"
	"github.com/banger-sh/banger/internal/system"
	"github.com/banger-sh/banger/internal/vmm/qmp"
)

// TestGuestConsoleFloodBounded: a guest writing /dev/ttyS0 without end
// grew its console log without bound (issue 16, item 6). The daemon cuts
// it past consolelog.Max while QEMU keeps appending: the newest output is
// kept, whole, with no hole.
func TestGuestConsoleFloodBounded(t *testing.T) {
	h, vm := sharedVM(t)
	v, _ := showVM(t, h, vm)
	path := v.ConsoleLog
	// ~250 KB/s under TCG: 4.5 MiB is ~20 s.
	const flood = consolelog.Max + 512<<10
	start := time.Now()
	execOut(t, h, vm, "sh", "-c", `head -c "$1" /dev/zero | tr '\0' x > /dev/ttyS0; echo; echo banger-flood-done > /dev/ttyS0`, "sh", strconv.Itoa(flood))
	took := time.Since(start)
	// The daemon cuts once a second.
	var size int64
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		st, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if size = st.Size(); size <= consolelog.Max {
			break
		}
	}
	t.Logf("guest wrote %d MiB to its console in %v; console.log is %.1f MiB", flood>>20, took.Round(time.Millisecond), float64(size)/(1<<20))
	if size > consolelog.Max {
		t.Fatalf("console log is %d bytes after a %d-byte flood, more than %d", size, flood, consolelog.Max)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(data[max(0, len(data)-4096):], []byte("banger-flood-done")) {
		t.Errorf("the newest console output is not at the end of the log: %q", data[max(0, len(data)-200):])
	}
	if bytes.IndexByte(data, 0) >= 0 {
		t.Errorf("NUL bytes in the console log: QEMU wrote past a cut (not appending)")
	}
	if out := h.must(t, "vm", "logs", vm); !strings.Contains(out, "banger-flood-done") {
		t.Errorf("vm logs lacks the newest output")
	}
	if !strings.Contains(h.daemonLogTail(), "console log trimmed") {
		t.Errorf("the daemon did not log the trim")
	}
}

// pauseGuest stops a VM's vCPUs (QMP stop): its agent goes silent, while
// QEMU still accepts connections on the agent's socket.
func pauseGuest(t *testing.T, h *harness, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, filepath.Join(h.runtimeDir(id), "qmp.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Execute(ctx, "stop", nil, nil); err != nil {
		t.Fatal(err)
	}
}

// TestSilentAgentDeleteForceAndDaemonStop: an exec dialling an agent that
// never answers wedged `vm delete --force` and daemon shutdown (issue 16,
// item 5). The guest is made silent by pausing its vCPUs; a fresh daemon
// then has to dial it.
func TestSilentAgentDeleteForceAndDaemonStop(t *testing.T) {
	h := env(t)
	for _, n := range []string{"silent1", "silent2"} {
		h.must(t, "vm", "create", n)
		t.Cleanup(func() { h.run(t, nil, "vm", "delete", "--force", n) })
		v, _ := showVM(t, h, n)
		pauseGuest(t, h, v.ID)
	}
	h.must(t, "daemon", "stop") // the next daemon has no agent connection
	h.must(t, "daemon", "start")

	var out1, out2 bytes.Buffer
	exec1 := h.start(t, &out1, &out1, "vm", "exec", "silent1", "--", "true")
	t.Cleanup(func() { exec1.Signal(syscall.SIGKILL) })
	time.Sleep(time.Second) // dialling the silent agent
	start := time.Now()
	r, code := h.runWithin(t, time.Minute, "vm", "delete", "--force", "silent1")
	took := time.Since(start)
	t.Logf("vm delete --force of a VM with a silent agent: %v (exit %d)", took.Round(time.Millisecond), code)
	if code != 0 {
		t.Fatalf("delete --force: exit %d: %s", code, r.stderr)
	}
	if took > 10*time.Second {
		t.Errorf("delete --force took %v behind a silent agent", took)
	}
	if _, ok := showVM(t, h, "silent1"); ok {
		t.Errorf("silent1 still exists")
	}
	waitExit(t, exec1, 10*time.Second, "the exec into the deleted VM")

	exec2 := h.start(t, &out2, &out2, "vm", "exec", "silent2", "--", "true")
	t.Cleanup(func() { exec2.Signal(syscall.SIGKILL) })
	time.Sleep(time.Second)
	start = time.Now()
	if r, code := h.runWithin(t, time.Minute, "daemon", "stop"); code != 0 {
		t.Fatalf("daemon stop: exit %d: %s", code, r.stderr)
	}
	took = time.Since(start)
	t.Logf("daemon stop with an exec dialling a silent agent: %v", took.Round(time.Millisecond))
	if took > 20*time.Second {
		t.Errorf("daemon stop took %v behind a silent agent", took)
	}
	waitExit(t, exec2, 10*time.Second, "the exec across daemon stop")
	h.must(t, "vm", "delete", "--force", "silent2")
	h.assertNoLeftovers(t)
}

// runWithin is run, killing banger after d (a wedged daemon must fail the
// test, not hang it).
func (h *harness) runWithin(t *testing.T, d time.Duration, args ...string) (result, int) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	_, err := system.RunOpts(ctx, system.Opts{Env: h.environ(), Stdout: &out, Stderr: &errb},
		append([]string{filepath.Join(h.bin, "banger")}, args...)...)
	if ctx.Err() != nil {
		t.Fatalf("banger %s: still running after %v", strings.Join(args, " "), d)
	}
	code := 0
	if err != nil {
		if code = system.ExitCode(err); code < 0 {
			t.Fatalf("banger %v: %v", args, err)
		}
	}
	return result{out.String(), errb.String()}, code
}

func waitExit(t *testing.T, p interface{ Wait() error }, d time.Duration, what string) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- p.Wait() }()
	select {
	case err := <-done:
		if err == nil {
			t.Errorf("%s succeeded", what)
		}
	case <-time.After(d):
		t.Errorf("%s still runs after %v", what, d)
	}
}

// TestExportApplyRefusesHooks: `--export apply` applied whatever the guest
// wrote, so a guest could plant a hook the host runs at the next commit
// (issue 16, item 8). It now refuses, lists the files, keeps the edits as
// a rescue patch (the --rm VM goes), and applies them with --allow-hooks.
func TestExportApplyRefusesHooks(t *testing.T) {
	h := env(t)
	repo := fixtureRepo(t)
	before := hostTreeDigest(t, repo)
	plant := `set -e; cd /root/repo; mkdir -p .husky; printf '#!/bin/sh\necho pwned\n' > .husky/pre-commit; chmod +x .husky/pre-commit; echo 'repos: []' > .pre-commit-config.yaml; echo edited >> README.md`
	r, code := h.run(t, nil, "vm", "run", "--rm", "--name", "hooks", "--export", "apply", repo, "--", "sh", "-c", plant)
	t.Logf("refused: exit %d\n%s", code, r.stderr)
	if code != 125 {
		t.Errorf("vm run --export apply with hook edits: exit %d, want 125", code)
	}
	for _, want := range []string{"WARNING", ".husky/pre-commit", ".pre-commit-config.yaml", "nothing was applied", "--allow-hooks"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("stderr lacks %q", want)
		}
	}
	if after := hostTreeDigest(t, repo); after != before {
		t.Errorf("the host tree changed:\n%s\nvs\n%s", before, after)
	}
	matches, _ := filepath.Glob(filepath.Join(repo, ".git", "banger", "rescue-hooks-*.patch"))
	if len(matches) != 1 || !strings.Contains(r.stderr, matches[0]) {
		t.Fatalf("rescue patch %v not reported", matches)
	}
	if b, _ := os.ReadFile(matches[0]); !bytes.Contains(b, []byte("echo pwned")) {
		t.Errorf("the rescue patch lacks the edits")
	}
	h.assertNoLeftovers(t, "shared")

	r, code = h.run(t, nil, "vm", "run", "--rm", "--name", "hooks2", "--export", "apply", "--allow-hooks", repo, "--", "sh", "-c", plant)
	if code != 0 {
		t.Fatalf("--allow-hooks: exit %d: %s", code, r.stderr)
	}
	if !strings.Contains(r.stderr, "WARNING") || !strings.Contains(r.stderr, ".husky/pre-commit") {
		t.Errorf("--allow-hooks applied without listing the hook files:\n%s", r.stderr)
	}
	if b, err := os.ReadFile(filepath.Join(repo, ".husky", "pre-commit")); err != nil || !bytes.Contains(b, []byte("pwned")) {
		t.Errorf("--allow-hooks: hook not applied: %v", err)
	}
	h.assertNoLeftovers(t, "shared")
}
