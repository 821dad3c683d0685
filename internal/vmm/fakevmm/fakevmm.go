// Package fakevmm is a vmm.Backend (and vmm.Snapshotter) that runs no
// virtual machine, for fast tests of what sits above the interface (the
// VM manager's state machine, templates) and for the vmmtest conformance
// suite's process rules.
//
// What is real: each "VM" is a real detached process (sleep, started
// through internal/system in its own session, its working directory the
// spec's runtime dir), found again by pid + start time + boot id like a
// real VMM, killed by SIGKILL, found by FindProcesses from /proc; a unix
// socket in the runtime dir on which the real guest agent protocol
// (agent.Serve) answers, with a recording agent.Machine and an exec that
// runs nothing (every program exits 0 with no output). What is fake: no
// kernel boots and no disk is read (Start checks that the kernel looks
// like one and that the disks exist); Snapshot writes the machine's shape
// into the snapshot dir and a restore checks it.
//
// Failures are injected with the Backend's hook fields.
package fakevmm

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/banger-sh/banger/internal/agent"
	"github.com/banger-sh/banger/internal/system"
	"github.com/banger-sh/banger/internal/vmm"
)

// Name is the backend's name.
const Name = "fake"

// File names in a runtime dir and a snapshot dir.
const (
	agentSock    = "agent.sock"
	snapshotFile = "fakevmm.json"
)

// exitPrefix starts the VMM log line that ExitReason reports.
const exitPrefix = "fakevmm: exit: "

// Backend is the fake. The zero value is not usable: call New. Hook
// fields may be set before use, not while VMs start.
type Backend struct {
	// FailStart, when set, is called by Start before any process starts;
	// an error fails Start (leaving nothing).
	FailStart func(spec vmm.Spec) error
	// FailConfigure, when set, is called by the guest's Configure with
	// the spec's ID; an error fails it (the VM keeps running).
	FailConfigure func(id string) error
	// Silent, when set and true for a spec's ID, makes its guest agent
	// accept connections and never answer (a guest that does not boot).
	Silent func(id string) bool

	procRoot string

	mu        sync.Mutex
	vms       map[int]*machine // by pid
	starts    int
	hostnames map[string][]string // by spec ID
}

var (
	_ vmm.Backend     = (*Backend)(nil)
	_ vmm.Snapshotter = (*Backend)(nil)
)

// New returns a fake backend.
func New() *Backend {
	return &Backend{procRoot: "/proc", vms: map[int]*machine{}, hostnames: map[string][]string{}}
}

// machine is one running fake VM.
type machine struct {
	spec  vmm.Spec
	h     vmm.Handle
	ln    net.Listener
	sock  os.FileInfo // the socket file, to remove only it
	once  sync.Once
	done  chan struct{} // closed when torn down
	guest *guestMachine
}

// shape is what a snapshot records and a restore must match.
type shape struct {
	VCPUs     int     `json:"vcpus"`
	MemoryMiB int     `json:"memory_mib"`
	Disks     []int64 `json:"disks"` // sizes
	NICs      int     `json:"nics"`
}

func specShape(spec vmm.Spec) (shape, error) {
	sh := shape{VCPUs: spec.VCPUs, MemoryMiB: spec.MemoryMiB, NICs: len(spec.NICs)}
	for _, d := range spec.Disks {
		st, err := os.Stat(d.Path)
		if err != nil {
			return shape{}, err
		}
		sh.Disks = append(sh.Disks, st.Size())
	}
	return sh, nil
}

// Name implements vmm.Backend.
func (b *Backend) Name() string { return Name }

// Available implements vmm.Backend.
func (b *Backend) Available(context.Context) vmm.Availability {
	return vmm.Availability{OK: true, Reason: "fake backend (runs no VM)", Accel: "none"}
}

// RootFormats implements vmm.Backend: raw only, like Firecracker, so that
// the code above the interface is tested on a path without overlays.
func (b *Backend) RootFormats() []string { return []string{"raw"} }

// Starts is how many processes Start has started.
func (b *Backend) Starts() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.starts
}

// Hostnames returns the hostnames the guest agent of the VM with this
// spec ID was configured with (agent Configure), in order.
func (b *Backend) Hostnames(id string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.hostnames[id]...)
}

// Start implements vmm.Backend.
func (b *Backend) Start(ctx context.Context, spec vmm.Spec) (vmm.Handle, error) {
	if err := checkSpec(spec); err != nil {
		return vmm.Handle{}, err
	}
	if spec.Restore != nil {
		if err := checkRestore(spec); err != nil {
			return vmm.Handle{}, err
		}
	}
	if b.FailStart != nil {
		if err := b.FailStart(spec); err != nil {
			return vmm.Handle{}, err
		}
	}
	logf, err := os.OpenFile(spec.VMMLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return vmm.Handle{}, err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "fakevmm: starting %s\n", spec.ID)
	if err := appendFile(spec.ConsoleLog, "[    0.000000] Linux version fake\n"); err != nil {
		return vmm.Handle{}, err
	}
	sock := filepath.Join(spec.RuntimeDir, agentSock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return vmm.Handle{}, err
	}
	// The socket is removed by teardown, and only while it is still this
	// VM's: a later VM of the same id may have its own there by then.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	sockInfo, err := os.Stat(sock)
	if err != nil {
		ln.Close()
		return vmm.Handle{}, err
	}
	pid, err := system.StartDetached(system.Detached{Argv: []string{"sleep", "infinity"}, Dir: spec.RuntimeDir, Stdout: logf, Stderr: logf})
	if err != nil {
		ln.Close()
		os.Remove(sock)
		return vmm.Handle{}, err
	}
	st, err := startTime(b.procRoot, pid)
	boot, berr := bootID(b.procRoot)
	if err = errors.Join(err, berr); err != nil {
		syscall.Kill(pid, syscall.SIGKILL)
		ln.Close()
		os.Remove(sock)
		return vmm.Handle{}, err
	}
	m := &machine{
		spec: spec, ln: ln, sock: sockInfo, done: make(chan struct{}),
		h:     vmm.Handle{Backend: Name, PID: pid, StartTime: st, BootID: boot, ControlSocket: sock, AgentSocket: sock, Accel: "none"},
		guest: &guestMachine{b: b, id: spec.ID},
	}
	m.guest.m = m
	b.mu.Lock()
	b.vms[pid] = m
	b.starts++
	b.mu.Unlock()
	go b.serve(m)
	go b.watch(m)
	return m.h, nil
}

func checkSpec(spec vmm.Spec) error {
	if spec.ID == "" || spec.VCPUs < 1 || spec.MemoryMiB < 1 {
		return fmt.Errorf("fakevmm: spec needs an id, vcpus and memory")
	}
	if st, err := os.Stat(spec.RuntimeDir); err != nil || !st.IsDir() {
		return fmt.Errorf("fakevmm: runtime dir %q: %v", spec.RuntimeDir, err)
	}
	k, err := os.ReadFile(spec.Kernel)
	if err != nil {
		return fmt.Errorf("fakevmm: kernel: %w", err)
	}
	if !bytes.HasPrefix(k, []byte("\x7fELF")) && !(len(k) > 0x206 && string(k[0x202:0x206]) == "HdrS") {
		return fmt.Errorf("fakevmm: kernel %s is neither an ELF nor a bzImage", spec.Kernel)
	}
	for _, d := range append([]vmm.Disk{spec.Root}, spec.Disks...) {
		if d.Format != "raw" {
			return fmt.Errorf("fakevmm: disk %s is %q; only raw disks are taken", d.Path, d.Format)
		}
		if _, err := os.Stat(d.Path); err != nil {
			return fmt.Errorf("fakevmm: disk: %w", err)
		}
	}
	return nil
}

func checkRestore(spec vmm.Spec) error {
	raw, err := os.ReadFile(filepath.Join(spec.Restore.Dir, snapshotFile))
	if err != nil {
		return fmt.Errorf("%w: %v", vmm.ErrSnapshotMismatch, err)
	}
	var want shape
	if err := json.Unmarshal(raw, &want); err != nil {
		return fmt.Errorf("%w: %v", vmm.ErrSnapshotMismatch, err)
	}
	got, err := specShape(spec)
	if err != nil {
		return fmt.Errorf("%w: %v", vmm.ErrSnapshotMismatch, err)
	}
	a, _ := json.Marshal(got)
	w, _ := json.Marshal(want)
	if !bytes.Equal(a, w) {
		return fmt.Errorf("%w: clone %s, snapshot %s", vmm.ErrSnapshotMismatch, a, w)
	}
	return nil
}

// serve answers one agent connection at a time, as a guest's single
// channel does.
func (b *Backend) serve(m *machine) {
	for {
		c, err := m.ln.Accept()
		if err != nil {
			return
		}
		if b.Silent != nil && b.Silent(m.spec.ID) {
			go func() {
				<-m.done
				c.Close()
			}()
			continue
		}
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			select {
			case <-m.done:
				cancel()
			case <-ctx.Done():
			}
		}()
		_ = agent.Serve(ctx, c, agent.ServeOptions{Machine: m.guest, Reaper: noopReaper{}, OutputGrace: 10 * time.Millisecond})
		cancel()
	}
}

// watch tears m down once its process is gone (killed from outside).
func (b *Backend) watch(m *machine) {
	for {
		select {
		case <-m.done:
			return
		case <-time.After(20 * time.Millisecond):
		}
		if !b.alive(m.h) {
			b.teardown(m)
			return
		}
	}
}

// teardown closes m's socket and forgets it (its process is gone).
func (b *Backend) teardown(m *machine) {
	m.once.Do(func() {
		close(m.done)
		m.ln.Close()
		p := filepath.Join(m.spec.RuntimeDir, agentSock)
		if st, err := os.Stat(p); err == nil && os.SameFile(st, m.sock) {
			os.Remove(p)
		}
		b.mu.Lock()
		if b.vms[m.h.PID] == m {
			delete(b.vms, m.h.PID)
		}
		b.mu.Unlock()
	})
}

func (b *Backend) machineOf(h vmm.Handle) *machine {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := b.vms[h.PID]
	if m == nil || m.h != h {
		return nil
	}
	return m
}

// alive: the same process (pid, start time, boot) is still there and not
// a zombie.
func (b *Backend) alive(h vmm.Handle) bool {
	if h.PID <= 0 || h.StartTime == 0 {
		return false
	}
	if id, err := bootID(b.procRoot); err != nil || id != h.BootID {
		return false
	}
	raw, err := os.ReadFile(filepath.Join(b.procRoot, strconv.Itoa(h.PID), "stat"))
	if err != nil {
		return false
	}
	state, st, err := parseStat(raw)
	return err == nil && st == h.StartTime && state != 'Z' && state != 'X'
}

// Status implements vmm.Backend.
func (b *Backend) Status(_ context.Context, h vmm.Handle) vmm.State {
	if b.alive(h) {
		return vmm.StateRunning
	}
	return vmm.StateExited
}

// Kill implements vmm.Backend.
func (b *Backend) Kill(ctx context.Context, h vmm.Handle) error {
	if b.alive(h) {
		if err := syscall.Kill(h.PID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			return err
		}
		if err := b.WaitExit(context.WithoutCancel(ctx), h); err != nil {
			return err
		}
	}
	if m := b.machineOf(h); m != nil {
		b.teardown(m)
	}
	return nil
}

// WaitExit implements vmm.Backend. Once the process is gone, its
// machine is torn down before WaitExit returns: the caller may start the
// same VM again at once, and the old machine's socket clean-up must not
// find the new one (its inode number can be the old one's, reused).
func (b *Backend) WaitExit(ctx context.Context, h vmm.Handle) error {
	for b.alive(h) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	if m := b.machineOf(h); m != nil {
		b.teardown(m)
	}
	return nil
}

// DialAgent implements vmm.Backend.
func (b *Backend) DialAgent(ctx context.Context, h vmm.Handle) (net.Conn, error) {
	if !b.alive(h) {
		return nil, fmt.Errorf("fakevmm: vm %d is not running", h.PID)
	}
	var d net.Dialer
	return d.DialContext(ctx, "unix", h.AgentSocket)
}

// FindProcesses implements vmm.Backend: sleep processes whose working
// directory is runtimeRoot/<id> (or was: a removed directory reads
// "... (deleted)").
func (b *Backend) FindProcesses(runtimeRoot string) []vmm.Process {
	ents, err := os.ReadDir(b.procRoot)
	if err != nil {
		return nil
	}
	prefix := strings.TrimSuffix(runtimeRoot, "/") + "/"
	var out []vmm.Process
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join(b.procRoot, e.Name(), "comm"))
		if err != nil || strings.TrimSpace(string(comm)) != "sleep" {
			continue
		}
		cwd, err := os.Readlink(filepath.Join(b.procRoot, e.Name(), "cwd"))
		if err != nil || !strings.HasPrefix(cwd, prefix) {
			continue
		}
		id, _, _ := strings.Cut(strings.TrimSuffix(cwd[len(prefix):], " (deleted)"), "/")
		if id != "" {
			out = append(out, vmm.Process{PID: pid, ID: id})
		}
	}
	return out
}

// ExitReason implements vmm.Backend: the last "fakevmm: exit: " line.
func (b *Backend) ExitReason(tail []byte) string {
	s := string(tail)
	i := strings.LastIndex(s, exitPrefix)
	if i < 0 {
		return ""
	}
	line, _, _ := strings.Cut(s[i+len(exitPrefix):], "\n")
	return strings.TrimSpace(line)
}

// Crash ends the VM h as a VMM dying on its own would: reason goes to its
// VMM log (ExitReason reports it), then SIGKILL. Unlike Kill it leaves
// the socket file behind, as a dead process does.
func (b *Backend) Crash(h vmm.Handle, reason string) error {
	m := b.machineOf(h)
	if m == nil {
		return fmt.Errorf("fakevmm: no running vm %d", h.PID)
	}
	if err := appendFile(m.spec.VMMLog, exitPrefix+reason+"\n"); err != nil {
		return err
	}
	return syscall.Kill(h.PID, syscall.SIGKILL)
}

// Snapshot implements vmm.Snapshotter: the VM must have been started with
// SnapshotDir = dir; its shape is written there and its process ends.
func (b *Backend) Snapshot(ctx context.Context, h vmm.Handle, dir string) error {
	m := b.machineOf(h)
	if m == nil || !b.alive(h) {
		return fmt.Errorf("fakevmm: snapshot: vm %d is not running", h.PID)
	}
	if m.spec.SnapshotDir == "" || filepath.Clean(m.spec.SnapshotDir) != filepath.Clean(dir) {
		return fmt.Errorf("fakevmm: snapshot: vm %s was not started to be saved into %s", m.spec.ID, dir)
	}
	defer b.Kill(ctx, h)
	if _, err := os.Stat(filepath.Join(dir, snapshotFile)); err == nil {
		return fmt.Errorf("fakevmm: snapshot: %s holds one already", dir)
	}
	sh, err := specShape(m.spec)
	if err != nil {
		return err
	}
	raw, _ := json.Marshal(sh)
	return os.WriteFile(filepath.Join(dir, snapshotFile), raw, 0o644)
}

// SnapshotIdentity implements vmm.Snapshotter.
func (b *Backend) SnapshotIdentity(context.Context) (string, error) { return "fakevmm 1", nil }

// guestMachine is the guest agent's Machine: it records the hostnames it
// is given and powers off by ending the fake VM's process.
type guestMachine struct {
	b  *Backend
	id string
	m  *machine
}

func (g *guestMachine) SetHostname(name string) error {
	if g.b.FailConfigure != nil {
		if err := g.b.FailConfigure(g.id); err != nil {
			return err
		}
	}
	g.b.mu.Lock()
	g.b.hostnames[g.id] = append(g.b.hostnames[g.id], name)
	g.b.mu.Unlock()
	return nil
}

func (g *guestMachine) SetTime(time.Time) error                { return nil }
func (g *guestMachine) SeedRandom([]byte) error                { return nil }
func (g *guestMachine) SetMachineID(string) error              { return nil }
func (g *guestMachine) ConfigureNetwork(agent.NetConfig) error { return nil }
func (g *guestMachine) SetAuthorizedKeys([]string) error       { return nil }
func (g *guestMachine) MountAll([]agent.Mount) error           { return nil }
func (g *guestMachine) PrepareShutdown(context.Context) error  { return nil }

// PowerOff ends the process as a guest power-off ends a VMM, after the
// console's last words.
func (g *guestMachine) PowerOff() error {
	appendFile(g.m.spec.ConsoleLog, "[    1.000000] reboot: Power down\n")
	syscall.Kill(g.m.h.PID, syscall.SIGKILL)
	<-g.m.done
	return nil
}

// noopReaper "runs" every program as one that exits 0 at once with no
// output: nothing runs on the host.
type noopReaper struct{}

// noPID is a pid no process can have (above the kernel's pid_max limit),
// so the agent's kill of a session's leftovers signals nothing.
const noPID = 1 << 30

func (noopReaper) Start(func() (*os.Process, error)) (int, <-chan syscall.WaitStatus, error) {
	ch := make(chan syscall.WaitStatus, 1)
	ch <- 0
	return noPID, ch, nil
}

func appendFile(path, s string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	_, err = f.WriteString(s)
	return errors.Join(err, f.Close())
}

func bootID(procRoot string) (string, error) {
	b, err := os.ReadFile(filepath.Join(procRoot, "sys", "kernel", "random", "boot_id"))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

func startTime(procRoot string, pid int) (uint64, error) {
	raw, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	_, st, err := parseStat(raw)
	return st, err
}

// parseStat returns /proc/PID/stat's state (field 3) and start time
// (field 22), counted after the last ')' (the command may hold any).
func parseStat(raw []byte) (byte, uint64, error) {
	i := bytes.LastIndexByte(raw, ')')
	if i < 0 {
		return 0, 0, fs.ErrInvalid
	}
	f := strings.Fields(string(raw[i+1:]))
	if len(f) < 20 || len(f[0]) != 1 {
		return 0, 0, fs.ErrInvalid
	}
	st, err := strconv.ParseUint(f[22-3], 10, 64)
	return f[0][0], st, err
}
