// Package vmm is banger's hypervisor interface. A Backend starts, observes
// and stops virtual machine monitor processes; it knows nothing of the
// store, names or locks (that is internal/vm's job).
//
// Rules every backend follows (and the conformance suite in vmmtest checks):
//   - The VMM process is started detached (own session and process group)
//     and is never tied to a context: Start's ctx bounds only the wait for
//     the process to come up. It survives the daemon's exit or crash.
//   - Everything needed to find the process again after a daemon restart is
//     in Handle, which the caller persists. State is derived from the world
//     (pid + process start time + control socket), never from memory.
//   - The guest agent is reached through DialAgent; the backend chooses the
//     transport (virtio-serial chardev socket for QEMU here, hybrid vsock for
//     Firecracker).
//   - Warm starts are optional: a backend that implements Snapshotter saves
//     a running VM (a template) and starts clones of it (Spec.Restore);
//     internal/warm keeps the templates. A clone is the same process
//     kind as a cold-booted VM once Start returns (same Handle, Status,
//     Kill, DialAgent).
package vmm

import (
	"context"
	"errors"
	"net"
)

// Disk is one block device given to the guest.
type Disk struct {
	Path     string
	Format   string // "raw" or "qcow2"
	ReadOnly bool
}

// NIC is one network interface backed by an existing host tap. An empty
// Tap gives the guest the NIC with no host side (a warm-start template's
// NIC slot: its clones get their own tap at restore).
type NIC struct {
	Tap string
	MAC string
}

// Spec is everything a backend needs to start one VM.
type Spec struct {
	ID        string // short, unique; used in process titles and file names
	VCPUs     int
	MemoryMiB int
	Kernel    string // ELF vmlinux (preferred) or bzImage
	Initrd    string // optional
	// KernelArgs are appended after the backend's own (console, root, ...).
	KernelArgs []string
	Root       Disk   // becomes /dev/vda
	Disks      []Disk // /dev/vdb, ...
	NICs       []NIC
	// RuntimeDir is where the backend puts sockets; it exists and is empty.
	RuntimeDir string
	ConsoleLog string // guest serial console output
	VMMLog     string // the VMM process's own stdout/stderr
	// Restore, when set, starts the VM from a snapshot instead of booting
	// (backends implementing Snapshotter only). The spec then describes
	// the clone: its own ID, runtime dir, logs, root disk (a copy-on-write
	// layer over the snapshotted VM's frozen root), disks and taps; the
	// machine shape and the number and order of disks and NICs must be
	// those of the snapshotted VM (ErrSnapshotMismatch otherwise). The
	// kernel and initrd are not re-read by the guest.
	Restore *Snapshot
	// SnapshotDir, when set, starts a VM that Snapshotter.Snapshot can
	// later save into this (existing, empty) directory: a warm-start
	// template. A backend may keep files there while the VM runs (QEMU:
	// the guest RAM).
	SnapshotDir string
}

// Snapshot names the files of a saved VM (warm-start template). They are
// only read by restores, never written.
type Snapshot struct {
	Dir string // backend-specific files live here
}

// Snapshotter is implemented by backends that can save a running VM and
// start clones of it (Spec.Restore).
//
// A template's life: Start(spec with SnapshotDir = D) boots it cold; the
// caller waits for its agent and then closes every agent connection (the
// guest agent must be idle, waiting for a host); Snapshot(h, D) saves the
// VM into D and ends its process. From then on D and the template's root
// disk are read-only: each clone is Start(spec with Restore = {D}) with
// its own root overlay backed by the template's root disk. Start returns
// once the clone runs; the guest agent answers on a fresh DialAgent
// connection, and the clone is a copy of the template (same RNG state,
// clock, hostname, MAC) until the caller gives it an identity.
type Snapshotter interface {
	// Snapshot saves the VM h, started with Spec.SnapshotDir = dir, into
	// dir and ends its process (whatever the outcome, once the VM has
	// been found to be such a template; a call on any other VM fails
	// and leaves it alone). On error dir holds nothing usable.
	Snapshot(ctx context.Context, h Handle, dir string) error
	// SnapshotIdentity names what a snapshot taken here depends on (the
	// VMM program's version and build, the accelerator): a snapshot is
	// only restored by a backend with the same identity.
	SnapshotIdentity(ctx context.Context) (string, error)
}

// ErrSnapshotMismatch is returned by Start when Spec.Restore names a
// snapshot that this spec or backend cannot restore (other shape,
// device set, VMM, or missing files). The caller boots cold instead.
var ErrSnapshotMismatch = errors.New("snapshot does not match")

// Handle is what must be persisted to find a running VM again.
type Handle struct {
	Backend       string `json:"backend"`
	PID           int    `json:"pid"`
	StartTime     uint64 `json:"start_time"` // /proc/PID/stat field 22 (clock ticks since boot)
	BootID        string `json:"boot_id"`    // /proc/sys/kernel/random/boot_id when started
	ControlSocket string `json:"control_socket"`
	AgentSocket   string `json:"agent_socket"`
	Accel         string `json:"accel"` // "kvm" or "tcg" (qemu); informational
}

// State is the derived state of a VMM process.
type State string

const (
	StateRunning State = "running" // process alive and control socket answers
	StateExited  State = "exited"  // process gone (or pid reused by another)
	StateUnknown State = "unknown" // process alive but control socket does not answer
)

// Availability says whether a backend can run here, and why (not).
type Availability struct {
	OK     bool
	Reason string
	Accel  string // what would be used, e.g. "kvm", "tcg"
}

// Backend is one hypervisor implementation.
type Backend interface {
	Name() string
	// Available probes the host without side effects.
	Available(ctx context.Context) Availability
	// Start launches a VMM for spec and returns once its control socket
	// answers (not once the guest has booted). On error nothing is left
	// running and the runtime dir holds no sockets.
	Start(ctx context.Context, spec Spec) (Handle, error)
	// Status derives the process state from the world.
	Status(ctx context.Context, h Handle) State
	// Kill stops the VMM at once (control-channel quit, then SIGKILL) and
	// waits until the process is gone. Killing an exited VM is not an error.
	Kill(ctx context.Context, h Handle) error
	// WaitExit blocks until the process is gone or ctx ends.
	WaitExit(ctx context.Context, h Handle) error
	// DialAgent connects to the guest agent's transport. Only one
	// connection at a time is supported; callers multiplex over it.
	DialAgent(ctx context.Context, h Handle) (net.Conn, error)
	// RootFormats lists the root-disk formats Start accepts, preferred
	// first ("qcow2", "raw"). internal/disk picks the copy-on-write
	// strategy from it and from what the host offers.
	RootFormats() []string
	// FindProcesses lists live processes this backend started whose
	// Spec.RuntimeDir was under runtimeRoot (reconcile kills those no VM
	// owns). Another banger's processes (other runtime root) never match.
	FindProcesses(runtimeRoot string) []Process
	// ExitReason turns the tail of a VMM log (Spec.VMMLog) into a one-line
	// reason the VMM exited ("" when it does not know).
	ExitReason(vmmLogTail []byte) string
}

// Process is a live VMM process found on the host.
type Process struct {
	PID int
	ID  string // the name of its runtime dir: Spec.RuntimeDir was runtimeRoot/ID
}

// ErrUnsupported is returned for an operation a backend cannot do.
var ErrUnsupported = errors.New("not supported by this backend")
