package firecracker

// The contract test: the backend drives fcfake (a fake Firecracker API
// server checked against the v1.16.1 spec) running as a real detached
// process — this test binary re-executed as "firecracker" — so that
// what is proven covers both halves: every API call the backend makes is
// one Firecracker v1.16.1 accepts, in an order it accepts, and the process
// handling (detached start in its own session, identity, re-attach from a
// Handle alone, kill, FindProcesses, exit reasons) works on a real
// process. What it cannot prove: that a real firecracker boots the guest
// (the conformance test below runs where one exists).

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/banger-sh/banger/internal/agent"
	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/vmm"
	"github.com/banger-sh/banger/internal/vmm/firecracker/fcfake"
)

// Environment of the helper process (the fake "firecracker").
const (
	envHelper = "BANGER_FCFAKE_HELPER" // "1": run as the fake
	envCalls  = "BANGER_FCFAKE_CALLS"  // file the fake appends its calls to (JSON lines)
	envTaps   = "BANGER_FCFAKE_TAPS"   // comma-separated taps that "exist"
	envGuest  = "BANGER_FCFAKE_GUEST"  // "agent": the guest is banger's agent library
)

// fakeMachine is the guest agent's Machine in the fake: identity and
// network settings are accepted and dropped; power-off ends the fake VMM
// as a guest power-off ends Firecracker.
type fakeMachine struct{ s *fcfake.Server }

func (fakeMachine) SetHostname(string) error               { return nil }
func (fakeMachine) SetTime(time.Time) error                { return nil }
func (fakeMachine) SeedRandom([]byte) error                { return nil }
func (fakeMachine) SetMachineID(string) error              { return nil }
func (fakeMachine) ConfigureNetwork(agent.NetConfig) error { return nil }
func (fakeMachine) SetAuthorizedKeys([]string) error       { return nil }
func (fakeMachine) MountAll([]agent.Mount) error           { return nil }
func (fakeMachine) PrepareShutdown(context.Context) error  { return nil }
func (m fakeMachine) PowerOff() error                      { m.s.Exit(); select {} }

// ReadyLine is what the fake guest agent writes first on each vsock
// connection to port AgentPort.
const readyLine = "fcfake guest ready"

func TestMain(m *testing.M) {
	if os.Getenv(envHelper) == "1" {
		os.Exit(runFake(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// runFake is the helper process: firecracker's command line
// (--api-sock PATH --id ID), fcfake behind it, a guest that answers on
// AgentPort and powers off when it reads "poweroff".
func runFake(args []string) int {
	var sock, id, logPath string
	for i := 0; i+1 < len(args); i++ {
		switch args[i] {
		case "--api-sock":
			sock = args[i+1]
		case "--id":
			id = args[i+1]
		case "--log-path":
			logPath = args[i+1]
		}
	}
	logw := io.Writer(os.Stdout)
	if logPath != "" {
		// As Firecracker opens it: read-write, non-blocking, no create.
		f, err := os.OpenFile(logPath, os.O_RDWR|syscall.O_NONBLOCK, 0)
		if err != nil {
			fmt.Fprintln(os.Stderr, "Error: Failed to open target file:", err)
			return 1
		}
		logw = f
	}
	if sock == "" {
		fmt.Fprintln(os.Stderr, "Error: Arguments parsing error: --api-sock is required")
		return 1
	}
	taps := strings.Split(os.Getenv(envTaps), ",")
	var mu sync.Mutex
	var s *fcfake.Server
	s, err := fcfake.New(fcfake.Options{
		ID:      id,
		Log:     logw,
		Console: os.Stdout,
		TapExists: func(n string) bool {
			if n == "" {
				return false
			}
			if slices.Contains(taps, n) {
				return true
			}
			_, err := os.Stat(filepath.Join("/sys/class/net", n, "tun_flags"))
			return err == nil
		},
		Guest: func(port uint32) func(net.Conn) {
			if port != AgentPort {
				return nil
			}
			if os.Getenv(envGuest) == "agent" {
				// banger's real guest agent (the library), on a Machine
				// that touches nothing of this host.
				return func(c net.Conn) {
					_ = agent.Serve(context.Background(), c, agent.ServeOptions{Machine: fakeMachine{s}})
				}
			}
			return func(c net.Conn) {
				defer c.Close()
				fmt.Fprintln(c, readyLine)
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					if sc.Text() == "poweroff" {
						s.Exit()
						return
					}
					fmt.Fprintln(c, "echo "+sc.Text())
				}
			}
		},
		OnCall: func(c fcfake.Call) {
			p := os.Getenv(envCalls)
			if p == "" {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			b, _ := json.Marshal(c)
			f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
			if err == nil {
				f.Write(append(b, '\n'))
				f.Close()
			}
		},
	})
	if err != nil {
		fmt.Println("Error:", err)
		return 1
	}
	if err := s.Listen(sock); err != nil {
		fmt.Println("Error:", err)
		return 1
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-s.Exited():
		return 0
	case <-sig:
		return 0
	}
}

// env is one test's fake host.
type env struct {
	t    *testing.T
	b    *Backend
	root string // runtime root: VMs' runtime dirs are root/ID
	dir  string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir, err := os.MkdirTemp("", "fct")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	root := filepath.Join(dir, "run")
	if err := os.Mkdir(root, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Setenv(envHelper, "1")
	t.Setenv(envTaps, "fctap0,fctap1,fctap2")
	return &env{t: t, b: newBackend(), root: root, dir: dir}
}

// newBackend is a backend whose "firecracker" is this test binary.
func newBackend() *Backend {
	return New(WithBinary(os.Args[0]), WithVersionProbe(func(context.Context, string) (string, error) { return fcfake.SpecVersion, nil }))
}

// file makes a file of size bytes under the env's dir.
func (e *env) file(name string, size int64) string {
	e.t.Helper()
	p := filepath.Join(e.dir, name)
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		e.t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// spec prepares a VM spec: runtime dir root/ID, a raw root and one extra
// disk, a NIC on tap, the test binary as the ELF kernel.
func (e *env) spec(id, tap string) vmm.Spec {
	e.t.Helper()
	rt := filepath.Join(e.root, id)
	if err := os.Mkdir(rt, 0o700); err != nil {
		e.t.Fatal(err)
	}
	return vmm.Spec{
		ID: id, VCPUs: 1, MemoryMiB: 128,
		Kernel:     os.Args[0],
		KernelArgs: []string{"banger.hostname=" + id, "init=/sbin/banger-agent"},
		Root:       vmm.Disk{Path: e.file(id+"-root.ext4", 8<<20), Format: "raw"},
		Disks:      []vmm.Disk{{Path: e.file(id+"-work.ext4", 4<<20), Format: "raw"}},
		NICs:       []vmm.NIC{{Tap: tap, MAC: "02:ba:00:00:00:01"}},
		RuntimeDir: rt,
		ConsoleLog: filepath.Join(e.dir, id+"-console.log"),
		VMMLog:     filepath.Join(e.dir, id+"-vmm.log"),
	}
}

// start starts spec with its calls recorded to a file; cleanup kills it.
func (e *env) start(spec vmm.Spec) (vmm.Handle, string) {
	e.t.Helper()
	calls := filepath.Join(e.dir, spec.ID+"-calls.jsonl")
	e.t.Setenv(envCalls, calls)
	h, err := e.b.Start(context.Background(), spec)
	if err != nil {
		e.t.Fatalf("Start %s: %v", spec.ID, err)
	}
	e.t.Cleanup(func() { _ = newBackend().Kill(context.Background(), h) })
	return h, calls
}

func readCalls(t *testing.T, path string) []fcfake.Call {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var out []fcfake.Call
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if l == "" {
			continue
		}
		var c fcfake.Call
		if err := json.Unmarshal([]byte(l), &c); err != nil {
			t.Fatalf("calls file: %v", err)
		}
		out = append(out, c)
	}
	return out
}

// seq is the calls as "METHOD PATH STATUS", without the GET / polls (the
// backend polls until the API answers: how many polls is timing).
func seq(calls []fcfake.Call) []string {
	var out []string
	for _, c := range calls {
		if c.Method == "GET" && c.Path == "/" {
			continue
		}
		out = append(out, c.String())
	}
	return out
}

func body(t *testing.T, calls []fcfake.Call, method, path string) map[string]any {
	t.Helper()
	for _, c := range calls {
		if c.Method == method && c.Path == path {
			var m map[string]any
			if err := json.Unmarshal(c.Body, &m); err != nil {
				t.Fatalf("%s %s body: %v", method, path, err)
			}
			return m
		}
	}
	t.Fatalf("no %s %s call", method, path)
	return nil
}

func assertSeq(t *testing.T, got []fcfake.Call, want ...string) {
	t.Helper()
	if g := seq(got); !slices.Equal(g, want) {
		t.Fatalf("call sequence:\n got %q\nwant %q", g, want)
	}
}

func dialReady(t *testing.T, b *Backend, h vmm.Handle) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := b.DialAgent(ctx, h)
	if err != nil {
		t.Fatalf("DialAgent: %v", err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	// The guest writes its ready line right after the ack: the dialer must
	// not have consumed any of it.
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != readyLine {
		t.Fatalf("first guest line %q, %v", line, err)
	}
	conn.SetReadDeadline(time.Time{})
	return conn
}

func TestContractColdBoot(t *testing.T) {
	e := newEnv(t)
	spec := e.spec("vm1", "fctap0")
	ctx, cancel := context.WithCancel(context.Background())
	e.t.Setenv(envCalls, filepath.Join(e.dir, "vm1-calls.jsonl"))
	h, err := e.b.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = newBackend().Kill(context.Background(), h) })
	// The request that started it ends: the VM must live on.
	cancel()
	calls := readCalls(t, filepath.Join(e.dir, "vm1-calls.jsonl"))
	assertSeq(t, calls,
		"PUT /machine-config 204",
		"PUT /boot-source 204",
		"PUT /drives/root 204",
		"PUT /drives/disk1 204",
		"PUT /network-interfaces/eth0 204",
		"PUT /vsock 204",
		"PUT /actions 204",
	)
	if calls[0].Method != "GET" || calls[0].Path != "/" || calls[0].Status != 200 {
		t.Errorf("first call %v: the backend must wait for the API first", calls[0])
	}
	bs := body(t, calls, "PUT", "/boot-source")
	args, _ := bs["boot_args"].(string)
	if !strings.HasPrefix(args, "console=ttyS0 reboot=k panic=1") || !strings.Contains(args, "banger.transport=vsock banger.vsock_port=1024") ||
		!strings.HasSuffix(args, "banger.hostname=vm1 init=/sbin/banger-agent") || strings.Contains(args, "nomodule") {
		t.Errorf("boot_args %q", args)
	}
	if d := body(t, calls, "PUT", "/drives/root"); d["is_root_device"] != true || d["cache_type"] != "Writeback" || d["path_on_host"] != spec.Root.Path {
		t.Errorf("root drive %v", d)
	}
	if d := body(t, calls, "PUT", "/drives/disk1"); d["is_root_device"] != false || d["path_on_host"] != spec.Disks[0].Path {
		t.Errorf("disk1 %v", d)
	}
	if n := body(t, calls, "PUT", "/network-interfaces/eth0"); n["host_dev_name"] != "fctap0" || n["guest_mac"] != "02:ba:00:00:00:01" {
		t.Errorf("nic %v", n)
	}
	if v := body(t, calls, "PUT", "/vsock"); v["uds_path"] != h.AgentSocket || v["guest_cid"] != float64(GuestCID) {
		t.Errorf("vsock %v", v)
	}
	if h.PID <= 0 || h.StartTime == 0 || h.BootID == "" || h.Backend != Name || h.ControlSocket != APISocket(spec.RuntimeDir) {
		t.Errorf("handle %+v", h)
	}
	time.Sleep(100 * time.Millisecond)
	if st := e.b.Status(context.Background(), h); st != vmm.StateRunning {
		t.Fatalf("after the start context ended: %s", st)
	}
	// Own session: the VMM is not in this test's process group.
	if pgid, _ := syscall.Getpgid(h.PID); pgid != h.PID {
		t.Errorf("pgid %d, want its own %d", pgid, h.PID)
	}

	// A daemon restart: a new backend with only the persisted handle.
	raw, _ := json.Marshal(h)
	var h2 vmm.Handle
	json.Unmarshal(raw, &h2)
	b2 := newBackend()
	if st := b2.Status(context.Background(), h2); st != vmm.StateRunning {
		t.Fatalf("re-attached status %s", st)
	}
	conn := dialReady(t, b2, h2)
	fmt.Fprintln(conn, "ping")
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if line, err := bufio.NewReader(conn).ReadString('\n'); err != nil || line != "echo ping\n" {
		t.Errorf("agent stream: %q %v", line, err)
	}
	conn.Close()

	procs := b2.FindProcesses(e.root)
	if len(procs) != 1 || procs[0].PID != h.PID || procs[0].ID != "vm1" {
		t.Errorf("FindProcesses(%s) = %+v, want pid %d id vm1", e.root, procs, h.PID)
	}
	if p := b2.FindProcesses(e.dir); len(p) != 0 {
		t.Errorf("another runtime root matched: %+v", p)
	}
	// A handle whose start time is another process's is never killed.
	stale := h2
	stale.StartTime++
	if st := b2.Status(context.Background(), stale); st != vmm.StateExited {
		t.Errorf("stale handle status %s", st)
	}
	if err := b2.Kill(context.Background(), stale); err != nil || b2.Status(context.Background(), h2) != vmm.StateRunning {
		t.Fatalf("a stale handle's Kill touched the VM: %v", err)
	}
	// A second VM on the same runtime dir is refused.
	if _, err := b2.Start(context.Background(), spec); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("second start on a live runtime dir: %v", err)
	}

	if err := b2.Kill(context.Background(), h2); err != nil {
		t.Fatal(err)
	}
	if st := b2.Status(context.Background(), h2); st != vmm.StateExited {
		t.Errorf("after Kill: %s", st)
	}
	if err := syscall.Kill(h.PID, 0); err == nil {
		// it may linger as our zombie only if we were its parent; StartDetached reaps it
		time.Sleep(100 * time.Millisecond)
		if syscall.Kill(h.PID, 0) == nil {
			t.Errorf("pid %d still exists after Kill", h.PID)
		}
	}
	for _, s := range []string{h.ControlSocket, h.AgentSocket} {
		if _, err := os.Stat(s); err == nil {
			t.Errorf("%s left after Kill", s)
		}
	}
	if err := b2.Kill(context.Background(), h2); err != nil {
		t.Errorf("second Kill: %v", err)
	}
	if _, err := os.Stat(LogFIFO(spec.RuntimeDir)); err == nil {
		t.Errorf("log fifo left after Kill")
	}
	time.Sleep(50 * time.Millisecond)
	if relays := processesWith(LogFIFO(spec.RuntimeDir)); len(relays) != 0 {
		t.Errorf("log relay left after Kill: %v", relays)
	}
	if p := b2.FindProcesses(e.root); len(p) != 0 {
		t.Errorf("FindProcesses after Kill: %+v", p)
	}
	if _, err := b2.DialAgent(context.Background(), h2); !errors.Is(err, errdefs.ErrNotRunning) {
		t.Errorf("DialAgent on a dead VM: %v", err)
	}
}

func TestContractGuestPowerOff(t *testing.T) {
	e := newEnv(t)
	spec := e.spec("vm2", "fctap0")
	h, _ := e.start(spec)
	conn := dialReady(t, e.b, h)
	fmt.Fprintln(conn, "poweroff")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.b.WaitExit(ctx, h); err != nil {
		t.Fatalf("WaitExit: %v", err)
	}
	conn.Close()
	if st := e.b.Status(ctx, h); st != vmm.StateExited {
		t.Errorf("status %s", st)
	}
	// Firecracker's log reaches the VMM log through the FIFO relay, which
	// ends at the VMM's exit: wait for its last line.
	var tail []byte
	for i := 0; i < 100; i++ {
		tail, _ = os.ReadFile(spec.VMMLog)
		if strings.Contains(string(tail), "exiting successfully") {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if r := e.b.ExitReason(tail); r != "the guest powered off or rebooted" {
		t.Errorf("ExitReason = %q from:\n%s", r, tail)
	}
	for _, want := range []string{" banger: starting ", "[vm2:main] Running Firecracker v1.16.1", "[vm2:main] Successfully started microvm"} {
		if !strings.Contains(string(tail), want) {
			t.Errorf("vmm log lacks %q:\n%s", want, tail)
		}
	}
	if console, _ := os.ReadFile(spec.ConsoleLog); !strings.Contains(string(console), "fcfake guest: booted") || strings.Contains(string(console), "Running Firecracker") {
		t.Errorf("console log %q: want the guest's serial output only", console)
	}
	time.Sleep(50 * time.Millisecond)
	if relays := processesWith(LogFIFO(spec.RuntimeDir)); len(relays) != 0 {
		t.Errorf("log relay still running after the VMM exited: %v", relays)
	}
	// WaitExit on a live VM honours its context.
	h2, _ := e.start(e.spec("vm3", "fctap1"))
	sctx, scancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer scancel()
	if err := e.b.WaitExit(sctx, h2); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitExit on a live VM: %v", err)
	}
}

// TestContractRefusals: what Firecracker would refuse is refused, and a
// failed start leaves no process and no socket.
func TestContractRefusals(t *testing.T) {
	e := newEnv(t)
	bz := e.file("bzImage", 4096)
	os.WriteFile(bz, []byte("MZ\x00\x00not an elf"), 0o644)
	cases := []struct {
		name    string
		edit    func(*vmm.Spec)
		wantErr string
		class   error
		started bool // the process was started (then killed)
	}{
		{"bzImage", func(s *vmm.Spec) { s.Kernel = bz }, "ELF vmlinux only", errdefs.ErrInvalidArgument, false},
		{"qcow2 root", func(s *vmm.Spec) { s.Root.Format = "qcow2" }, "raw files only", errdefs.ErrInvalidArgument, false},
		{"missing disk", func(s *vmm.Spec) { s.Disks[0].Path += ".gone" }, "no such file", errdefs.ErrInvalidArgument, false},
		{"bad MAC", func(s *vmm.Spec) { s.NICs[0].MAC = "zz" }, "invalid MAC", errdefs.ErrInvalidArgument, false},
		// Refused by (the fake) Firecracker itself: the process started
		// and must be gone.
		{"tap Firecracker cannot open", func(s *vmm.Spec) { s.NICs[0].Tap = "fcnotatap" }, "Open tap device failed", nil, true},
		{"two NICs on one tap", func(s *vmm.Spec) { s.NICs = append(s.NICs, vmm.NIC{Tap: s.NICs[0].Tap}) }, "already in use", nil, true},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			spec := e.spec(fmt.Sprintf("r%d", i), "fctap0")
			c.edit(&spec)
			calls := filepath.Join(e.dir, spec.ID+"-calls.jsonl")
			t.Setenv(envCalls, calls)
			_, err := e.b.Start(context.Background(), spec)
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("Start: %v, want %q", err, c.wantErr)
			}
			if c.class != nil && !errors.Is(err, c.class) {
				t.Errorf("error class: %v", err)
			}
			got := readCalls(t, calls)
			if started := len(got) > 0; started != c.started {
				t.Errorf("process started = %v, want %v (calls %v)", started, c.started, seq(got))
			}
			if p := e.b.FindProcesses(e.root); len(p) != 0 {
				t.Errorf("process left: %+v", p)
			}
			time.Sleep(20 * time.Millisecond)
			if p := processesWith(spec.RuntimeDir); len(p) != 0 {
				t.Errorf("process left (log relay?): %v", p)
			}
			ents, _ := os.ReadDir(spec.RuntimeDir)
			for _, en := range ents {
				t.Errorf("left in the runtime dir: %s", en.Name())
			}
		})
	}
}

func TestContractSnapshotRestore(t *testing.T) {
	e := newEnv(t)
	tspec := e.spec("tpl", "fctap0")
	snapDir := filepath.Join(e.dir, "snap")
	if err := os.Mkdir(snapDir, 0o755); err != nil {
		t.Fatal(err)
	}
	tspec.SnapshotDir = snapDir
	slot := os.Geteuid() == 0 // the template's NIC is a slot (no tap), as banger's templates' are
	if slot {
		tspec.NICs[0].Tap = ""
	} else {
		t.Log("not root: the template gets a tap (placeholder taps need CAP_NET_ADMIN)")
	}
	th, tcalls := e.start(tspec)
	if slot {
		if n := body(t, readCalls(t, tcalls), "PUT", "/network-interfaces/eth0"); n["host_dev_name"] != slotTapName(tspec.RuntimeDir, 0) {
			t.Errorf("template NIC on %v, want the placeholder %s", n["host_dev_name"], slotTapName(tspec.RuntimeDir, 0))
		}
	}
	other, _ := e.start(e.spec("other", "fctap1"))
	ctx := context.Background()

	// A VM that is not this dir's template is refused and left running.
	if err := e.b.Snapshot(ctx, other, snapDir); err == nil {
		t.Fatal("snapshot of a non-template accepted")
	}
	if st := e.b.Status(ctx, other); st != vmm.StateRunning {
		t.Fatalf("refused snapshot changed the other VM: %s", st)
	}
	dialReady(t, e.b, th).Close()
	if err := e.b.Snapshot(ctx, th, snapDir); err != nil {
		t.Fatal(err)
	}
	if st := e.b.Status(ctx, th); st != vmm.StateExited {
		t.Errorf("template after Snapshot: %s", st)
	}
	if _, err := os.Stat(filepath.Join("/sys/class/net", slotTapName(tspec.RuntimeDir, 0))); err == nil {
		t.Errorf("placeholder tap left after Snapshot")
	}
	all := readCalls(t, tcalls)
	got := seq(all)
	if tail := got[len(got)-3:]; !slices.Equal(tail, []string{"GET /vm/config 200", "PATCH /vm 204", "PUT /snapshot/create 204"}) {
		t.Fatalf("snapshot calls %q", tail)
	}
	if v := body(t, all, "PATCH", "/vm"); v["state"] != "Paused" {
		t.Errorf("pause body %v", v)
	}
	for _, n := range []string{shapeName, vmstateName, memName} {
		if _, err := os.Stat(filepath.Join(snapDir, n)); err != nil {
			t.Errorf("snapshot file: %v", err)
		}
	}

	// Two clones, each on its own disks, tap and vsock socket.
	var clones []vmm.Handle
	for i, tap := range []string{"fctap1", "fctap2"} {
		cs := e.spec(fmt.Sprintf("clone%d", i), tap)
		cs.Restore = &vmm.Snapshot{Dir: snapDir}
		cs.Kernel = "" // not read by a restore
		if i == 0 {
			// Wrong shape first: refused before anything starts.
			bad := cs
			bad.MemoryMiB = 256
			t.Setenv(envCalls, filepath.Join(e.dir, "bad-calls.jsonl"))
			if _, err := e.b.Start(ctx, bad); !errors.Is(err, vmm.ErrSnapshotMismatch) {
				t.Fatalf("other shape: %v", err)
			}
			if c := readCalls(t, filepath.Join(e.dir, "bad-calls.jsonl")); len(c) != 0 {
				t.Errorf("a mismatched restore started a VMM: %v", seq(c))
			}
			fewer := cs
			fewer.Disks = nil
			if _, err := e.b.Start(ctx, fewer); !errors.Is(err, vmm.ErrSnapshotMismatch) {
				t.Fatalf("fewer disks: %v", err)
			}
		}
		h, calls := e.start(cs)
		cc := readCalls(t, calls)
		assertSeq(t, cc,
			"PUT /snapshot/load 204",
			"PATCH /drives/root 204",
			"PATCH /drives/disk1 204",
			"PATCH /vm 204",
		)
		load := body(t, cc, "PUT", "/snapshot/load")
		ov, _ := load["network_overrides"].([]any)
		if len(ov) != 1 || ov[0].(map[string]any)["host_dev_name"] != tap || ov[0].(map[string]any)["iface_id"] != "eth0" {
			t.Errorf("network_overrides %v", load["network_overrides"])
		}
		if v, _ := load["vsock_override"].(map[string]any); v["uds_path"] != h.AgentSocket {
			t.Errorf("vsock_override %v", load["vsock_override"])
		}
		if load["resume_vm"] != false {
			t.Errorf("resume_vm %v: the drives must be re-pointed while paused", load["resume_vm"])
		}
		if d := body(t, cc, "PATCH", "/drives/root"); d["path_on_host"] != cs.Root.Path {
			t.Errorf("root re-pointed to %v, want %s", d["path_on_host"], cs.Root.Path)
		}
		if v := body(t, cc, "PATCH", "/vm"); v["state"] != "Resumed" {
			t.Errorf("resume body %v", v)
		}
		clones = append(clones, h)
	}
	for _, h := range clones {
		if st := e.b.Status(ctx, h); st != vmm.StateRunning {
			t.Errorf("clone %s", st)
		}
		dialReady(t, e.b, h).Close()
	}
	if err := e.b.Kill(ctx, clones[0]); err != nil {
		t.Fatal(err)
	}
	if st := e.b.Status(ctx, clones[1]); st != vmm.StateRunning {
		t.Errorf("killing one clone changed the other: %s", st)
	}

	// Another Firecracker build: the snapshot is not restored.
	other2 := New(WithBinary(os.Args[0]), WithVersionProbe(func(context.Context, string) (string, error) { return "1.17.0", nil }))
	cs := e.spec("clone9", "fctap0")
	cs.Restore = &vmm.Snapshot{Dir: snapDir}
	if _, err := other2.Start(ctx, cs); !errors.Is(err, vmm.ErrSnapshotMismatch) {
		t.Errorf("other version: %v", err)
	}
}

// TestContractSlotTap: a NIC slot without a host tap gets a placeholder
// tap (down, on no bridge) for the VM's life; Kill removes it.
func TestContractSlotTap(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("placeholder taps need CAP_NET_ADMIN (root)")
	}
	e := newEnv(t)
	spec := e.spec("slot", "")
	spec.NICs = append(spec.NICs, vmm.NIC{Tap: "fctap1"})
	h, calls := e.start(spec)
	name := slotTapName(spec.RuntimeDir, 0)
	if len(name) > 15 {
		t.Fatalf("tap name %q too long", name)
	}
	if n := body(t, readCalls(t, calls), "PUT", "/network-interfaces/eth0"); n["host_dev_name"] != name {
		t.Errorf("NIC 0 on %v, want %s", n["host_dev_name"], name)
	}
	if _, err := os.Stat(filepath.Join("/sys/class/net", name)); err != nil {
		t.Fatalf("placeholder tap: %v", err)
	}
	if op, _ := os.ReadFile(filepath.Join("/sys/class/net", name, "operstate")); strings.TrimSpace(string(op)) == "up" {
		t.Errorf("placeholder tap is up")
	}
	if m, err := os.Readlink(filepath.Join("/sys/class/net", name, "master")); err == nil {
		t.Errorf("placeholder tap is on %s", m)
	}
	// A stale handle (another start time) leaves the live VM's tap alone.
	stale := h
	stale.StartTime++
	if err := e.b.Kill(context.Background(), stale); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join("/sys/class/net", name)); err != nil {
		t.Fatalf("a stale Kill removed the live VM's tap: %v", err)
	}
	if err := e.b.Kill(context.Background(), h); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join("/sys/class/net", name)); err == nil {
		t.Errorf("placeholder tap %s left after Kill", name)
	}
}

// processesWith lists the live processes whose command line contains s.
func processesWith(s string) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid := 0
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil || pid == os.Getpid() {
			continue
		}
		stat, _ := os.ReadFile("/proc/" + e.Name() + "/stat")
		if i := strings.LastIndexByte(string(stat), ')'); i > 0 && strings.HasPrefix(string(stat[i+1:]), " Z") {
			continue
		}
		cmd, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if strings.Contains(string(cmd), s) {
			out = append(out, pid)
		}
	}
	return out
}

func TestExitReason(t *testing.T) {
	b := New()
	for _, c := range []struct{ log, want string }{
		{"", ""},
		{"2026-12-03T18:00:00Z banger: starting firecracker --api-sock x\n", ""},
		{"2026-12-03T18:00:00.1 [vm1:main] Running Firecracker v1.16.1\n2026-12-03T18:00:05.0 [vm1:main] Vmm is stopping.\n2026-12-03T18:00:05.0 [vm1:main] Firecracker exiting successfully. exit_code=0\n", "the guest powered off or rebooted"},
		{"[vm1:fc_vcpu 0] Received KVM_SYSTEM_EVENT: type: 2, event: [0]\n[vm1:main] Vmm is stopping.\n", "the guest shut down or rebooted (KVM system event 2)"},
		{"thread 'fc_vcpu 0' panicked at src/vmm/src/vstate/vcpu.rs:123:5:\nboom\n[vm1:main] Vmm is stopping.\n", "firecracker panicked at src/vmm/src/vstate/vcpu.rs:123:5:"},
		{"[anonymous-instance:main] Error: RunWithApi(BuildMicroVm(Kernel(Disk)))\n", "firecracker: RunWithApi(BuildMicroVm(Kernel(Disk)))"},
		{"[x:main] Error: RunWithApi(BuildMicroVm(KernelLoader(Elf(InvalidElfMagicNumber))))\n", "the kernel is not an ELF vmlinux (firecracker boots ELF only)"},
		// An error exit also says "Vmm is stopping": the code and the error win.
		{"[vm:main:ERROR] Failed to open tap: No such device\n[vm:main] Vmm is stopping.\n[vm:main] Firecracker exiting with error. exit_code=1\n", "firecracker exited with code 1: Failed to open tap: No such device"},
		{"[vm:main] Firecracker exiting with error. exit_code=3\n", "firecracker exited with code 3"},
		{"random noise\x1b[31m\n", ""},
	} {
		if got := b.ExitReason([]byte(c.log)); got != c.want {
			t.Errorf("ExitReason(%q) = %q, want %q", c.log, got, c.want)
		}
	}
	long := strings.Repeat("Error: "+strings.Repeat("x", 500)+"\n", 3)
	if r := b.ExitReason([]byte(long)); len(r) > 210 {
		t.Errorf("unbounded reason (%d bytes)", len(r))
	}
}

func TestMatchCmdline(t *testing.T) {
	for _, c := range []struct {
		cmd, root, id string
		ok            bool
	}{
		{"firecracker\x00--api-sock\x00/run/banger/vms/abc/fc.sock\x00--id\x00abc\x00", "/run/banger/vms", "abc", true},
		{"firecracker\x00--api-sock=/run/banger/vms/abc/fc.sock\x00", "/run/banger/vms/", "abc", true},
		{"firecracker\x00--api-sock\x00/run/other/vms/abc/fc.sock\x00", "/run/banger/vms", "", false},
		{"firecracker\x00--api-sock\x00/run/banger/vms/a/b/fc.sock\x00", "/run/banger/vms", "", false},
		{"firecracker\x00--api-sock\x00/run/banger/vms/abc/api.sock\x00", "/run/banger/vms", "", false},
		{"qemu-system-x86_64\x00-qmp\x00unix:/run/banger/vms/abc/qmp.sock\x00", "/run/banger/vms", "", false},
		{"vim\x00/run/banger/vms/abc/fc.sock\x00", "/run/banger/vms", "", false},
	} {
		id, ok := matchCmdline([]byte(c.cmd), filepath.Clean(c.root))
		if id != c.id || ok != c.ok {
			t.Errorf("matchCmdline(%q, %s) = %q %v", c.cmd, c.root, id, ok)
		}
	}
}

func TestAvailable(t *testing.T) {
	root := t.TempDir()
	touch := func(p string) {
		os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755)
		os.WriteFile(filepath.Join(root, p), nil, 0o666)
	}
	b := New(WithHostRoot(root), WithBinary(os.Args[0]), WithVersionProbe(func(context.Context, string) (string, error) { return "1.16.1", nil }))
	if a := b.Available(context.Background()); a.OK || !strings.Contains(a.Reason, "no /dev/kvm") {
		t.Errorf("no kvm: %+v", a)
	}
	touch("dev/kvm")
	os.MkdirAll(filepath.Join(root, "sys/module/kvm_pvm"), 0o755)
	if a := b.Available(context.Background()); a.OK || !strings.Contains(a.Reason, "PVM") {
		t.Errorf("pvm: %+v", a)
	}
	os.Remove(filepath.Join(root, "sys/module/kvm_pvm"))
	os.MkdirAll(filepath.Join(root, "sys/module/kvm_intel"), 0o755)
	if a := b.Available(context.Background()); !a.OK || a.Accel != "kvm" {
		t.Errorf("hardware kvm + binary: %+v", a)
	}
	old := New(WithHostRoot(root), WithBinary(os.Args[0]), WithVersionProbe(func(context.Context, string) (string, error) { return "1.7.0", nil }))
	if a := old.Available(context.Background()); a.OK || !strings.Contains(a.Reason, "needs 1.16") {
		t.Errorf("old firecracker: %+v", a)
	}
	none := New(WithHostRoot(root))
	t.Setenv("PATH", t.TempDir())
	if a := none.Available(context.Background()); a.OK || !strings.Contains(a.Reason, "no firecracker binary") {
		t.Errorf("no binary: %+v", a)
	}
}

func TestDialVsockRefusesBadAck(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "v.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			r := bufio.NewReader(c)
			r.ReadString('\n')
			c.Write([]byte("NOPE 1\nguest bytes\n"))
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := DialVsock(ctx, sock, AgentPort); err == nil || !strings.Contains(err.Error(), "bad vsock ack") {
		t.Errorf("bad ack: %v", err)
	}
}

// TestContractFailedTemplateStartLeavesDirEmpty: a template whose start
// fails (here Firecracker refuses its tap) leaves its snapshot dir empty,
// so that it can be retried.
func TestContractFailedTemplateStartLeavesDirEmpty(t *testing.T) {
	e := newEnv(t)
	spec := e.spec("tplbad", "fcnotatap")
	spec.SnapshotDir = filepath.Join(e.dir, "snapbad")
	if err := os.Mkdir(spec.SnapshotDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv(envCalls, filepath.Join(e.dir, "tplbad-calls.jsonl"))
	if _, err := e.b.Start(context.Background(), spec); err == nil || !strings.Contains(err.Error(), "Open tap device failed") {
		t.Fatalf("Start: %v", err)
	}
	if ents, _ := os.ReadDir(spec.SnapshotDir); len(ents) != 0 {
		t.Errorf("snapshot dir not empty after a failed start: %v", ents)
	}
	spec.NICs[0].Tap = "fctap0"
	h, err := e.b.Start(context.Background(), spec)
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	if err := e.b.Kill(context.Background(), h); err != nil {
		t.Fatal(err)
	}
}
