// Package firecracker is banger's Firecracker backend: one `firecracker`
// process per VM, configured over its HTTP API on a unix socket through
// the client of github.com/firecracker-microvm/firecracker-go-sdk (v1.0.0).
//
// Decisions (the facts behind them are in the project's FIRECRACKER.md):
//   - The process is started by banger itself, detached through
//     internal/system (own session, never tied to a context), and only
//     then configured through the SDK's Client. The SDK's Machine is not
//     used: NewMachine builds its command with exec.CommandContext and
//     Machine.Start kills the VMM when its context ends (the seed's
//     restart bug, SDK #200), forwards the daemon's signals to every VM
//     and has no re-attach. Identity is pid + start time + boot id, as for
//     QEMU; after a daemon restart Status/Kill/DialAgent work from the
//     persisted Handle alone.
//   - Firecracker v1.16 or newer (the API spec banger is checked against,
//     ../shared/firecracker-api): every virtio-mmio device is described in
//     ACPI (>= 1.8, needed by Debian's kernel), and snapshot loads take
//     network_overrides (1.12) and vsock_override (1.16). Available refuses
//     older versions.
//   - Kernel: ELF vmlinux only (a bzImage is refused before anything
//     starts). Boot args are always sent (Firecracker's default has
//     `nomodule` and no serial console): console=ttyS0 reboot=k panic=1
//     plus banger.transport=vsock for the guest agent, then Spec.KernelArgs
//     in order. Firecracker itself appends root=/dev/vda for the root drive.
//   - Disks: raw files only (RootFormats is {"raw"}); cache Writeback, so
//     that a guest fsync reaches the host file (the SDK's default, Unsafe,
//     drops it). Drive ids: "root", then "disk1", "disk2", ...
//   - NICs: "eth0", "eth1", ... on existing taps, with the spec's MAC.
//     Firecracker has no NIC without a host tap: for a NIC slot with an
//     empty Tap (a warm-start template's) the backend makes a placeholder
//     tap, down and on no bridge, removed by Kill (slots.go).
//   - Guest agent: hybrid vsock. The device's uds_path is v.sock in the
//     runtime dir; DialAgent connects, writes "CONNECT 1024\n" and reads
//     the "OK <n>\n" ack itself one byte at a time (the SDK's helper reads
//     it through a buffered reader that can swallow the guest's first
//     bytes), then the connection is the guest agent's stream.
//   - Files in the runtime dir: fc.sock (API), v.sock (vsock), log.fifo
//     (Firecracker's --log-path, relayed by a detached `cat` into
//     Spec.VMMLog: see LogFIFO). The VMM's stdout is the serial console,
//     appended to Spec.ConsoleLog; its stderr is appended to Spec.VMMLog
//     after a "banger: starting" line. (PUT /serial is not used: Firecracker
//     writes that file at its own offset, not appending.)
//   - Kill: SIGKILL to the process group (there is no graceful API quit
//     that does not need the guest's cooperation; the caller asks the agent
//     to power off first when it wants a clean stop), then waits until the
//     process is gone and removes the sockets no process listens on.
//
// Warm starts (snapshot.go): Snapshot pauses a template VM and writes
// Firecracker's full snapshot (vmstate + guest memory) into the template
// dir; Start with Spec.Restore loads it into a fresh process with
// network_overrides (the clone's taps) and vsock_override (the clone's
// v.sock), then points every drive at the clone's own file (PATCH
// /drives/ID, allowed once a snapshot is loaded, while the VM is still
// paused) and resumes. The load itself opens the template's drive files
// (paths recorded in the snapshot): they must still exist, and the
// template's root is opened but, the VM being paused, never written. No
// jailer or mount namespace is needed for that.
//
// What is proven here: the whole API call sequence (boot, snapshot,
// restore, error paths) against fcfake, a fake Firecracker API server that
// validates every request against the v1.16.1 spec; the process handling
// (detached start, identity, re-attach, kill, FindProcesses, the log
// relay) with the fake running as a real detached process; and the vmmtest
// conformance suite with that fake as the VMM and the guest agent library
// as the guest (TestConformanceWithFake). What is not: a real firecracker
// on hardware KVM (this machine has neither): TestConformance runs the
// suite wherever both exist and skips otherwise. Assumed from Firecracker's
// code and docs, not run: the guest finds its virtio-mmio devices through
// ACPI, a guest power-off or reboot (reboot=k) ends the process, and PATCH
// /drives re-points a drive of a loaded, paused snapshot.
package firecracker

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
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

	sdk "github.com/firecracker-microvm/firecracker-go-sdk"
	"github.com/firecracker-microvm/firecracker-go-sdk/client/models"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/system"
	"github.com/banger-sh/banger/internal/vmm"
	"github.com/banger-sh/banger/internal/vmm/procfs"
)

// Name is the backend's name in config and in Handle.Backend.
const Name = "firecracker"

// DefaultBinary is the Firecracker program used unless WithBinary says
// otherwise.
const DefaultBinary = "firecracker"

// The oldest Firecracker this backend accepts.
const (
	MinMajor = 1
	MinMinor = 16
)

// AgentPort is the guest agent's vsock port (agent.DefaultVsockPort).
const AgentPort = 1024

// GuestCID is the guest's vsock CID (need not be unique per host: the
// hybrid vsock is reached through each VM's own unix socket).
const GuestCID = 3

// File names in the runtime dir.
const (
	APISocketName   = "fc.sock"
	VsockSocketName = "v.sock"
)

const (
	pollInterval = 10 * time.Millisecond
	apiTimeout   = 2 * time.Second
	killTimeout  = 10 * time.Second
	maxStartWait = 30 * time.Second
	logTailBytes = 2048
)

// APISocket is the API socket of the VM whose runtime dir is dir.
func APISocket(dir string) string { return filepath.Join(dir, APISocketName) }

// VsockSocket is the hybrid vsock socket of the VM whose runtime dir is dir.
func VsockSocket(dir string) string { return filepath.Join(dir, VsockSocketName) }

// Backend implements vmm.Backend (and vmm.Snapshotter) with Firecracker.
type Backend struct {
	mu       sync.Mutex
	versions map[string]string // SnapshotIdentity's cache: binary stat -> version
	binary   string
	hostRoot string
	proc     procfs.Proc
	log      *slog.Logger
	// version runs `firecracker --version` (tests substitute it).
	version func(ctx context.Context, path string) (string, error)
}

var (
	_ vmm.Backend     = (*Backend)(nil)
	_ vmm.Snapshotter = (*Backend)(nil)
)

// Option configures a Backend.
type Option func(*Backend)

// WithBinary sets the Firecracker program (a name looked up in PATH, or a
// path).
func WithBinary(bin string) Option { return func(b *Backend) { b.binary = bin } }

// WithHostRoot makes Available read dev/ and sys/ under root instead of /
// (tests).
func WithHostRoot(root string) Option { return func(b *Backend) { b.hostRoot = root } }

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(b *Backend) { b.log = l } }

// WithVersionProbe replaces how the binary's version is read (default:
// run it with --version).
func WithVersionProbe(f func(ctx context.Context, path string) (string, error)) Option {
	return func(b *Backend) { b.version = f }
}

// New returns a Firecracker backend.
func New(opts ...Option) *Backend {
	b := &Backend{
		binary:   DefaultBinary,
		versions: map[string]string{},
		hostRoot: "/",
		proc:     procfs.Proc{Root: "/proc"},
		log:      slog.New(slog.DiscardHandler),
		version:  Version,
	}
	for _, o := range opts {
		o(b)
	}
	return b
}

// Name implements vmm.Backend.
func (b *Backend) Name() string { return Name }

// RootFormats implements vmm.Backend: Firecracker takes raw files only.
func (b *Backend) RootFormats() []string { return []string{"raw"} }

var versionRE = regexp.MustCompile(`[Ff]irecracker v?(\d+)\.(\d+)\.(\d+)`)

// Version runs `firecracker --version` and returns its version ("1.16.1").
func Version(ctx context.Context, path string) (string, error) {
	out, err := system.Run(ctx, path, "--version")
	if err != nil {
		return "", err
	}
	m := versionRE.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("%s --version: no version in %.100q", path, out)
	}
	return fmt.Sprintf("%s.%s.%s", m[1], m[2], m[3]), nil
}

// ParseVersion splits "1.16.1" into major and minor.
func ParseVersion(v string) (int, int, bool) {
	f := strings.Split(v, ".")
	if len(f) < 2 {
		return 0, 0, false
	}
	major, err1 := strconv.Atoi(f[0])
	minor, err2 := strconv.Atoi(f[1])
	return major, minor, err1 == nil && err2 == nil
}

// Available implements vmm.Backend: hardware KVM that runs a standard
// kernel (not PVM-only), the firecracker binary, version 1.16 or newer.
func (b *Backend) Available(ctx context.Context) vmm.Availability {
	if ok, why := HardwareKVM(b.hostRoot); !ok {
		return vmm.Availability{Reason: "firecracker needs hardware KVM: " + why}
	}
	path, err := system.LookPath(b.binary)
	if err != nil {
		return vmm.Availability{Reason: fmt.Sprintf("no firecracker binary: %v (install a release binary from github.com/firecracker-microvm/firecracker into PATH)", err), Accel: "kvm"}
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	v, err := b.version(ctx, path)
	if err != nil {
		return vmm.Availability{Reason: err.Error(), Accel: "kvm"}
	}
	if err := checkVersion(v); err != nil {
		return vmm.Availability{Reason: fmt.Sprintf("%s: %v", path, err), Accel: "kvm"}
	}
	return vmm.Availability{OK: true, Accel: "kvm", Reason: fmt.Sprintf("%s (Firecracker %s) on hardware KVM", path, v)}
}

func checkVersion(v string) error {
	major, minor, ok := ParseVersion(v)
	if !ok {
		return fmt.Errorf("unparsable version %q", v)
	}
	if major < MinMajor || major == MinMajor && minor < MinMinor {
		return fmt.Errorf("Firecracker %s; banger needs %d.%d or newer", v, MinMajor, MinMinor)
	}
	return nil
}

// HardwareKVM reports whether root/dev/kvm is standard KVM (kvm_intel or
// kvm_amd loaded) rather than missing or PVM-only (kvm_pvm, which runs
// only PVM-enabled guest kernels), and why not.
func HardwareKVM(root string) (bool, string) {
	if _, err := os.Stat(filepath.Join(root, "dev", "kvm")); err != nil {
		return false, "no /dev/kvm"
	}
	if _, err := os.Stat(filepath.Join(root, "sys", "module", "kvm_pvm")); err == nil {
		return false, "/dev/kvm is PVM-only (kvm_pvm): it runs only PVM-enabled guest kernels"
	}
	for _, m := range []string{"kvm_intel", "kvm_amd"} {
		if _, err := os.Stat(filepath.Join(root, "sys", "module", m)); err == nil {
			if err := unix.Access(filepath.Join(root, "dev", "kvm"), unix.R_OK|unix.W_OK); err != nil {
				return false, "/dev/kvm is not accessible: " + err.Error()
			}
			return true, "/dev/kvm (" + m + ")"
		}
	}
	return false, "/dev/kvm exists but neither kvm_intel nor kvm_amd is loaded"
}

// CheckKernel fails unless path is an ELF vmlinux (what released
// Firecracker loads; a bzImage fails with "Invalid Elf magic number").
func CheckKernel(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("kernel %s: firecracker boots an ELF vmlinux only: %w", path, errors.Join(err, errdefs.ErrInvalidArgument))
	}
	f.Close()
	return nil
}

// BootArgs is the kernel command line Start sends for spec.
func BootArgs(spec vmm.Spec) string {
	args := []string{
		"console=ttyS0", "reboot=k", "panic=1", "quiet", "rootfstype=ext4",
		"banger.transport=vsock", "banger.vsock_port=" + strconv.Itoa(AgentPort),
	}
	return strings.Join(append(args, spec.KernelArgs...), " ")
}

// driveID names the i-th drive (0 is the root).
func driveID(i int) string {
	if i == 0 {
		return "root"
	}
	return "disk" + strconv.Itoa(i)
}

func ifaceID(i int) string { return "eth" + strconv.Itoa(i) }

// checkSpec refuses what Firecracker cannot do, before anything starts.
func checkSpec(spec vmm.Spec) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("firecracker start %s: %s: %w", spec.ID, fmt.Sprintf(format, a...), errdefs.ErrInvalidArgument)
	}
	if spec.ID == "" || spec.VCPUs < 1 || spec.MemoryMiB < 1 {
		return bad("id, vcpus and memory are required")
	}
	for what, p := range map[string]string{"runtime dir": spec.RuntimeDir, "console log": spec.ConsoleLog, "vmm log": spec.VMMLog} {
		if p == "" {
			return bad("no %s", what)
		}
	}
	if fi, err := os.Stat(spec.RuntimeDir); err != nil || !fi.IsDir() {
		return bad("runtime dir %s is not a directory", spec.RuntimeDir)
	}
	if n := len(APISocket(spec.RuntimeDir)); n > 100 {
		return bad("runtime dir %s is too long for a unix socket path", spec.RuntimeDir)
	}
	if spec.Restore == nil {
		if err := CheckKernel(spec.Kernel); err != nil {
			return fmt.Errorf("firecracker start %s: %w", spec.ID, err)
		}
		if spec.Initrd != "" {
			if _, err := os.Stat(spec.Initrd); err != nil {
				return bad("initrd: %v", err)
			}
		}
	}
	for i, d := range append([]vmm.Disk{spec.Root}, spec.Disks...) {
		if d.Format != "raw" {
			return bad("drive %s is %q: firecracker takes raw files only", driveID(i), d.Format)
		}
		if _, err := os.Stat(d.Path); err != nil {
			return bad("drive %s: %v", driveID(i), err)
		}
	}
	for i, n := range spec.NICs {
		if len(n.Tap) > 15 {
			return bad("tap name %q is longer than 15 characters", n.Tap)
		}
		if n.MAC != "" {
			if _, err := net.ParseMAC(n.MAC); err != nil {
				return bad("NIC %d: %v", i, err)
			}
		}
	}
	return nil
}

func absSpec(spec vmm.Spec) (vmm.Spec, error) {
	if spec.Restore != nil {
		r := *spec.Restore
		spec.Restore = &r
	}
	spec.Disks = append([]vmm.Disk(nil), spec.Disks...)
	paths := []*string{&spec.Kernel, &spec.Initrd, &spec.RuntimeDir, &spec.ConsoleLog, &spec.VMMLog, &spec.Root.Path, &spec.SnapshotDir}
	if spec.Restore != nil {
		paths = append(paths, &spec.Restore.Dir)
	}
	for i := range spec.Disks {
		paths = append(paths, &spec.Disks[i].Path)
	}
	for _, p := range paths {
		if *p != "" {
			abs, err := filepath.Abs(*p)
			if err != nil {
				return spec, err
			}
			*p = abs
		}
	}
	return spec, nil
}

// client is the SDK's API client on sock, with the SDK's logging
// discarded (banger logs through slog).
func client(sock string) *sdk.Client {
	l := logrus.New()
	l.SetOutput(io.Discard)
	return sdk.NewClient(sock, logrus.NewEntry(l), false)
}

// Start implements vmm.Backend.
func (b *Backend) Start(ctx context.Context, spec vmm.Spec) (vmm.Handle, error) {
	spec, err := absSpec(spec)
	if err != nil {
		return vmm.Handle{}, err
	}
	if err := ctx.Err(); err != nil {
		return vmm.Handle{}, fmt.Errorf("firecracker start %s: %w", spec.ID, err)
	}
	if err := checkSpec(spec); err != nil {
		return vmm.Handle{}, err
	}
	var snap *snapshotInfo
	switch {
	case spec.Restore != nil:
		if snap, err = b.checkRestore(ctx, spec); err != nil {
			return vmm.Handle{}, err
		}
	case spec.SnapshotDir != "":
		if err := prepareSnapshotDir(spec); err != nil {
			return vmm.Handle{}, fmt.Errorf("firecracker start %s: %w", spec.ID, err)
		}
	}
	bootID, err := b.proc.BootID()
	if err != nil {
		if spec.SnapshotDir != "" {
			_ = os.Remove(templateFile(spec.SnapshotDir))
		}
		return vmm.Handle{}, fmt.Errorf("firecracker start %s: read boot id: %w", spec.ID, err)
	}
	h := vmm.Handle{
		Backend:       Name,
		BootID:        bootID,
		ControlSocket: APISocket(spec.RuntimeDir),
		AgentSocket:   VsockSocket(spec.RuntimeDir),
		Accel:         "kvm",
	}
	for _, sock := range []string{h.ControlSocket, h.AgentSocket} {
		if procfs.Listening(sock) {
			if spec.SnapshotDir != "" {
				_ = os.Remove(templateFile(spec.SnapshotDir))
			}
			return vmm.Handle{}, fmt.Errorf("firecracker start %s: %s is in use by a running process: %w", spec.ID, sock, errdefs.ErrConflict)
		}
	}
	// Firecracker refuses to bind over a stale socket file.
	vmm.RemoveStaleSockets(h)
	fail := func(err error) (vmm.Handle, error) {
		_ = deleteSlotTaps(spec.RuntimeDir)
		releaseLogRelay(spec.RuntimeDir)
		if spec.SnapshotDir != "" {
			_ = os.Remove(templateFile(spec.SnapshotDir))
		}
		return vmm.Handle{}, fmt.Errorf("firecracker start %s: %w", spec.ID, err)
	}
	if hasSlots(spec) {
		nics, err := fillSlotTaps(spec)
		if err != nil {
			return fail(err)
		}
		spec.NICs = nics
	}
	logf, err := os.OpenFile(spec.VMMLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fail(fmt.Errorf("open vmm log: %w", err))
	}
	defer logf.Close()
	conf, err := os.OpenFile(spec.ConsoleLog, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fail(fmt.Errorf("open console log: %w", err))
	}
	defer conf.Close()
	fifo := LogFIFO(spec.RuntimeDir)
	_ = os.Remove(fifo)
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		return fail(fmt.Errorf("log fifo: %w", err))
	}
	argv := []string{b.binary, "--api-sock", h.ControlSocket, "--id", spec.ID, "--log-path", fifo, "--level", "Info"}
	fmt.Fprintf(logf, "%s banger: starting %s\n", time.Now().UTC().Format(time.RFC3339Nano), strings.Join(argv, " "))
	logStart, _ := logf.Seek(0, io.SeekEnd)
	started := time.Now()
	// stdout is the serial console (appended: consolelog bounds it by
	// cutting its head); stderr and, through the relay, Firecracker's log
	// go to the VMM log, appended too.
	pid, err := system.StartDetached(system.Detached{Argv: argv, Stdout: conf, Stderr: logf})
	if err != nil {
		return fail(err)
	}
	if _, err := system.StartDetached(system.Detached{Argv: []string{"cat", fifo}, Stdout: logf, Stderr: logf}); err != nil {
		b.log.Warn("no log relay: firecracker's log lines are lost", "vm", spec.ID, "err", err)
	}
	h.PID = pid
	if st, err := b.proc.Stat(pid); err == nil {
		h.StartTime = st.StartTime
	}
	wctx, cancel := context.WithTimeout(ctx, maxStartWait)
	defer cancel()
	err = b.waitAPI(wctx, h)
	if err == nil {
		c := client(h.ControlSocket)
		if snap != nil {
			err = restore(wctx, c, spec)
		} else {
			err = configure(wctx, c, spec)
		}
	}
	if err != nil {
		// Undo: nothing may be left running, and no sockets. A failed
		// configuration leaves the VMM running (the SDK does not kill it).
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), killTimeout)
		defer cancel()
		if kerr := b.Kill(cctx, h); kerr != nil {
			b.log.Error("kill after failed start", "vm", spec.ID, "pid", pid, "err", kerr)
		}
		if spec.SnapshotDir != "" {
			_ = os.Remove(templateFile(spec.SnapshotDir))
		}
		return vmm.Handle{}, fmt.Errorf("firecracker start %s: %w%s", spec.ID, err, logTail(spec.VMMLog, logStart))
	}
	b.log.Info("firecracker started", "vm", spec.ID, "pid", pid, "restored", snap != nil, "after", time.Since(started).Round(time.Millisecond))
	return h, nil
}

// configure sends a cold boot's configuration and starts the instance:
// PUT /machine-config, /boot-source, /drives/ID for each disk,
// /network-interfaces/ID for each NIC, /vsock, then InstanceStart.
func configure(ctx context.Context, c *sdk.Client, spec vmm.Spec) error {
	if _, err := c.PutMachineConfiguration(ctx, &models.MachineConfiguration{
		VcpuCount:  sdk.Int64(int64(spec.VCPUs)),
		MemSizeMib: sdk.Int64(int64(spec.MemoryMiB)),
		Smt:        sdk.Bool(false),
		// Dirty-page tracking is only needed for diff snapshots.
	}); err != nil {
		return fmt.Errorf("machine config: %w", apiError(err))
	}
	if _, err := c.PutGuestBootSource(ctx, &models.BootSource{
		KernelImagePath: sdk.String(spec.Kernel),
		InitrdPath:      spec.Initrd,
		BootArgs:        BootArgs(spec),
	}); err != nil {
		return fmt.Errorf("boot source: %w", apiError(err))
	}
	for i, d := range append([]vmm.Disk{spec.Root}, spec.Disks...) {
		id := driveID(i)
		if _, err := c.PutGuestDriveByID(ctx, id, &models.Drive{
			DriveID:      sdk.String(id),
			PathOnHost:   sdk.String(d.Path),
			IsRootDevice: sdk.Bool(i == 0),
			IsReadOnly:   sdk.Bool(d.ReadOnly),
			CacheType:    sdk.String(models.DriveCacheTypeWriteback),
		}); err != nil {
			return fmt.Errorf("drive %s: %w", id, apiError(err))
		}
	}
	for i, n := range spec.NICs {
		id := ifaceID(i)
		if _, err := c.PutGuestNetworkInterfaceByID(ctx, id, &models.NetworkInterface{
			IfaceID:     sdk.String(id),
			HostDevName: sdk.String(n.Tap),
			GuestMac:    n.MAC,
		}); err != nil {
			return fmt.Errorf("network interface %s: %w", id, apiError(err))
		}
	}
	if _, err := c.PutGuestVsock(ctx, &models.Vsock{
		GuestCid: sdk.Int64(GuestCID),
		UdsPath:  sdk.String(VsockSocket(spec.RuntimeDir)),
	}); err != nil {
		return fmt.Errorf("vsock: %w", apiError(err))
	}
	if _, err := c.CreateSyncAction(ctx, &models.InstanceActionInfo{
		ActionType: sdk.String(models.InstanceActionInfoActionTypeInstanceStart),
	}); err != nil {
		return fmt.Errorf("instance start: %w", apiError(err))
	}
	return nil
}

// faultPayload is implemented by the SDK's generated error responses
// (PutGuestDriveByIDBadRequest, ...), which carry Firecracker's
// fault_message.
type faultPayload interface{ GetPayload() *models.Error }

// apiError turns an SDK error into one that carries Firecracker's
// fault_message (the SDK's own message is only the operation and code).
func apiError(err error) error {
	var fp faultPayload
	if errors.As(err, &fp) {
		if p := fp.GetPayload(); p != nil && p.FaultMessage != "" {
			return &sdkFault{err: err, msg: "firecracker: " + bound(sanitize(p.FaultMessage), 300)}
		}
	}
	return err
}

// sdkFault is an SDK error shown as Firecracker's fault_message (the
// SDK's own text repeats the payload as a Go struct).
type sdkFault struct {
	err error
	msg string
}

func (e *sdkFault) Error() string { return e.msg }
func (e *sdkFault) Unwrap() error { return e.err }

func bound(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// errExited is returned by waitAPI when the VMM dies during start-up.
var errExited = errors.New("firecracker exited before its API socket answered")

// waitAPI waits until GET / answers on the API socket, the process dies,
// or ctx ends.
func (b *Backend) waitAPI(ctx context.Context, h vmm.Handle) error {
	var lastErr error
	t0 := time.Now()
	for {
		if _, ok := b.proc.Alive(h.PID, h.StartTime, h.BootID); !ok || h.StartTime == 0 {
			return errExited
		}
		if _, err := os.Stat(h.ControlSocket); err == nil {
			actx, cancel := context.WithTimeout(ctx, apiTimeout)
			_, err = client(h.ControlSocket).GetInstanceInfo(actx)
			cancel()
			if err == nil {
				return nil
			}
			lastErr = err
		}
		interval := pollInterval
		if time.Since(t0) < 200*time.Millisecond {
			interval = 2 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the API socket: %w (last: %v)", ctx.Err(), lastErr)
		case <-time.After(interval):
		}
	}
}

// Status implements vmm.Backend: the process identity first, then GET /
// on the API socket (bounded: a VMM that does not answer is "unknown").
func (b *Backend) Status(ctx context.Context, h vmm.Handle) vmm.State {
	if _, ok := b.proc.Alive(h.PID, h.StartTime, h.BootID); !ok {
		return vmm.StateExited
	}
	actx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	if h.ControlSocket != "" {
		if _, err := client(h.ControlSocket).GetInstanceInfo(actx); err == nil {
			return vmm.StateRunning
		}
	}
	if _, ok := b.proc.Alive(h.PID, h.StartTime, h.BootID); !ok {
		return vmm.StateExited
	}
	return vmm.StateUnknown
}

// Kill implements vmm.Backend: SIGKILL, then waits up to 10 s for the
// process to go whatever ctx says (so Kill never returns with the process
// half gone).
func (b *Backend) Kill(ctx context.Context, h vmm.Handle) error {
	if _, ok := b.proc.Alive(h.PID, h.StartTime, h.BootID); ok {
		if err := b.signal(h, unix.SIGKILL); err != nil {
			return fmt.Errorf("firecracker kill pid %d: %w", h.PID, err)
		}
		kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), killTimeout)
		defer cancel()
		if err := b.waitGone(kctx, h); err != nil {
			return fmt.Errorf("firecracker kill pid %d: still running after SIGKILL: %w", h.PID, err)
		}
	}
	// Only once nothing serves the runtime dir (a stale handle never
	// breaks a live VM that reuses it).
	if h.ControlSocket != "" && !procfs.Listening(h.ControlSocket) {
		if err := deleteSlotTaps(filepath.Dir(h.ControlSocket)); err != nil {
			b.log.Warn("placeholder taps left", "err", err)
		}
	}
	vmm.RemoveStaleSockets(h)
	if h.ControlSocket != "" && !procfs.Listening(h.ControlSocket) {
		b.stopLogRelay(filepath.Dir(h.ControlSocket))
	}
	return nil
}

// stopLogRelay ends the log relay of the VM whose runtime dir is dir: it
// ends by itself at EOF once the VMM is gone; after a second it is killed.
// The FIFO is removed.
func (b *Backend) stopLogRelay(dir string) {
	releaseLogRelay(dir)
	fifo := LogFIFO(dir)
	deadline := time.Now().Add(time.Second)
	for {
		pids := b.relayPIDs(fifo)
		if len(pids) == 0 {
			return
		}
		if time.Now().After(deadline) {
			for _, pid := range pids {
				_ = unix.Kill(pid, unix.SIGKILL)
			}
			if time.Now().After(deadline.Add(time.Second)) {
				b.log.Warn("log relay does not end", "fifo", fifo, "pids", pids)
				return
			}
		}
		time.Sleep(pollInterval)
	}
}

// relayPIDs lists the live processes whose command line is exactly
// `cat FIFO`.
func (b *Backend) relayPIDs(fifo string) []int {
	entries, _ := os.ReadDir(b.proc.Root)
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join(b.proc.Root, e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(cmd), "\x00"), "\x00")
		if len(args) != 2 || filepath.Base(args[0]) != "cat" || args[1] != fifo {
			continue
		}
		if st, err := b.proc.Stat(pid); err == nil && !st.Gone() {
			out = append(out, pid)
		}
	}
	return out
}

// LogFIFO is the named pipe Firecracker logs into (--log-path) for the VM
// whose runtime dir is dir.
//
// Why a FIFO: Firecracker opens --log-path (and PUT /serial's path)
// read-write at offset 0, without O_APPEND, so on a regular file it would
// overwrite what is there and leave holes when consolelog cuts the head.
// A detached `cat FIFO` (its stdout the VMM log, opened O_APPEND) relays
// the lines instead; it outlives the daemon like the VMM and ends at EOF
// when the VMM exits. Firecracker opens the FIFO O_RDWR|O_NONBLOCK, so a
// missing relay never blocks it (lines are dropped past 64 KiB).
func LogFIFO(dir string) string { return filepath.Join(dir, "log.fifo") }

// releaseLogRelay ends a relay still waiting for a writer (a VMM that died
// before opening the FIFO) and removes the FIFO.
func releaseLogRelay(dir string) {
	fifo := LogFIFO(dir)
	if fd, err := unix.Open(fifo, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0); err == nil {
		unix.Close(fd) // a reader blocked in open gets its writer and EOF
	}
	_ = os.Remove(fifo)
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
// process and an eventfd that ctx's end signals.
func (b *Backend) WaitExit(ctx context.Context, h vmm.Handle) error {
	if h.PID <= 0 {
		return nil
	}
	pfd, err := unix.PidfdOpen(h.PID, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return b.waitGone(ctx, h)
	}
	defer unix.Close(pfd)
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

// DialAgent implements vmm.Backend: the hybrid vsock handshake on the
// VM's v.sock (CONNECT <port>\n, then OK <n>\n), read byte by byte so
// that no guest byte after the ack is consumed here.
func (b *Backend) DialAgent(ctx context.Context, h vmm.Handle) (net.Conn, error) {
	if _, ok := b.proc.Alive(h.PID, h.StartTime, h.BootID); !ok {
		return nil, errdefs.NotRunning(fmt.Sprintf("firecracker pid %d is not running", h.PID))
	}
	return DialVsock(ctx, h.AgentSocket, AgentPort)
}

// errBadAck: the other end of the vsock socket is not Firecracker's
// hybrid vsock (not retried).
var errBadAck = errors.New("bad vsock ack")

// maxAck bounds the ack line ("OK 1073741824\n" is 14 bytes).
const maxAck = 32

// DialVsock connects to a Firecracker hybrid vsock socket and to port in
// the guest. Until the guest listens, Firecracker closes the connection
// without an ack; DialVsock retries until ctx ends.
func DialVsock(ctx context.Context, sock string, port uint32) (net.Conn, error) {
	var lastErr error
	for {
		conn, err := dialVsockOnce(ctx, sock, port)
		if err == nil {
			return conn, nil
		}
		if errors.Is(err, errBadAck) {
			return nil, fmt.Errorf("dial agent (vsock %s port %d): %w", sock, port, err)
		}
		if ctx.Err() == nil || lastErr == nil {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("dial agent (vsock %s port %d): %w (last: %v)", sock, port, ctx.Err(), lastErr)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func dialVsockOnce(ctx context.Context, sock string, port uint32) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := fmt.Fprintf(conn, "CONNECT %d\n", port); err != nil {
		conn.Close()
		return nil, err
	}
	var line []byte
	var one [1]byte
	for len(line) < maxAck {
		if _, err := conn.Read(one[:]); err != nil {
			conn.Close()
			if errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("closed before the ack (nothing listens on guest port %d yet)", port)
			}
			return nil, err
		}
		if one[0] == '\n' {
			break
		}
		line = append(line, one[0])
	}
	f := strings.Fields(string(line))
	if len(f) != 2 || f[0] != "OK" {
		conn.Close()
		return nil, fmt.Errorf("%w %.40q", errBadAck, line)
	}
	if _, err := strconv.ParseUint(f[1], 10, 32); err != nil {
		conn.Close()
		return nil, fmt.Errorf("%w %.40q", errBadAck, line)
	}
	if !stop() {
		conn.Close()
		return nil, ctx.Err()
	}
	return conn, nil
}

// FindProcesses implements vmm.Backend: the live processes whose command
// line has --api-sock runtimeRoot/ID/fc.sock.
func (b *Backend) FindProcesses(runtimeRoot string) []vmm.Process {
	root := filepath.Clean(runtimeRoot)
	entries, _ := os.ReadDir(b.proc.Root)
	var out []vmm.Process
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join(b.proc.Root, e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		id, ok := matchCmdline(cmd, root)
		if !ok {
			continue
		}
		if st, err := b.proc.Stat(pid); err != nil || st.Gone() {
			continue
		}
		out = append(out, vmm.Process{PID: pid, ID: id})
	}
	return out
}

// matchCmdline reports the runtime dir name of a NUL-separated command
// line with `--api-sock root/ID/fc.sock`.
func matchCmdline(cmd []byte, root string) (string, bool) {
	args := strings.Split(strings.TrimRight(string(cmd), "\x00"), "\x00")
	for i, a := range args {
		var sock string
		switch {
		case a == "--api-sock" && i+1 < len(args):
			sock = args[i+1]
		case strings.HasPrefix(a, "--api-sock="):
			sock = strings.TrimPrefix(a, "--api-sock=")
		default:
			continue
		}
		if filepath.Base(sock) != APISocketName {
			return "", false
		}
		dir := filepath.Dir(filepath.Clean(sock))
		if filepath.Dir(dir) != root {
			return "", false
		}
		return filepath.Base(dir), true
	}
	return "", false
}

// Firecracker's log lines ExitReason looks for.
var (
	panicRE    = regexp.MustCompile(`panicked at (.*)`)
	exitCodeRE = regexp.MustCompile(`exit_code=([1-9]\d*)`)
	exitOKRE   = regexp.MustCompile(`(?i)exiting successfully|Vmm is stopping`)
	sysEventRE = regexp.MustCompile(`(?i)KVM_SYSTEM_EVENT: type: (\d+)|KVM_EXIT_SHUTDOWN`)
	elfRE      = regexp.MustCompile(`(?i)Invalid Elf magic number|InvalidElfMagicNumber`)
	errorRE    = regexp.MustCompile(`(?:Error|error|ERROR)[:\]] *(.+)`)
)

// ExitReason implements vmm.Backend: a one-line reason from the tail of
// the VMM log ("" when no line says). A panic wins; then an exit with an
// error code (with the last error line before it); then a clean exit (the
// guest powered off or rebooted: Firecracker exits on either); then any
// error line.
func (b *Backend) ExitReason(tail []byte) string {
	if len(tail) > 8192 {
		tail = tail[len(tail)-8192:]
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(tail))
	sc.Buffer(make([]byte, 0, 4096), 8192)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" && !strings.Contains(l, " banger: ") {
			lines = append(lines, l)
		}
	}
	find := func(re *regexp.Regexp, before int) ([]string, int) {
		for i := before - 1; i >= 0; i-- {
			if m := re.FindStringSubmatch(lines[i]); m != nil {
				return m, i
			}
		}
		return nil, -1
	}
	out := func(r string) string { return bound(sanitize(r), 200) }
	n := len(lines)
	if m, _ := find(panicRE, n); m != nil {
		return out("firecracker panicked at " + m[1])
	}
	if _, i := find(elfRE, n); i >= 0 {
		return out("the kernel is not an ELF vmlinux (firecracker boots ELF only)")
	}
	if m, i := find(exitCodeRE, n); m != nil {
		if e, _ := find(errorRE, i); e != nil {
			return out("firecracker exited with code " + m[1] + ": " + e[1])
		}
		return out("firecracker exited with code " + m[1])
	}
	if _, i := find(exitOKRE, n); i >= 0 {
		if m, _ := find(sysEventRE, n); m != nil && m[1] != "" {
			return out("the guest shut down or rebooted (KVM system event " + m[1] + ")")
		}
		return out("the guest powered off or rebooted")
	}
	if m, _ := find(errorRE, n); m != nil {
		return out("firecracker: " + m[1])
	}
	return ""
}

// sanitize keeps printable characters only (log lines are untrusted).
func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
}

// logTail returns "; vmm log: <last bytes of the log from offset>" or "".
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
	if start < 0 || start > fi.Size() {
		return ""
	}
	b := make([]byte, fi.Size()-start)
	n, _ := f.ReadAt(b, start)
	s := strings.TrimSpace(sanitizeLines(string(b[:n])))
	if s == "" {
		return " (vmm log " + path + " is empty)"
	}
	return "; vmm log: " + s
}

func sanitizeLines(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\n' {
			return ' '
		}
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
}
