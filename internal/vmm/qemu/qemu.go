// Package qemu is banger's QEMU backend: qemu-system-x86_64 -M microvm,
// direct kernel boot, controlled over QMP (internal/vmm/qmp).
//
// Decisions:
//   - Accelerator: KVM only when the host's /dev/kvm can run a standard
//     kernel (DetectAccel); else TCG with -cpu max, multi-threaded, and
//     tsc_early_khz=<host TSC kHz> on the guest command line (without it a
//     TCG guest on a busy host hangs calibrating its TSC against the PIT).
//   - Files in the VM's runtime dir: qmp.sock (QMP) and agent.sock (the
//     virtio-serial port "banger.agent", one host client at a time). The
//     serial console is appended to Spec.ConsoleLog; QEMU's own output is
//     appended to Spec.VMMLog after a "banger: starting ..." line.
//   - The process is started in its own session via system.StartDetached
//     and never tied to a context. Its identity is pid + start time (field
//     22 of /proc/PID/stat) + boot id: a pid reused by another process is
//     never taken for the VM, and nothing is signalled unless all three
//     match.
//   - -no-reboot and panic=-1: a guest power-off, reboot or panic ends the
//     process; a restart is the caller's decision.
//   - Status: process identity first, then QMP query-status (bounded by
//     2 s: a QEMU that does not answer is "unknown", not "running").
//   - Kill: QMP quit, then SIGKILL to the process group, then waits; socket
//     files that no process listens on any more are removed (never those
//     of a live VM that reuses the runtime dir). Start refuses a runtime
//     dir whose sockets a live process listens on (QEMU would silently
//     unlink and steal them).
//
// The command line is built by BuildArgs as a list of named options;
// warm starts are small edits of it (memory-backend-file + -incoming
// defer). Backend implements vmm.Snapshotter (snapshot.go): a template
// runs with its RAM in a shared file, Snapshot migrates its device state
// with x-ignore-shared to a file, and Start with Spec.Restore starts a
// clone that maps the RAM file copy-on-write and loads that state.
//   - Warm starts, measured here (TCG, 256 MiB): Snapshot ~70 ms; a
//     clone's Start (process, QMP, migrate-incoming, cont) ~35 ms, its
//     agent answers ~130 ms after Start is called; an idle clone is
//     ~60 MiB PSS against ~235 MiB for a cold-booted VM. Start with
//     Spec.Restore checks the snapshot's recorded shape (vCPUs, memory,
//     every disk's format and virtual size, NIC count) and the VMM
//     identity before starting anything (vmm.ErrSnapshotMismatch); a
//     stream QEMU cannot load makes it exit, which Start reports the
//     same way. Disks and taps are the clone's own; the NIC's MAC and
//     all guest state come from the snapshot.
package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/system"
	"github.com/banger-sh/banger/internal/vmm"
	"github.com/banger-sh/banger/internal/vmm/procfs"
	"github.com/banger-sh/banger/internal/vmm/qmp"
)

// Name is the backend's name in config and in Handle.Backend.
const Name = "qemu"

// DefaultBinary is the QEMU program used unless WithBinary says otherwise.
const DefaultBinary = "qemu-system-x86_64"

// The oldest QEMU this backend accepts (microvm with ACPI and file
// chardevs with append=on). It is developed and tested against 7.2.
const (
	MinMajor = 6
	MinMinor = 2
)

const (
	pollInterval  = 10 * time.Millisecond
	statusTimeout = 2 * time.Second
	quitTimeout   = time.Second
	quitGrace     = 2 * time.Second
	killTimeout   = 10 * time.Second
	maxStartWait  = 60 * time.Second // QMP normally answers within 50 ms
	logTailBytes  = 2048
)

// Backend implements vmm.Backend with QEMU.
type Backend struct {
	mu       sync.Mutex
	versions map[string]string // SnapshotIdentity's cache: binary stat -> version
	binary   string
	hostRoot string
	accel    string // forced, or "" to detect
	proc     procfs.Proc
	log      *slog.Logger
}

var _ vmm.Backend = (*Backend)(nil)

// Option configures a Backend.
type Option func(*Backend)

// WithBinary sets the QEMU program (a name looked up in PATH, or a path).
func WithBinary(bin string) Option { return func(b *Backend) { b.binary = bin } }

// WithAccel forces an accelerator (AccelKVM or AccelTCG) instead of
// probing the host.
func WithAccel(accel string) Option { return func(b *Backend) { b.accel = accel } }

// WithHostRoot makes the accelerator and TSC probes read dev/, sys/ and
// proc/cpuinfo under root instead of / (tests).
func WithHostRoot(root string) Option { return func(b *Backend) { b.hostRoot = root } }

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(b *Backend) { b.log = l } }

// New returns a QEMU backend.
func New(opts ...Option) *Backend {
	b := &Backend{
		binary:   DefaultBinary,
		versions: map[string]string{},
		hostRoot: "/",
		proc:     procfs.Proc{Root: "/proc"},
		log:      slog.New(slog.DiscardHandler),
	}
	for _, o := range opts {
		o(b)
	}
	return b
}

// Name implements vmm.Backend.
func (b *Backend) Name() string { return Name }

// Accel returns the accelerator Start would use, and why.
func (b *Backend) Accel() AccelChoice {
	if b.accel != "" {
		return AccelChoice{b.accel, "accelerator " + b.accel + " set by configuration", CauseForced}
	}
	return DetectAccelAt(b.hostRoot)
}

var versionRE = regexp.MustCompile(`version (\d+)\.(\d+)\.(\d+)`)

// Available implements vmm.Backend: the QEMU binary is installed and
// recent enough. It runs `qemu-system-x86_64 --version`.
func (b *Backend) Available(ctx context.Context) vmm.Availability {
	ac := b.Accel()
	path, err := system.LookPath(b.binary)
	if err != nil {
		return vmm.Availability{Reason: fmt.Sprintf("%v (Debian: apt-get install qemu-system-x86 qemu-utils)", err), Accel: ac.Accel}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := system.Run(ctx, path, "--version")
	if err != nil {
		return vmm.Availability{Reason: err.Error(), Accel: ac.Accel}
	}
	m := versionRE.FindSubmatch(out)
	if m == nil {
		return vmm.Availability{Reason: fmt.Sprintf("%s --version: no version in %.100q", path, out), Accel: ac.Accel}
	}
	major, _ := strconv.Atoi(string(m[1]))
	minor, _ := strconv.Atoi(string(m[2]))
	v := fmt.Sprintf("%s.%s.%s", m[1], m[2], m[3])
	if major < MinMajor || major == MinMajor && minor < MinMinor {
		return vmm.Availability{Reason: fmt.Sprintf("%s is QEMU %s; banger needs %d.%d or newer", path, v, MinMajor, MinMinor), Accel: ac.Accel}
	}
	return vmm.Availability{OK: true, Accel: ac.Accel, Reason: fmt.Sprintf("%s (QEMU %s); %s", path, v, ac.Reason)}
}

// Start implements vmm.Backend.
func (b *Backend) Start(ctx context.Context, spec vmm.Spec) (vmm.Handle, error) {
	if spec.Restore != nil {
		r := *spec.Restore
		spec.Restore = &r
	}
	paths := []*string{&spec.Kernel, &spec.Initrd, &spec.RuntimeDir, &spec.ConsoleLog, &spec.VMMLog, &spec.Root.Path, &spec.SnapshotDir}
	if spec.Restore != nil {
		paths = append(paths, &spec.Restore.Dir)
	}
	for _, p := range paths {
		if *p != "" {
			abs, err := filepath.Abs(*p)
			if err != nil {
				return vmm.Handle{}, err
			}
			*p = abs
		}
	}
	for i := range spec.Disks {
		abs, err := filepath.Abs(spec.Disks[i].Path)
		if err != nil {
			return vmm.Handle{}, err
		}
		spec.Disks[i].Path = abs
	}
	if err := ctx.Err(); err != nil {
		return vmm.Handle{}, fmt.Errorf("qemu start %s: %w", spec.ID, err)
	}
	args, ac, err := b.args(spec)
	if err != nil {
		return vmm.Handle{}, err
	}
	if fi, err := os.Stat(spec.RuntimeDir); err != nil || !fi.IsDir() {
		return vmm.Handle{}, fmt.Errorf("qemu start %s: runtime dir %s: %w", spec.ID, spec.RuntimeDir, errors.Join(err, errdefs.ErrInvalidArgument))
	}
	switch {
	case spec.Restore != nil:
		if err := b.checkRestore(ctx, spec); err != nil {
			return vmm.Handle{}, err
		}
	case spec.SnapshotDir != "":
		if err := b.prepareSnapshotDir(ctx, spec); err != nil {
			return vmm.Handle{}, fmt.Errorf("qemu start %s: %w", spec.ID, err)
		}
	}
	bootID, err := b.proc.BootID()
	if err != nil {
		return vmm.Handle{}, fmt.Errorf("qemu start %s: read boot id: %w", spec.ID, err)
	}
	h := vmm.Handle{
		Backend:       Name,
		BootID:        bootID,
		ControlSocket: QMPSocket(spec.RuntimeDir),
		AgentSocket:   AgentSocket(spec.RuntimeDir),
		Accel:         ac.Accel,
	}
	// QEMU unlinks whatever is at a socket path before binding it, so a
	// second VM on a runtime dir in use would silently steal the first
	// one's sockets: refuse instead.
	for _, sock := range []string{h.ControlSocket, h.AgentSocket} {
		if procfs.Listening(sock) {
			return vmm.Handle{}, fmt.Errorf("qemu start %s: %s is in use by a running process: %w", spec.ID, sock, errdefs.ErrConflict)
		}
	}
	vmm.RemoveStaleSockets(h)

	logf, err := os.OpenFile(spec.VMMLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return vmm.Handle{}, fmt.Errorf("qemu start %s: open vmm log: %w", spec.ID, err)
	}
	argv := args.Argv()
	fmt.Fprintf(logf, "%s banger: starting %s\n", time.Now().UTC().Format(time.RFC3339Nano), strings.Join(argv, " "))
	logStart, _ := logf.Seek(0, io.SeekEnd)
	started := time.Now()
	pid, err := system.StartDetached(system.Detached{Argv: argv, Stdout: logf, Stderr: logf})
	logf.Close()
	if err != nil {
		return vmm.Handle{}, fmt.Errorf("qemu start %s: %w", spec.ID, err)
	}
	h.PID = pid
	if st, err := b.proc.Stat(pid); err == nil {
		h.StartTime = st.StartTime
	}
	wctx, cancel := context.WithTimeout(ctx, maxStartWait)
	defer cancel()
	err = b.waitQMP(wctx, h)
	if err == nil && spec.Restore != nil {
		if err = b.incoming(wctx, h, spec.Restore.Dir); err != nil {
			err = fmt.Errorf("restore from %s: %w", spec.Restore.Dir, err)
		}
	}
	if err != nil {
		// Undo: nothing may be left running, and no sockets.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), killTimeout)
		defer cancel()
		if kerr := b.Kill(cctx, h); kerr != nil {
			b.log.Error("kill after failed start", "vm", spec.ID, "pid", pid, "err", kerr)
		}
		return vmm.Handle{}, fmt.Errorf("qemu start %s: %w%s", spec.ID, err, logTail(spec.VMMLog, logStart))
	}
	b.log.Info("qemu started", "vm", spec.ID, "pid", pid, "accel", ac.Accel, "restored", spec.Restore != nil, "after", time.Since(started).Round(time.Millisecond))
	return h, nil
}

// CommandLine returns the argv Start would run for spec on this host (for
// logs, dry runs and debugging).
func (b *Backend) CommandLine(spec vmm.Spec) ([]string, error) {
	a, _, err := b.args(spec)
	if err != nil {
		return nil, err
	}
	return a.Argv(), nil
}

func (b *Backend) args(spec vmm.Spec) (Args, AccelChoice, error) {
	ac := b.Accel()
	cfg := Config{Binary: b.binary, Accel: ac.Accel}
	if ac.Accel == AccelTCG {
		cfg.TSCkHz = HostTSCkHzAt(b.hostRoot)
		if cfg.TSCkHz == 0 {
			b.log.Warn("host TSC frequency unknown; the guest may hang calibrating its clock", "vm", spec.ID)
		}
	}
	a, err := BuildArgs(spec, cfg)
	return a, ac, err
}

// errExited is returned by waitQMP when QEMU dies during start-up.
var errExited = errors.New("qemu exited before its QMP socket answered")

// waitQMP waits until the QMP socket answers query-status, the process
// dies, or ctx ends. It polls every 2 ms at first (QMP answers within
// 20-50 ms, and a restore is not much longer), then every pollInterval.
func (b *Backend) waitQMP(ctx context.Context, h vmm.Handle) error {
	var lastErr error
	t0 := time.Now()
	for {
		if _, ok := b.proc.Alive(h.PID, h.StartTime, h.BootID); !ok || h.StartTime == 0 {
			return errExited
		}
		actx, cancel := context.WithTimeout(ctx, statusTimeout)
		err := queryStatus(actx, h.ControlSocket)
		cancel()
		if err == nil {
			return nil
		}
		lastErr = err
		interval := pollInterval
		if time.Since(t0) < 200*time.Millisecond {
			interval = incomingPoll
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for QMP: %w (last: %v)", ctx.Err(), lastErr)
		case <-time.After(interval):
		}
	}
}

func queryStatus(ctx context.Context, sock string) error {
	c, err := qmp.Dial(ctx, sock)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.QueryStatus(ctx)
	return err
}

// Status implements vmm.Backend.
func (b *Backend) Status(ctx context.Context, h vmm.Handle) vmm.State {
	if _, ok := b.proc.Alive(h.PID, h.StartTime, h.BootID); !ok {
		return vmm.StateExited
	}
	qctx, cancel := context.WithTimeout(ctx, statusTimeout)
	defer cancel()
	if h.ControlSocket != "" && queryStatus(qctx, h.ControlSocket) == nil {
		return vmm.StateRunning
	}
	if _, ok := b.proc.Alive(h.PID, h.StartTime, h.BootID); !ok {
		return vmm.StateExited
	}
	return vmm.StateUnknown
}

// Kill implements vmm.Backend. ctx bounds the polite part (QMP quit and
// its grace period); after SIGKILL, Kill waits up to 10 s for the process
// to go whatever ctx says.
func (b *Backend) Kill(ctx context.Context, h vmm.Handle) error {
	if _, ok := b.proc.Alive(h.PID, h.StartTime, h.BootID); ok {
		if h.ControlSocket != "" {
			qctx, cancel := context.WithTimeout(ctx, quitTimeout)
			c, err := qmp.Dial(qctx, h.ControlSocket)
			if err == nil {
				// QEMU may close the socket before or after replying, so
				// the reply does not matter; the process going away does.
				_ = c.Execute(qctx, "quit", nil, nil)
				c.Close()
			}
			cancel()
			if err == nil {
				gctx, cancel := context.WithTimeout(ctx, quitGrace)
				_ = b.waitGone(gctx, h)
				cancel()
			}
		}
		if err := b.signal(h, unix.SIGKILL); err != nil {
			return fmt.Errorf("qemu kill pid %d: %w", h.PID, err)
		}
		// The SIGKILL is sent; wait for it to land even if ctx has ended,
		// so that Kill never returns with the process half gone.
		kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), killTimeout)
		defer cancel()
		if err := b.waitGone(kctx, h); err != nil {
			return fmt.Errorf("qemu kill pid %d: still running after SIGKILL: %w", h.PID, err)
		}
	}
	vmm.RemoveStaleSockets(h)
	return nil
}

// signal sends sig to the VM's process group and to the process itself,
// only after checking (through a pidfd, so that the pid cannot be reused
// in between) that h's process is still the one running.
func (b *Backend) signal(h vmm.Handle, sig unix.Signal) error {
	fd, err := unix.PidfdOpen(h.PID, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pidfd_open: %w", err)
	}
	defer unix.Close(fd)
	st, ok := b.proc.Alive(h.PID, h.StartTime, h.BootID)
	if !ok {
		return nil // gone, or not ours: never signal a stranger
	}
	if st.PGRP == h.PID {
		if err := unix.Kill(-h.PID, sig); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("kill process group: %w", err)
		}
	}
	if err := unix.PidfdSendSignal(fd, sig, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("pidfd_send_signal: %w", err)
	}
	return nil
}

// waitGone polls until h's process is gone or ctx ends.
func (b *Backend) waitGone(ctx context.Context, h vmm.Handle) error {
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		if _, ok := b.proc.Alive(h.PID, h.StartTime, h.BootID); !ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// WaitExit implements vmm.Backend. It sleeps in poll(2) on a pidfd of the
// process (readable once it exits) and an eventfd that ctx's end signals,
// so a long wait costs nothing; it falls back to polling /proc.
func (b *Backend) WaitExit(ctx context.Context, h vmm.Handle) error {
	pfd, err := unix.PidfdOpen(h.PID, 0)
	if errors.Is(err, unix.ESRCH) || h.PID <= 0 {
		return nil
	}
	if err != nil {
		return b.waitGone(ctx, h)
	}
	defer unix.Close(pfd)
	// Opened first, checked second: the pidfd is h's process or the
	// process is gone.
	if _, ok := b.proc.Alive(h.PID, h.StartTime, h.BootID); !ok {
		return nil
	}
	efd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return b.waitGone(ctx, h)
	}
	defer unix.Close(efd)
	stop := context.AfterFunc(ctx, func() {
		_, _ = unix.Write(efd, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	})
	defer stop()
	for {
		fds := []unix.PollFd{{Fd: int32(pfd), Events: unix.POLLIN}, {Fd: int32(efd), Events: unix.POLLIN}}
		_, err := unix.Poll(fds, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return b.waitGone(ctx, h)
		}
		if fds[0].Revents != 0 {
			return nil
		}
		if fds[1].Revents != 0 {
			return ctx.Err()
		}
	}
}

// DialAgent implements vmm.Backend: it connects to the agent port's unix
// socket. QEMU serves one client at a time; a second connection waits
// (unserved) until the first closes.
func (b *Backend) DialAgent(ctx context.Context, h vmm.Handle) (net.Conn, error) {
	if _, ok := b.proc.Alive(h.PID, h.StartTime, h.BootID); !ok {
		return nil, errdefs.NotRunning(fmt.Sprintf("qemu pid %d is not running", h.PID))
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", h.AgentSocket)
	if err != nil {
		return nil, fmt.Errorf("dial agent: %w", err)
	}
	return conn, nil
}

// logTail returns ": <last lines of the log from offset>" or "".
func logTail(path string, offset int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	start := offset
	if fi.Size()-start > logTailBytes {
		start = fi.Size() - logTailBytes
	}
	b := make([]byte, fi.Size()-start)
	n, _ := f.ReadAt(b, start)
	s := strings.TrimSpace(string(b[:n]))
	if s == "" {
		return " (vmm log " + path + " is empty)"
	}
	return "; vmm log: " + s
}
