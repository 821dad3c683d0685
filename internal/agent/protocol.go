// Package agent is banger's guest agent and the host<->guest protocol.
//
// # Roles
//
// The guest side (Serve, RunInit) runs inside the VM, usually as PID 1 of
// the initramfs (see init_linux.go). The host side (Dial, Client) runs in
// the daemon. The host is trusted by the guest; nothing the guest sends is
// trusted by the host: every control frame the host reads is size-bounded,
// the handshake scan and time are bounded (HandshakeTimeout), GetTar output
// is bounded by the caller's limit, and the yamux frames the guest sends are
// policed before yamux reads them: a guest that opens a stream or sends a
// ping (frames that would make yamux hold memory or start a goroutine per
// frame) ends its session (ErrProtocol; see guard.go).
//
// # Wire protocol
//
// One byte stream (a virtio-serial port or a vsock connection) carries one
// session at a time. A session starts with a line handshake that survives
// stale bytes left in the channel by a previous session (virtio-serial keeps
// buffered bytes across host reconnects):
//
//	host -> guest: "\nBANGER-HELLO <nonce>\n"   (resent until answered)
//	guest -> host: "\nBANGER-OK <nonce>\n"      (once per HELLO seen)
//	host -> guest: "\nBANGER-START <nonce>\n"
//	guest -> host: "\nBANGER-READY <nonce>\n"
//
// The nonce is 128 random bits chosen by the host for each Dial. The host
// discards everything before its OK and READY lines; the guest ignores every
// line that is not a HELLO or the START matching the last nonce it answered.
// After START/READY both directions carry yamux (guest = yamux server, host
// = yamux client). A guest in yamux mode that receives a new HELLO fails
// with a yamux protocol error, ends the session and scans for a HELLO
// again; the host's resend makes sure it finds one.
//
// Each operation is one yamux stream opened by the host. The stream starts
// with a frame: a 4-byte big-endian length and that many bytes of JSON
// (request). Replies are frames too. Exec uses four streams: a control
// stream (request, start reply, then signal/resize frames from the host and
// one exit frame from the guest) and three raw byte streams (stdin, stdout,
// stderr) tied to the control stream by an exec id. GetTar streams the tar
// as chunks (4-byte length, data; length 0 ends) followed by a result frame;
// the host closing its side of the stream stops the guest.
//
// # Exec semantics
//
//   - Programs run as root in a new session (own process group); Signal goes
//     to that group (for a TTY, to the terminal's foreground group).
//   - The environment is PATH, HOME=/root, USER, LOGNAME, SHELL=/bin/sh and
//     TERM (xterm-256color with a TTY, dumb without), then ExecRequest.Env.
//   - Stdin EOF closes the program's stdin pipe. With a TTY, stdin EOF is not
//     forwarded (the terminal stays open), as with ssh -t.
//   - A program that cannot start gives a *StartError: 127 not found, 126
//     otherwise (not executable, bad working directory).
//   - Exit status: Code is the shell's $? (128+N when killed by signal N).
//   - Output still open after the program exited (a background child holding
//     stdout) is forwarded while it keeps coming, then cut after
//     ServeOptions.OutputGrace (2 s) of silence, so Wait never hangs on it.
//   - When a session ends (host gone, daemon restart), its programs' process
//     groups get SIGKILL, like a shell losing its terminal. Programs that
//     must outlive the session detach themselves (setsid, nohup).
//   - The host's Exec ctx: cancelling it kills the program (SIGKILL), as
//     with exec.CommandContext.
package agent

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// Version is reported by Ping. Set it at build time with
// -ldflags "-X github.com/banger-sh/banger/internal/agent.Version=...".
var Version = "dev"

const (
	// maxFrame bounds every control frame either side reads.
	maxFrame = 1 << 20
	// maxReplyFrame bounds small replies (ping, configure, exit status).
	maxReplyFrame = 64 << 10
	// maxChunk bounds one GetTar data chunk.
	maxChunk = 1 << 20
	// maxInfoString bounds each string of Info as the host keeps it.
	maxInfoString = 256
)

// Operation names carried in request.Op.
const (
	opPing      = "ping"
	opConfigure = "configure"
	opExec      = "exec"
	opAttach    = "attach"
	opPutTar    = "put-tar"
	opGetTar    = "get-tar"
	opShutdown  = "shutdown"
	opWsScan    = "ws-scan"
	opGetFiles  = "get-files"
)

// Standard file descriptors of an exec, used by attach.
const (
	fdStdin  = 0
	fdStdout = 1
	fdStderr = 2
)

var (
	// ErrFrameTooLarge is returned when a peer sends a frame larger than allowed.
	ErrFrameTooLarge = errors.New("agent: frame too large")
	// ErrLimitExceeded is returned by GetTar when the guest sends more than the limit.
	ErrLimitExceeded = errors.New("agent: size limit exceeded")
	// ErrCommandNotFound is matched (errors.Is) by the StartError of an exec
	// whose program does not exist (code 127).
	ErrCommandNotFound = errors.New("command not found")
	// ErrClosed is returned when the session to the guest is gone.
	ErrClosed = errors.New("agent: session closed")
)

// Info describes a running guest.
type Info struct {
	Version       string  `json:"version"`
	Hostname      string  `json:"hostname"`
	UptimeSeconds float64 `json:"uptime_seconds"`
	Kernel        string  `json:"kernel"`
	BootID        string  `json:"boot_id"`
}

// GuestConfig is per-VM configuration applied by Configure. Zero fields are
// left alone, so fields can be added without changing callers.
type GuestConfig struct {
	// Hostname sets the kernel hostname and /etc/hostname (when writable).
	Hostname string `json:"hostname,omitempty"`
	// Time sets the guest's realtime clock.
	Time time.Time `json:"time,omitzero"`
	// RandomSeed is mixed into the kernel's pool (write to /dev/urandom),
	// then the CRNG is reseeded (RNDRESEEDCRNG): clones stop sharing RNG state.
	RandomSeed []byte `json:"random_seed,omitempty"`
	// MachineID replaces /etc/machine-id (32 lowercase hex digits).
	MachineID string `json:"machine_id,omitempty"`
	// Network brings the guest NIC up (address, route, resolv.conf).
	Network *NetConfig `json:"network,omitempty"`
	// AuthorizedKeys replaces root's ~/.ssh/authorized_keys (nil: leave it).
	AuthorizedKeys []string `json:"authorized_keys,omitempty"`
	// Mounts are mounted in order (work disks).
	Mounts []Mount `json:"mounts,omitempty"`
}

// ExitStatus is how a guest process ended.
type ExitStatus struct {
	// Code is the shell-style status: the exit code, or 128+Signal.
	Code int `json:"code"`
	// Signal is the signal that killed the process, 0 if it exited.
	Signal int `json:"signal,omitempty"`
}

// StartError is returned by Exec when the guest could not start the
// program. Code follows the shell: 127 when the program was not found,
// 126 when it was found but could not be run (permissions, bad format,
// bad working directory).
type StartError struct {
	Argv0   string
	Code    int
	Message string
}

func (e *StartError) Error() string {
	return fmt.Sprintf("exec %s: %s (exit code %d)", e.Argv0, e.Message, e.Code)
}

// Is makes errors.Is(err, ErrCommandNotFound) true for code 127.
func (e *StartError) Is(target error) bool {
	return target == ErrCommandNotFound && e.Code == 127
}

// RemoteError is an error the guest reported for an operation.
type RemoteError struct {
	Op      string
	Message string
}

func (e *RemoteError) Error() string { return fmt.Sprintf("agent %s: guest: %s", e.Op, e.Message) }

// request is the first frame of every stream the host opens.
type request struct {
	Op     string       `json:"op"`
	Config *GuestConfig `json:"config,omitempty"`
	Exec   *execStart   `json:"exec,omitempty"`
	Attach *attach      `json:"attach,omitempty"`
	Path   string       `json:"path,omitempty"`  // put-tar: dir; get-tar: path; ws-scan, get-files: workspace
	Paths  []string     `json:"paths,omitempty"` // get-files: relative to Path
	Limit  int          `json:"limit,omitempty"` // ws-scan: most change records
}

type execStart struct {
	ID   uint64   `json:"id"`
	Argv []string `json:"argv"`
	Env  []string `json:"env,omitempty"`
	Dir  string   `json:"dir,omitempty"`
	TTY  bool     `json:"tty,omitempty"`
	Rows uint16   `json:"rows,omitempty"`
	Cols uint16   `json:"cols,omitempty"`
}

type attach struct {
	ID uint64 `json:"id"`
	FD int    `json:"fd"`
}

// reply is a frame the guest sends.
type reply struct {
	Error      string      `json:"error,omitempty"`
	StartError *StartError `json:"start_error,omitempty"`
	Info       *Info       `json:"info,omitempty"`
	Pid        int         `json:"pid,omitempty"`
	Exit       *ExitStatus `json:"exit,omitempty"`
	// Steps times a Configure's steps in the guest.
	Steps []Step `json:"steps,omitempty"`
}

// Step is how long one step of a Configure took in the guest.
type Step struct {
	Name   string `json:"name"`
	Micros int64  `json:"us"`
}

// control is a frame the host sends on an exec's control stream.
type control struct {
	Signal int      `json:"signal,omitempty"`
	Resize *winsize `json:"resize,omitempty"`
}

type winsize struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// writeFrame writes v as one length-prefixed JSON frame in a single Write.
func writeFrame(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if len(b) > maxFrame {
		return fmt.Errorf("%w: %d bytes", ErrFrameTooLarge, len(b))
	}
	buf := make([]byte, 4+len(b))
	binary.BigEndian.PutUint32(buf, uint32(len(b)))
	copy(buf[4:], b)
	_, err = w.Write(buf)
	return err
}

// readFrame reads one frame of at most max bytes into v.
func readFrame(r io.Reader, max int, v any) error {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if int64(n) > int64(max) {
		return fmt.Errorf("%w: %d bytes (limit %d)", ErrFrameTooLarge, n, max)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return fmt.Errorf("read frame: %w", err)
	}
	return json.Unmarshal(b, v)
}
