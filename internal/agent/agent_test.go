package agent

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"
)

// The tests run the guest in this process with the InitReaper, as PID 1
// does, and make the test process a child subreaper so that orphans of the
// programs they run come back to it (as they would to PID 1). Nothing else
// in this test binary starts child processes.
var (
	reaperOnce sync.Once
	reaper     *InitReaper
)

func TestMain(m *testing.M) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "PR_SET_CHILD_SUBREAPER:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func testReaper() Reaper {
	reaperOnce.Do(func() { reaper = NewInitReaper() })
	return reaper
}

// fakeMachine records the privileged operations.
type fakeMachine struct {
	mu         sync.Mutex
	hostname   string
	time       time.Time
	seed       []byte
	machineID  string
	prepared   bool
	net        *NetConfig
	keys       []string
	mounts     []Mount
	poweredOff chan struct{}
}

func (m *fakeMachine) ConfigureNetwork(n NetConfig) error {
	if err := n.validate(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.net = &n
	return nil
}
func (m *fakeMachine) MountAll(ms []Mount) error {
	for _, mt := range ms {
		if err := mt.validate(); err != nil {
			return err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.mounts = append(m.mounts, ms...)
	return nil
}
func (m *fakeMachine) SetAuthorizedKeys(k []string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.keys = k
	return nil
}

func newFakeMachine() *fakeMachine { return &fakeMachine{poweredOff: make(chan struct{})} }

func (m *fakeMachine) SetHostname(n string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.hostname = n
	return nil
}
func (m *fakeMachine) SetTime(t time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.time = t
	return nil
}
func (m *fakeMachine) SeedRandom(s []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.seed = s
	return nil
}
func (m *fakeMachine) SetMachineID(id string) error {
	if len(id) != 32 {
		return errors.New("bad machine id")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.machineID = id
	return nil
}
func (m *fakeMachine) PrepareShutdown(context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.prepared = true
	return nil
}
func (m *fakeMachine) PowerOff() error {
	close(m.poweredOff)
	return nil
}

// socketPair returns two connected unix stream sockets.
func socketPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "socketpair")
		c, err := net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	return conn(fds[0]), conn(fds[1])
}

type pair struct {
	client  *Client
	machine *fakeMachine
	served  chan error
}

func startPair(t *testing.T, opts ServeOptions) *pair {
	t.Helper()
	hc, gc := socketPair(t)
	m := newFakeMachine()
	if opts.Machine == nil {
		opts.Machine = m
	}
	if opts.Reaper == nil {
		opts.Reaper = testReaper()
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, gc, opts) }()
	dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
	defer dcancel()
	c, err := Dial(dctx, hc)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		cancel()
		select {
		case <-served:
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after the session closed")
		}
	})
	return &pair{client: c, machine: m, served: served}
}

func tctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type result struct {
	status         ExitStatus
	stdout, stderr string
}

func run(t *testing.T, c *Client, req ExecRequest) result {
	t.Helper()
	var out, errb bytes.Buffer
	req.Stdout, req.Stderr = &out, &errb
	p, err := c.Exec(tctx(t), req)
	if err != nil {
		t.Fatalf("exec %v: %v", req.Argv, err)
	}
	st, err := p.Wait()
	if err != nil {
		t.Fatalf("wait %v: %v", req.Argv, err)
	}
	return result{st, out.String(), errb.String()}
}

// TestServeWithChildWaiter comes first in this file: once the InitReaper
// runs (wait4(-1)), it reaps every child of the test process.
func TestServeWithChildWaiter(t *testing.T) {
	if reaper != nil {
		t.Skip("the InitReaper already reaps this process's children")
	}
	p := startPair(t, ServeOptions{Reaper: ChildWaiter{}})
	r := run(t, p.client, ExecRequest{Argv: []string{"sh", "-c", "exit 42"}})
	if r.status.Code != 42 {
		t.Errorf("%+v", r)
	}
}

func TestPing(t *testing.T) {
	p := startPair(t, ServeOptions{})
	info, err := p.client.Ping(tctx(t))
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	if info.Version != Version || info.Hostname != host || info.Kernel == "" || info.UptimeSeconds <= 0 || len(info.BootID) != 36 {
		t.Errorf("info = %+v", info)
	}
}

func TestExecExitCodes(t *testing.T) {
	p := startPair(t, ServeOptions{})
	for _, code := range []int{0, 1, 42} {
		r := run(t, p.client, ExecRequest{Argv: []string{"sh", "-c", fmt.Sprintf("echo out; echo err >&2; exit %d", code)}})
		if r.status != (ExitStatus{Code: code}) {
			t.Errorf("exit %d: status %+v", code, r.status)
		}
		if r.stdout != "out\n" || r.stderr != "err\n" {
			t.Errorf("exit %d: stdout %q stderr %q", code, r.stdout, r.stderr)
		}
	}
}

// TestExecSameWriterForBoth: one buffer for stdout and stderr (as callers
// of exec.Cmd often do) must not be written concurrently.
func TestExecSameWriterForBoth(t *testing.T) {
	p := startPair(t, ServeOptions{})
	var out bytes.Buffer
	proc, err := p.client.Exec(tctx(t), ExecRequest{
		Argv:   []string{"sh", "-c", "i=0; while [ $i -lt 300 ]; do echo out; echo err >&2; i=$((i+1)); done"},
		Stdout: &out, Stderr: &out,
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := proc.Wait(); err != nil {
		t.Fatal(err)
	}
	if out.Len() != 300*8 || strings.Count(out.String(), "out\n") != 300 || strings.Count(out.String(), "err\n") != 300 {
		t.Errorf("combined output: %d bytes, %d out, %d err", out.Len(), strings.Count(out.String(), "out\n"), strings.Count(out.String(), "err\n"))
	}
}

func TestExecEnvAndDir(t *testing.T) {
	p := startPair(t, ServeOptions{})
	dir := t.TempDir()
	r := run(t, p.client, ExecRequest{
		Argv: []string{"sh", "-c", `echo "$HOME|$TERM|$FOO|$PATH"; pwd`},
		Env:  []string{"FOO=bar", "TERM=vt100"},
		Dir:  dir,
	})
	want := "/root|vt100|bar|" + defaultPath + "\n" + dir + "\n"
	if r.stdout != want {
		t.Errorf("stdout %q, want %q", r.stdout, want)
	}
}

func TestExecSignalled(t *testing.T) {
	p := startPair(t, ServeOptions{})
	r := run(t, p.client, ExecRequest{Argv: []string{"sh", "-c", "kill -TERM $$"}})
	if r.status != (ExitStatus{Code: 128 + 15, Signal: 15}) {
		t.Errorf("self-kill: status %+v", r.status)
	}

	var out syncBuffer
	ctx := tctx(t)
	proc, err := p.client.Exec(ctx, ExecRequest{Argv: []string{"sh", "-c", "echo ready; sleep 30; echo not-killed"}, Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return strings.Contains(out.String(), "ready") })
	if err := proc.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	st, err := proc.Wait()
	if err != nil {
		t.Fatal(err)
	}
	// SIGINT went to the whole group: sh and sleep both die.
	if st.Signal != int(syscall.SIGINT) || st.Code != 130 {
		t.Errorf("SIGINT: status %+v", st)
	}
	if strings.Contains(out.String(), "not-killed") {
		t.Error("process survived SIGINT")
	}
	if err := proc.Signal(syscall.SIGINT); err == nil {
		t.Error("Signal after exit succeeded")
	}
}

func TestExecContextCancelKills(t *testing.T) {
	p := startPair(t, ServeOptions{})
	ctx, cancel := context.WithCancel(context.Background())
	proc, err := p.client.Exec(ctx, ExecRequest{Argv: []string{"sleep", "30"}})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	st, err := proc.Wait()
	if err != nil || st.Signal != int(syscall.SIGKILL) {
		t.Errorf("after cancel: %+v, %v", st, err)
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
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

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 20 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestExecLargeBinaryRoundTrip(t *testing.T) {
	p := startPair(t, ServeOptions{})
	data := make([]byte, 50<<20)
	rand.Read(data)
	want := sha256.Sum256(data)
	h := sha256.New()
	var n countWriter
	start := time.Now()
	proc, err := p.client.Exec(tctx(t), ExecRequest{
		Argv:   []string{"cat"},
		Stdin:  bytes.NewReader(data),
		Stdout: io.MultiWriter(h, &n),
	})
	if err != nil {
		t.Fatal(err)
	}
	st, err := proc.Wait()
	if err != nil || st.Code != 0 {
		t.Fatalf("cat: %+v %v", st, err)
	}
	if n != countWriter(len(data)) || !bytes.Equal(h.Sum(nil), want[:]) {
		t.Fatalf("round trip: got %d bytes, checksum match %v", n, bytes.Equal(h.Sum(nil), want[:]))
	}
	t.Logf("50 MiB through cat in %v", time.Since(start))
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) { *c += countWriter(len(p)); return len(p), nil }

func TestExecStdinEOF(t *testing.T) {
	p := startPair(t, ServeOptions{})
	r := run(t, p.client, ExecRequest{Argv: []string{"cat"}, Stdin: strings.NewReader("hi\n")})
	if r.stdout != "hi\n" || r.status.Code != 0 {
		t.Errorf("cat: %+v", r)
	}
	// nil Stdin is an empty stdin, not a hang.
	r = run(t, p.client, ExecRequest{Argv: []string{"wc", "-c"}})
	if strings.TrimSpace(r.stdout) != "0" {
		t.Errorf("wc -c of nil stdin: %q", r.stdout)
	}
}

func TestExecConcurrent(t *testing.T) {
	p := startPair(t, ServeOptions{})
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var out bytes.Buffer
			proc, err := p.client.Exec(context.Background(), ExecRequest{
				Argv:   []string{"sh", "-c", fmt.Sprintf("head -c %d /dev/zero | tr '\\0' x; sleep 0.1; exit %d", 1000*i, i)},
				Stdout: &out,
			})
			if err != nil {
				errs <- err
				return
			}
			st, err := proc.Wait()
			if err != nil || st.Code != i || out.Len() != 1000*i {
				errs <- fmt.Errorf("exec %d: status %+v, %d bytes, %v", i, st, out.Len(), err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestExecTTYResize(t *testing.T) {
	p := startPair(t, ServeOptions{})
	r := run(t, p.client, ExecRequest{Argv: []string{"sh", "-c", "stty size; tty; test -t 0 && test -t 1 && test -t 2 && echo all-tty; echo to-stderr >&2"}, TTY: true, Rows: 33, Cols: 101})
	if !strings.Contains(r.stdout, "33 101\r\n/dev/pts/") || !strings.Contains(r.stdout, "all-tty") || !strings.Contains(r.stdout, "to-stderr") || r.stderr != "" {
		t.Errorf("tty output %q, stderr %q", r.stdout, r.stderr)
	}

	stdinR, stdinW := io.Pipe()
	var out syncBuffer
	proc, err := p.client.Exec(tctx(t), ExecRequest{
		Argv: []string{"sh", "-c", "stty size; read x; stty size"}, TTY: true, Rows: 10, Cols: 20,
		Stdin: stdinR, Stdout: &out,
	})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return strings.Contains(out.String(), "10 20") })
	if err := proc.Resize(50, 120); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // resize frame before the newline
	stdinW.Write([]byte("\n"))
	st, err := proc.Wait()
	if err != nil || st.Code != 0 {
		t.Fatalf("status %+v %v", st, err)
	}
	if !strings.Contains(out.String(), "50 120") {
		t.Errorf("after resize: %q", out.String())
	}
	stdinW.Close()
}

func TestExecTTYSignalGoesToForeground(t *testing.T) {
	p := startPair(t, ServeOptions{})
	var out syncBuffer
	proc, err := p.client.Exec(tctx(t), ExecRequest{Argv: []string{"sh", "-c", "trap 'echo trapped; exit 7' INT; echo ready; while :; do sleep 0.05; done"}, TTY: true, Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return strings.Contains(out.String(), "ready") })
	proc.Signal(syscall.SIGINT)
	st, err := proc.Wait()
	if err != nil || st.Code != 7 {
		t.Errorf("status %+v %v, output %q", st, err, out.String())
	}
}

func TestExecStartErrors(t *testing.T) {
	p := startPair(t, ServeOptions{})
	_, err := p.client.Exec(tctx(t), ExecRequest{Argv: []string{"no-such-program-banger"}})
	var se *StartError
	if !errors.As(err, &se) || se.Code != 127 || !errors.Is(err, ErrCommandNotFound) {
		t.Errorf("missing program: %v", err)
	}
	_, err = p.client.Exec(tctx(t), ExecRequest{Argv: []string{"/no/such/path"}})
	if !errors.As(err, &se) || se.Code != 127 {
		t.Errorf("missing path: %v", err)
	}
	f := filepath.Join(t.TempDir(), "notexec")
	os.WriteFile(f, []byte("#!/bin/sh\n"), 0o644)
	_, err = p.client.Exec(tctx(t), ExecRequest{Argv: []string{f}})
	if !errors.As(err, &se) || se.Code != 126 || errors.Is(err, ErrCommandNotFound) {
		t.Errorf("not executable: %v", err)
	}
	_, err = p.client.Exec(tctx(t), ExecRequest{Argv: []string{"true"}, Dir: "/no/such/dir"})
	if !errors.As(err, &se) || se.Code != 126 {
		t.Errorf("bad dir: %v", err)
	}
	// The session is still usable.
	if r := run(t, p.client, ExecRequest{Argv: []string{"true"}}); r.status.Code != 0 {
		t.Error("true failed after start errors")
	}
}

// TestOrphansReaped: a background child that outlives its parent is
// reparented to the subreaper (us) and must not stay a zombie.
func TestOrphansReaped(t *testing.T) {
	p := startPair(t, ServeOptions{})
	r := run(t, p.client, ExecRequest{Argv: []string{"sh", "-c", "setsid sh -c 'sleep 0.2' </dev/null >/dev/null 2>&1 & echo $!"}})
	pid, err := strconv.Atoi(strings.TrimSpace(r.stdout))
	if err != nil {
		t.Fatalf("pid %q", r.stdout)
	}
	waitFor(t, func() bool {
		_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
		return os.IsNotExist(err)
	})
}

func TestExecOutputAfterExitBounded(t *testing.T) {
	p := startPair(t, ServeOptions{OutputGrace: 300 * time.Millisecond})
	start := time.Now()
	// The background sleep holds stdout open; Wait must not wait for it.
	r := run(t, p.client, ExecRequest{Argv: []string{"sh", "-c", "echo before; sleep 5 & exit 3"}})
	if r.status.Code != 3 || r.stdout != "before\n" {
		t.Errorf("%+v", r)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Wait took %v: it waited for the background child", d)
	}
}

func TestConfigure(t *testing.T) {
	p := startPair(t, ServeOptions{})
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	cfg := GuestConfig{Hostname: "dev1", Time: now, RandomSeed: []byte("seed"), MachineID: strings.Repeat("ab", 16)}
	steps, err := p.client.ConfigureSteps(tctx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range steps {
		names = append(names, s.Name)
	}
	if strings.Join(names, ",") != "time,seed,hostname,machine-id" {
		t.Errorf("steps timed: %v", names)
	}
	m := p.machine
	if m.hostname != "dev1" || !m.time.Equal(now) || string(m.seed) != "seed" || m.machineID != cfg.MachineID {
		t.Errorf("machine = %+v", m)
	}
	err = p.client.Configure(tctx(t), GuestConfig{MachineID: "short"})
	var re *RemoteError
	if !errors.As(err, &re) {
		t.Errorf("bad machine id: %v", err)
	}
	nc := &NetConfig{Interface: "eth0", MAC: "52:54:00:01:02:03", Address: "172.30.0.5/24", Gateway: "172.30.0.1", DNS: []string{"172.30.0.1"}, SearchDomain: "vm"}
	if err := p.client.Configure(tctx(t), GuestConfig{Network: nc, AuthorizedKeys: []string{"ssh-ed25519 AAAA banger"}}); err != nil {
		t.Fatal(err)
	}
	if m.net == nil || m.net.Address != nc.Address || len(m.keys) != 1 {
		t.Errorf("network/keys not applied: %+v %v", m.net, m.keys)
	}
	if err := p.client.Configure(tctx(t), GuestConfig{Mounts: []Mount{{Device: "/dev/vdb", Path: "/root/repo"}}}); err != nil || len(m.mounts) != 1 {
		t.Errorf("mount: %v %v", err, m.mounts)
	}
	for _, bad := range []Mount{{Device: "vdb", Path: "/x"}, {Device: "/dev/vdb", Path: "rel"}, {Device: "/dev/../etc/x", Path: "/x"}, {Device: "/dev/vdb", Path: "/"}} {
		if err := p.client.Configure(tctx(t), GuestConfig{Mounts: []Mount{bad}}); !errors.As(err, &re) {
			t.Errorf("bad mount %+v accepted: %v", bad, err)
		}
	}
	for _, bad := range []NetConfig{
		{Interface: "eth0", Address: "nonsense"},
		{Interface: "../x", Address: "10.0.0.2/24"},
		{Interface: "eth0", Address: "10.0.0.2/24", Gateway: "x"},
		{Interface: "eth0", Address: "10.0.0.2/24", DNS: []string{"1.2.3.4\nsearch evil"}},
	} {
		bad := bad
		if err := p.client.Configure(tctx(t), GuestConfig{Network: &bad}); !errors.As(err, &re) {
			t.Errorf("bad network %+v accepted: %v", bad, err)
		}
	}
}

func TestShutdown(t *testing.T) {
	p := startPair(t, ServeOptions{})
	if err := p.client.Shutdown(tctx(t)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.machine.poweredOff:
	case <-time.After(5 * time.Second):
		t.Fatal("PowerOff not called")
	}
	if !p.machine.prepared {
		t.Error("PrepareShutdown not called")
	}
}

func TestLinuxMachineValidation(t *testing.T) {
	m := LinuxMachine{}
	for _, h := range []string{"", "-a", "a_b", strings.Repeat("a", 65), "a..b"} {
		if err := m.SetHostname(h); err == nil {
			t.Errorf("hostname %q accepted", h)
		}
	}
	if err := m.SetMachineID("ABC"); err == nil {
		t.Error("bad machine id accepted")
	}
}

type tarEntry struct {
	name, link, body string
	typ              byte
	mode             int64
}

func buildTar(t *testing.T, ents []tarEntry) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Date(2020, 5, 6, 7, 8, 9, 0, time.UTC)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, ModTime: mtime, Size: int64(len(e.body))}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	return buf.Bytes()
}

func TestPutGetTarRoundTrip(t *testing.T) {
	p := startPair(t, ServeOptions{})
	dest := filepath.Join(t.TempDir(), "new", "dest")
	in := []tarEntry{
		{name: "d/", typ: tar.TypeDir, mode: 0o750},
		{name: "d/exec.sh", typ: tar.TypeReg, mode: 0o755, body: "#!/bin/sh\necho hi\n"},
		{name: "d/secret", typ: tar.TypeReg, mode: 0o600, body: "s3cret"},
		{name: "d/sub/deep.txt", typ: tar.TypeReg, mode: 0o644, body: strings.Repeat("x", 3<<20)},
		{name: "d/link", typ: tar.TypeSymlink, link: "exec.sh", mode: 0o777},
		{name: "d/dangling", typ: tar.TypeSymlink, link: "../../nowhere", mode: 0o777},
		{name: "d/hard", typ: tar.TypeLink, link: "d/secret", mode: 0o600},
		{name: "./top", typ: tar.TypeReg, mode: 0o4755, body: "setuid"},
	}
	if err := p.client.PutTar(tctx(t), dest, bytes.NewReader(buildTar(t, in))); err != nil {
		t.Fatal(err)
	}
	check := func(name string, mode fs.FileMode) {
		fi, err := os.Lstat(filepath.Join(dest, name))
		if err != nil {
			t.Error(err)
			return
		}
		if fi.Mode() != mode {
			t.Errorf("%s: mode %v, want %v", name, fi.Mode(), mode)
		}
		if !fi.ModTime().Equal(time.Date(2020, 5, 6, 7, 8, 9, 0, time.UTC)) && fi.Mode()&fs.ModeSymlink == 0 {
			t.Errorf("%s: mtime %v", name, fi.ModTime())
		}
	}
	check("d", fs.ModeDir|0o750)
	check("d/exec.sh", 0o755)
	check("d/secret", 0o600)
	check("d/link", fs.ModeSymlink|0o777)
	check("top", fs.ModeSetuid|0o755)
	if l, _ := os.Readlink(filepath.Join(dest, "d/dangling")); l != "../../nowhere" {
		t.Errorf("dangling link = %q", l)
	}
	a, _ := os.Stat(filepath.Join(dest, "d/secret"))
	b, _ := os.Stat(filepath.Join(dest, "d/hard"))
	if !os.SameFile(a, b) {
		t.Error("hard link not kept")
	}

	var out bytes.Buffer
	if err := p.client.GetTar(tctx(t), filepath.Join(dest, "d"), &out, 10<<20); err != nil {
		t.Fatal(err)
	}
	got := map[string]*tar.Header{}
	bodies := map[string]string{}
	tr := tar.NewReader(&out)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got[h.Name] = h
		b, _ := io.ReadAll(tr)
		bodies[h.Name] = string(b)
	}
	if h := got["d/"]; h == nil || h.Mode&0o7777 != 0o750 {
		t.Errorf("d/: %+v", h)
	}
	if h := got["d/exec.sh"]; h == nil || h.Mode&0o7777 != 0o755 || bodies["d/exec.sh"] != in[1].body {
		t.Errorf("d/exec.sh: %+v", h)
	}
	if h := got["d/link"]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "exec.sh" {
		t.Errorf("d/link: %+v", h)
	}
	if len(bodies["d/sub/deep.txt"]) != 3<<20 {
		t.Errorf("deep.txt: %d bytes", len(bodies["d/sub/deep.txt"]))
	}
	hs, hh := got["d/secret"], got["d/hard"]
	if hs == nil || hh == nil || (hs.Typeflag != tar.TypeLink && hh.Typeflag != tar.TypeLink) {
		t.Errorf("hard link pair not kept: %+v %+v", hs, hh)
	}

	// A single file gets its base name.
	out.Reset()
	if err := p.client.GetTar(tctx(t), filepath.Join(dest, "top"), &out, 0); err != nil {
		t.Fatal(err)
	}
	h, err := tar.NewReader(&out).Next()
	if err != nil || h.Name != "top" || h.Mode&0o7777 != 0o4755 {
		t.Errorf("single file: %+v %v", h, err)
	}
}

func TestPutTarRejectsEscape(t *testing.T) {
	p := startPair(t, ServeOptions{})
	base := t.TempDir()
	dest := filepath.Join(base, "dest")
	for _, ents := range [][]tarEntry{
		{{name: "../escaped", typ: tar.TypeReg, mode: 0o644, body: "x"}},
		// A symlink pointing out, then a file written through it.
		{{name: "out", typ: tar.TypeSymlink, link: base, mode: 0o777}, {name: "out/escaped", typ: tar.TypeReg, mode: 0o644, body: "x"}},
	} {
		err := p.client.PutTar(tctx(t), dest, bytes.NewReader(buildTar(t, ents)))
		var re *RemoteError
		if !errors.As(err, &re) {
			t.Errorf("escape accepted: %v", err)
		}
		if _, err := os.Stat(filepath.Join(base, "escaped")); err == nil {
			t.Fatal("file written outside the target directory")
		}
	}
	if _, err := p.client.Ping(tctx(t)); err != nil {
		t.Fatal("session broken after failed put-tar:", err)
	}
}

func TestPutTarLargeErrorMidStream(t *testing.T) {
	p := startPair(t, ServeOptions{})
	dest := t.TempDir()
	// The error comes first; megabytes follow that the guest must not wait for.
	ents := []tarEntry{{name: "../bad", typ: tar.TypeReg, mode: 0o644, body: "x"}}
	for i := 0; i < 20; i++ {
		ents = append(ents, tarEntry{name: fmt.Sprintf("f%d", i), typ: tar.TypeReg, mode: 0o644, body: strings.Repeat("y", 1<<20)})
	}
	done := make(chan error, 1)
	go func() { done <- p.client.PutTar(tctx(t), dest, bytes.NewReader(buildTar(t, ents))) }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("bad tar accepted")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("PutTar hung after a guest error")
	}
}

func TestGetTarLimit(t *testing.T) {
	p := startPair(t, ServeOptions{})
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "big"), make([]byte, 8<<20), 0o644)
	var out bytes.Buffer
	err := p.client.GetTar(tctx(t), dir, &out, 100<<10)
	if !errors.Is(err, ErrLimitExceeded) {
		t.Fatalf("GetTar over limit: %v", err)
	}
	if out.Len() > 100<<10 {
		t.Errorf("wrote %d bytes past a %d limit", out.Len(), 100<<10)
	}
	// The guest stopped sending: the session still answers promptly.
	if _, err := p.client.Ping(tctx(t)); err != nil {
		t.Fatal(err)
	}
	err = p.client.GetTar(tctx(t), "/no/such/path", io.Discard, 0)
	var re *RemoteError
	if !errors.As(err, &re) {
		t.Errorf("missing path: %v", err)
	}
}

// rogueGuest answers every stream with a frame of the given size.
func rogueGuest(t *testing.T, conn io.ReadWriteCloser, frameLen uint32) {
	rest, err := guestHandshake(conn)
	if err != nil {
		return
	}
	sess, err := yamux.Server(&prefixRWC{ReadWriteCloser: conn, pre: rest}, yamuxConfig())
	if err != nil {
		return
	}
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			return
		}
		go func() {
			var req request
			readFrame(st, maxFrame, &req)
			hdr := []byte{byte(frameLen >> 24), byte(frameLen >> 16), byte(frameLen >> 8), byte(frameLen)}
			st.Write(hdr)
			st.Write(make([]byte, 4096))
		}()
	}
}

func TestOversizedFrameRejected(t *testing.T) {
	hc, gc := socketPair(t)
	go rogueGuest(t, gc, 2<<20)
	c, err := Dial(tctx(t), hc)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Ping(tctx(t)); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("2 MiB ping reply: %v", err)
	}
	if _, err := c.Exec(tctx(t), ExecRequest{Argv: []string{"x"}}); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("2 MiB exec reply: %v", err)
	}
	if err := c.GetTar(tctx(t), "/x", io.Discard, 0); !errors.Is(err, ErrFrameTooLarge) {
		t.Errorf("2 MiB get-tar reply: %v", err)
	}
}

func TestHandshakeNoAnswerIsBounded(t *testing.T) {
	hc, gc := socketPair(t)
	defer gc.Close()
	// A guest that only sends garbage: Dial gives up at the deadline.
	go func() {
		junk := bytes.Repeat([]byte("BANGER-OK 0000\n\x00"), 1024)
		for {
			if _, err := gc.Write(junk); err != nil {
				return
			}
		}
	}()
	go io.Copy(io.Discard, gc)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := Dial(ctx, hc); err == nil {
		t.Fatal("Dial succeeded against garbage")
	}
	if time.Since(start) > 5*time.Second {
		t.Error("Dial ignored its deadline")
	}
}

// staleConn prepends stale bytes to what is read from a conn.
type staleConn struct {
	net.Conn
	r io.Reader
}

func (s *staleConn) Read(p []byte) (int, error) { return s.r.Read(p) }

func TestHandshakeDiscardsStaleBytes(t *testing.T) {
	hc, gc := socketPair(t)
	// Host->guest leftovers: a partial yamux frame, an old HELLO and START
	// of another nonce, an unterminated long line.
	oldNonce := strings.Repeat("1", 32)
	toGuest := []byte("\x00\x01\x00\x02\x00\x00\x00\x01\x00\x00\x10\x00garbage" +
		"\n" + helloPrefix + oldNonce + "\n" + startPrefix + oldNonce + "x\n" + strings.Repeat("z", 10000))
	// Guest->host leftovers: yamux data of an old session, an old OK/READY.
	toHost := append(bytes.Repeat([]byte{0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 4, 'd', 'a', 't', 'a'}, 5000),
		[]byte("\n"+okPrefix+oldNonce+"\n"+readyPrefix+oldNonce+"\n")...)
	served := make(chan error, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		served <- Serve(ctx, &staleConn{gc, io.MultiReader(bytes.NewReader(toGuest), gc)}, ServeOptions{Machine: newFakeMachine(), Reaper: testReaper()})
	}()
	c, err := Dial(tctx(t), &staleConn{hc, io.MultiReader(bytes.NewReader(toHost), hc)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Ping(tctx(t)); err != nil {
		t.Fatal(err)
	}
	if r := run(t, c, ExecRequest{Argv: []string{"echo", "ok"}}); r.stdout != "ok\n" {
		t.Errorf("%+v", r)
	}
}

// detachable lets a test drop a host session without closing the
// underlying connection, as a crashed daemon leaves a virtio-serial port:
// the guest does not notice, and bytes in flight stay in the channel.
type detachable struct {
	net.Conn
}

func (d detachable) Close() error { return nil }

type noCloseRWC struct{ io.ReadWriter }

func (noCloseRWC) Close() error { return nil }

func TestReconnectWhileGuestMidSession(t *testing.T) {
	hc, gc := socketPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		for ctx.Err() == nil {
			Serve(ctx, noCloseRWC{gc}, ServeOptions{Machine: newFakeMachine(), Reaper: testReaper()})
		}
	}()
	defer func() { cancel(); gc.Close(); <-loopDone }()

	c1, err := Dial(tctx(t), detachable{hc})
	if err != nil {
		t.Fatal(err)
	}
	// A chatty program, so the old session has output in flight.
	var out1 syncBuffer
	p1, err := c1.Exec(tctx(t), ExecRequest{Argv: []string{"sh", "-c", "echo $$; exec yes"}, Stdout: &out1})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(out1.String()) > 100 })
	pid, _ := strconv.Atoi(strings.SplitN(out1.String(), "\n", 2)[0])

	// The host "crashes": its session stops reading, the conn stays open.
	hc.SetReadDeadline(time.Unix(1, 0))
	<-c1.Done()
	hc.SetReadDeadline(time.Time{})
	_ = p1

	c2, err := Dial(tctx(t), hc)
	if err != nil {
		t.Fatal("reconnect:", err)
	}
	defer c2.Close()
	if _, err := c2.Ping(tctx(t)); err != nil {
		t.Fatal(err)
	}
	if r := run(t, c2, ExecRequest{Argv: []string{"sh", "-c", "exit 5"}}); r.status.Code != 5 {
		t.Errorf("%+v", r)
	}
	// The old session's program was killed when that session ended.
	waitFor(t, func() bool {
		_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
		return os.IsNotExist(err)
	})
}

func TestClientAfterGuestGone(t *testing.T) {
	hc, gc := socketPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, gc, ServeOptions{Machine: newFakeMachine(), Reaper: testReaper()}) }()
	c, err := Dial(tctx(t), hc)
	if err != nil {
		t.Fatal(err)
	}
	proc, err := c.Exec(tctx(t), ExecRequest{Argv: []string{"sleep", "30"}})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	<-served
	if _, err := proc.Wait(); !errors.Is(err, ErrClosed) {
		t.Errorf("Wait after guest gone: %v", err)
	}
	if _, err := c.Ping(tctx(t)); !errors.Is(err, ErrClosed) {
		t.Errorf("Ping after guest gone: %v", err)
	}
}
