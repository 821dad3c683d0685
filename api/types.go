// Package api holds the request and response types of bangerd's HTTP+JSON
// API (served on a unix socket under /v1/) and its error codes.
//
// Long operations (image build, vm create) answer with a stream of
// newline-delimited JSON Events: zero or more progress events, then exactly
// one result or error event. Exec upgrades the connection to a framed
// stdin/stdout/stderr stream (see exec.go).
package api

import (
	"os"
	"time"
)

// MaxRequestBody bounds every JSON request body the daemon reads.
const MaxRequestBody = 1 << 20

// VersionInfo answers GET /v1/version.
type VersionInfo struct {
	Version    string `json:"version"`
	Commit     string `json:"commit"`
	APIVersion string `json:"api_version"`
	GoVersion  string `json:"go_version"`
	PID        int    `json:"pid"`
}

// Health answers GET /v1/health.
type Health struct {
	Status    string    `json:"status"` // "ok"
	StartedAt time.Time `json:"started_at"`
	Uptime    string    `json:"uptime"`
	Socket    string    `json:"socket"`
	StateDir  string    `json:"state_dir"`
	Backend   string    `json:"backend"`
}

// Event is one line of a streamed response.
type Event struct {
	Progress *Progress `json:"progress,omitempty"`
	Run      *RunEvent `json:"run,omitempty"` // runs only: a step done
	Result   any       `json:"result,omitempty"`
	Error    *Error    `json:"error,omitempty"`
}

// RunEvent says a step of a run is done: "created" (the VM is ready),
// "exported" (the workspace's edits are kept: Patch), "deleted" (the VM
// is gone).
type RunEvent struct {
	Type  string    `json:"type"`
	VM    string    `json:"vm"`
	Patch *RunPatch `json:"patch,omitempty"`
}

// Progress reports a phase of a long operation, and where it can, how much
// of it is done: Done of Total Units (Total 0: unknown), and an estimate of
// the time left. Step/Steps place the phase among the operation's phases
// (image builds: 1..6). Elapsed is the time since the operation began.
type Progress struct {
	Phase      string  `json:"phase"`
	Detail     string  `json:"detail,omitempty"`
	Elapsed    string  `json:"elapsed,omitempty"`
	Step       int     `json:"step,omitempty"`
	Steps      int     `json:"steps,omitempty"`
	Done       int64   `json:"done,omitempty"`
	Total      int64   `json:"total,omitempty"`
	Unit       string  `json:"unit,omitempty"` // "bytes", "steps"
	ETASeconds float64 `json:"eta_seconds,omitempty"`
}

// CreateVMRequest is the body of POST /v1/vms (answered with a stream).
// Zero values take the configured defaults.
type CreateVMRequest struct {
	Name      string         `json:"name"`
	Image     string         `json:"image,omitempty"`
	VCPUs     int            `json:"vcpus,omitempty"`
	MemoryMiB int            `json:"memory_mib,omitempty"`
	Disk      string         `json:"disk,omitempty"` // e.g. "4G"
	Net       string         `json:"net,omitempty"`  // egress: "nat", "none" or "shared"
	Workspace *WorkspaceSpec `json:"workspace,omitempty"`
	Cold      bool           `json:"cold,omitempty"` // never restore from a warm template
}

// VM describes one VM as the world says it is.
type VM struct {
	ID          string    `json:"id"`
	Name        string    `json:"name"`
	State       string    `json:"state"` // creating, running, stopped, error, unknown, deleting
	Image       string    `json:"image"`
	ImageDigest string    `json:"image_digest,omitempty"`
	VCPUs       int       `json:"vcpus"`
	MemoryMiB   int       `json:"memory_mib"`
	DiskBytes   int64     `json:"disk_bytes"`
	DiskUsed    int64     `json:"disk_used_bytes"`
	Backend     string    `json:"backend"`
	Accel       string    `json:"accel,omitempty"`
	PID         int       `json:"pid,omitempty"`
	Boot        string    `json:"boot,omitempty"` // "cold" or "warm"
	CreatedAt   time.Time `json:"created_at"`
	StartedAt   time.Time `json:"started_at,omitempty"`
	Uptime      string    `json:"uptime,omitempty"`
	ConsoleLog  string    `json:"console_log"`
	RootDisk    string    `json:"root_disk"`
	LastError   string    `json:"last_error,omitempty"`
	// Health is why the VM's guest agent is not healthy ("" when it is,
	// or when nothing has been asked of it yet): it broke the protocol,
	// it cannot be reached, or it does not answer (vm show pings it).
	Health    string         `json:"health,omitempty"`
	Net       string         `json:"net"` // nat, none, shared, off (no NIC)
	IP        string         `json:"ip,omitempty"`
	MAC       string         `json:"mac,omitempty"`
	Tap       string         `json:"tap,omitempty"`
	Forwards  []string       `json:"forwards,omitempty"` // HOSTADDR:PORT:GUESTPORT
	Workspace *WorkspaceInfo `json:"workspace,omitempty"`
	// WorkSlot: the VM has an empty work-disk slot (/dev/vdb), where
	// workspace prepare attaches a work disk built on the host (instead
	// of unpacking the files into the root filesystem).
	WorkSlot bool `json:"work_slot,omitempty"`
}

// BuildImageRequest is the body of POST /v1/images (answered with a
// stream).
type BuildImageRequest struct {
	Name     string   `json:"name"`
	Suite    string   `json:"suite,omitempty"`
	Packages []string `json:"packages,omitempty"`
	Size     string   `json:"size,omitempty"`
	Mirror   string   `json:"mirror,omitempty"`
}

// ImportImageRequest is the body of POST /v1/images/import. Paths are on
// the daemon's host.
type ImportImageRequest struct {
	Name    string `json:"name"`
	Kernel  string `json:"kernel"`
	Initrd  string `json:"initrd,omitempty"`
	Rootfs  string `json:"rootfs"`
	Modules string `json:"modules,omitempty"`
}

// Image describes a registered image.
type Image struct {
	ID            string          `json:"id"`
	Name          string          `json:"name"`
	Dir           string          `json:"dir"`
	Digest        string          `json:"digest"`
	KernelVersion string          `json:"kernel_version"`
	Suite         string          `json:"suite,omitempty"`
	Packages      []string        `json:"packages,omitempty"`
	CreatedAt     time.Time       `json:"created_at"`
	SizeBytes     int64           `json:"size_bytes"`
	Files         map[string]File `json:"files,omitempty"`
	VMs           []string        `json:"vms,omitempty"`
	Templates     []Template      `json:"templates,omitempty"`
}

// File is one file of an image.
type File struct {
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// StopVMRequest is the optional body of POST /v1/vms/{name}/stop.
type StopVMRequest struct {
	Force   bool   `json:"force,omitempty"`
	Timeout string `json:"timeout,omitempty"` // e.g. "30s"
}

// SetVMRequest is the body of POST /v1/vms/{name}/set; zero fields are
// left alone.
type SetVMRequest struct {
	VCPUs     int    `json:"vcpus,omitempty"`
	MemoryMiB int    `json:"memory_mib,omitempty"`
	Net       string `json:"net,omitempty"` // egress, changed live: nat, none, shared
}

// SSHInfo answers POST /v1/vms/{name}/ssh: how to reach the VM's sshd,
// which the daemon has just started.
type SSHInfo struct {
	Host       string `json:"host"`
	User       string `json:"user"`
	Key        string `json:"key"`         // private key file
	KnownHosts string `json:"known_hosts"` // this VM's host key only
}

// ForwardRequest is the body of POST /v1/vms/{name}/ports.
type ForwardRequest struct {
	Spec string `json:"spec"` // [HOST_ADDR:]HOST_PORT:GUEST_PORT
}

// WorkspaceSpec asks create to attach a work disk the client built (as the
// repository's owner) with internal/workspace.BuildDisk and uploaded as an
// open file descriptor (POST /v1/uploads): the daemon never opens a path a
// client names.
type WorkspaceSpec struct {
	Upload string `json:"upload"` // token of the uploaded work disk
	// Disk is the uploaded work disk: the descriptor the client passed
	// (set by the daemon; whoever set it closes it).
	Disk *os.File `json:"-"`
	// Pack is the token of the uploaded pack of the shipped .git (the
	// base's objects): with it the daemon builds exports with host git
	// from the files the guest reports changed; without it (older
	// clients, repositories with submodules) export runs git in the guest.
	Pack         string   `json:"pack,omitempty"`
	PackFile     *os.File `json:"-"`                       // the uploaded pack's descriptor (set by the daemon)
	ObjectFormat string   `json:"object_format,omitempty"` // sha1 (default) or sha256
	Path         string   `json:"path,omitempty"`          // mount point in the guest, default /root/repo
	Repo         string   `json:"repo,omitempty"`          // host work tree
	Base         Base     `json:"base"`
}

// Base is what a workspace was shipped from: the host's HEAD commit, the
// tree of the shipped files and the guest's base commit (export diffs
// against it; --branch builds on Head and Tree).
type Base struct {
	Head   string `json:"head,omitempty"`
	Tree   string `json:"tree,omitempty"`
	Commit string `json:"commit,omitempty"`
}

// WorkspaceInfo describes a VM's workspace in vm show.
type WorkspaceInfo struct {
	Path string `json:"path"`
	Repo string `json:"repo,omitempty"`
	Base Base   `json:"base"`
	Disk bool   `json:"disk"` // on its own work disk (else unpacked into the root disk)
	// HostExport: the daemon holds the base's objects and exports with
	// host git from the files the guest's agent reports changed.
	HostExport   bool   `json:"host_export,omitempty"`
	ObjectFormat string `json:"object_format,omitempty"`
	Exported     string `json:"exported,omitempty"` // sha256 of the last exported patch
}

// ExportedRequest is the body of POST /v1/vms/{name}/workspace/exported:
// the client saved the patch with this sha256.
type ExportedRequest struct {
	SHA256 string `json:"sha256"`
}

// WorkSlotBytes is the size of the work-disk slot (/dev/vdb) every warm
// template is born with. A workspace disk of exactly this size can be
// handed to a warm clone; a bigger repository boots cold.
const WorkSlotBytes = 4 << 30

// Template is a warm-start template of an image for one machine shape.
type Template struct {
	Key       string    `json:"key"`
	VCPUs     int       `json:"vcpus"`
	MemoryMiB int       `json:"memory_mib"`
	DiskBytes int64     `json:"disk_bytes"`
	SizeBytes int64     `json:"size_bytes"` // disk space used
	Created   time.Time `json:"created"`
	InUse     bool      `json:"in_use"`
	// Spare is the state of the clone kept restored ahead of demand for
	// this template: "ready", "making" or "" (none).
	Spare string `json:"spare,omitempty"`
}

// WarmRequest is the body of POST /v1/images/{name}/warm.
type WarmRequest struct {
	VCPUs     int    `json:"vcpus,omitempty"`
	MemoryMiB int    `json:"memory_mib,omitempty"`
	Disk      string `json:"disk,omitempty"`
}

// PruneResult answers POST /v1/images/prune.
type PruneResult struct {
	Removed []string `json:"removed"` // template keys
	Bytes   int64    `json:"bytes"`   // disk space freed
}

// UploadUpgrade is the Upgrade protocol of POST /v1/uploads: after the 101
// the client sends one byte carrying an open file descriptor (SCM_RIGHTS)
// of the file to upload, and the daemon answers with one line of JSON, an
// Upload or an Error. The daemon copies the file's data from the
// descriptor into a file of its own: it never opens a path a client names.
const UploadUpgrade = "banger-upload"

// Upload answers an upload: a token that a create or run request of the
// same user names (WorkspaceSpec.Upload), valid for UploadTTL.
type Upload struct {
	Token string `json:"token,omitempty"`
	Bytes int64  `json:"bytes,omitempty"` // apparent size
	Error *Error `json:"error,omitempty"`
}

// RunUpgrade is the Upgrade protocol of POST /v1/runs (the frames of exec,
// plus FrameEvent and FrameResult).
const RunUpgrade = "banger-run"

// RunRequest is the body of POST /v1/runs: create a VM, run one command
// in it, bring its workspace edits back and (unless Keep) delete it. The
// daemon completes every step even when the client goes away: the result,
// and the patch of the workspace edits, are kept and readable afterwards.
type RunRequest struct {
	VM   CreateVMRequest `json:"vm"`
	Exec ExecRequest     `json:"exec"`
	// Keep leaves the VM running at the end (vm run without --rm).
	Keep bool `json:"keep,omitempty"`
	// Export exports the workspace's edits at the end even when Keep is
	// set (the client wants to apply them, or make a branch or a file).
	Export bool `json:"export,omitempty"`
	// TimeoutSeconds ends the command (SIGTERM, then SIGKILL 10 s later)
	// when it runs longer; 0: no limit.
	TimeoutSeconds int `json:"timeout_seconds,omitempty"`
	// Detach keeps the command running when the client goes away (by
	// default it is hung up, as ssh does, and a create is cancelled).
	Detach bool `json:"detach,omitempty"`
}

// Run states.
const (
	RunCreating    = "creating"
	RunRunning     = "running"
	RunExporting   = "exporting"
	RunDeleting    = "deleting"
	RunDone        = "done"        // the command ran; ExitCode says how it ended
	RunFailed      = "failed"      // banger failed (Error says why)
	RunCancelled   = "cancelled"   // interrupted before the command started
	RunInterrupted = "interrupted" // the daemon stopped or died mid-run; finished at its next start
)

// Run is a run's record, as stored and shown (banger run show).
type Run struct {
	ID        string    `json:"id"`
	State     string    `json:"state"`
	VM        string    `json:"vm"`
	Argv      []string  `json:"argv"`
	Repo      string    `json:"repo,omitempty"`
	Keep      bool      `json:"keep,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	EndedAt   time.Time `json:"ended_at,omitempty"`
	// ExitCode is the command's (128+N for signal N); -1 when it never
	// ran or its end is unknown.
	ExitCode  int       `json:"exit_code"`
	Signal    int       `json:"signal,omitempty"`
	TimedOut  bool      `json:"timed_out,omitempty"`
	Error     *Error    `json:"error,omitempty"`
	VMDeleted bool      `json:"vm_deleted,omitempty"`
	Patch     *RunPatch `json:"patch,omitempty"`
	// Outcome is what the client did with the patch ("applied to REPO",
	// "branch NAME at COMMIT", "written to FILE", "rescue saved in FILE").
	Outcome string `json:"outcome,omitempty"`
	// Stdout and Stderr are the last bytes of the command's output.
	Stdout string `json:"stdout_tail,omitempty"`
	Stderr string `json:"stderr_tail,omitempty"`
	// Phases are the durations of create, exec, export and delete, in
	// milliseconds.
	Phases map[string]int64 `json:"phases_ms,omitempty"`
	// Receipt says exactly what ran (banger run replay re-runs it).
	Receipt *Receipt `json:"receipt,omitempty"`
}

// Receipt is what a run ran on and with: enough to run it again and tell
// whether it did the same (banger run replay).
type Receipt struct {
	Banger      string   `json:"banger"`       // bangerd's version
	Agent       string   `json:"agent"`        // sha256 of the guest agent
	VMM         string   `json:"vmm"`          // backend, accelerator and version
	Image       string   `json:"image"`        // name
	ImageDigest string   `json:"image_digest"` // sha256 of the image's files
	VCPUs       int      `json:"vcpus"`
	MemoryMiB   int      `json:"memory_mib"`
	DiskBytes   int64    `json:"disk_bytes"`
	Boot        string   `json:"boot"` // cold or warm
	Net         string   `json:"net"`
	Argv        []string `json:"argv"`
	EnvKeys     []string `json:"env_keys,omitempty"` // the names, never the values
	Dir         string   `json:"dir,omitempty"`
	// Base is what the workspace was shipped from: the host's HEAD, the
	// tree of the shipped files (uncommitted edits included) and the
	// commit of that tree the export diffs against.
	Base        *Base  `json:"base,omitempty"`
	ExitCode    int    `json:"exit_code"`
	PatchSHA256 string `json:"patch_sha256,omitempty"` // "" when the workspace was unchanged
}

// RunPatch is the workspace patch a run exported, kept by the daemon
// (GET /v1/runs/{id}/patch) until the run is removed.
type RunPatch struct {
	SHA256   string `json:"sha256"`
	Bytes    int64  `json:"bytes"`
	Files    int    `json:"files"`
	Diffstat string `json:"diffstat,omitempty"`
	// Refused says why the guest's output is not a patch banger applies
	// (it is kept as it came, for a person to read).
	Refused string `json:"refused,omitempty"`
}

// RunOutcomeRequest is the body of POST /v1/runs/{id}/outcome.
type RunOutcomeRequest struct {
	Outcome string `json:"outcome"`
}

// FileContent answers GET /v1/vms/{name}/file?path=P[&max=N]: a file of
// the guest (untrusted content, at most max bytes).
type FileContent struct {
	Path      string    `json:"path"`
	Type      string    `json:"type"` // file, symlink
	Mode      string    `json:"mode"` // octal permission bits, e.g. "0644"
	Size      int64     `json:"size"` // the file's size (Data may be shorter: Truncated)
	ModTime   time.Time `json:"mtime"`
	Link      string    `json:"link,omitempty"` // a symlink's target
	Data      []byte    `json:"data,omitempty"` // base64 in JSON
	Truncated bool      `json:"truncated,omitempty"`
}

// DirListing answers GET /v1/vms/{name}/dir?path=P.
type DirListing struct {
	Path      string     `json:"path"`
	Entries   []DirEntry `json:"entries"`
	Truncated bool       `json:"truncated,omitempty"`
}

// DirEntry is one entry of a directory listing.
type DirEntry struct {
	Name    string    `json:"name"`
	Type    string    `json:"type"` // file, dir, symlink, other
	Size    int64     `json:"size"`
	Mode    string    `json:"mode"` // octal permission bits
	ModTime time.Time `json:"mtime"`
}
