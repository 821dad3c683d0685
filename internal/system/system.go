// Package system is the only package in banger that runs external programs.
//
// Every call passes an argv list (never a shell string), runs with LC_ALL=C,
// and every failure carries the argv, the exit code and the tail of stderr,
// so that an error read in a log says exactly what ran and why it failed.
// A test (policy_test.go at the module root) pins that no other package
// imports os/exec.
package system

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// maxStderr bounds how much of a program's stderr an error carries.
const maxStderr = 4096

// Error is returned when a program cannot be started or exits non-zero.
type Error struct {
	Argv     []string
	ExitCode int // -1 when the program did not run or was killed by a signal
	Stderr   string
	Err      error
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s", strings.Join(quoteArgv(e.Argv), " "))
	if e.ExitCode >= 0 {
		fmt.Fprintf(&b, ": exit code %d", e.ExitCode)
	} else if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	if s := strings.TrimSpace(e.Stderr); s != "" {
		fmt.Fprintf(&b, ": %s", s)
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

func quoteArgv(argv []string) []string {
	out := make([]string, len(argv))
	for i, a := range argv {
		if a == "" || strings.ContainsAny(a, " \t\n'\"\\$`") {
			out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		} else {
			out[i] = a
		}
	}
	return out
}

// ExitCode extracts the exit code from an error returned by this package,
// or -1 when there is none.
func ExitCode(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.ExitCode
	}
	return -1
}

// IsNotFound reports whether err means the program is not installed.
func IsNotFound(err error) bool {
	return errors.Is(err, exec.ErrNotFound)
}

// Opts tunes one invocation.
type Opts struct {
	Dir    string
	Env    []string  // added to the inherited environment (after LC_ALL=C)
	Stdin  io.Reader // nil: /dev/null
	Stdout io.Writer // nil: captured and returned by Run
	Stderr io.Writer // nil: captured (bounded) into the error
	// Nice, if > 0, is the process's nice value (set as it starts; threads
	// it makes inherit it): work nobody waits for yields the CPU to VMs.
	Nice int
}

// Run runs argv[0] with the rest as arguments and returns its stdout.
func Run(ctx context.Context, argv ...string) ([]byte, error) {
	return RunOpts(ctx, Opts{}, argv...)
}

// RunOpts is Run with options.
func RunOpts(ctx context.Context, o Opts, argv ...string) ([]byte, error) {
	if len(argv) == 0 {
		return nil, errors.New("system: empty argv")
	}
	path, err := resolve(argv[0])
	if err != nil {
		return nil, wrap(argv, err, "")
	}
	cmd := exec.CommandContext(ctx, path, argv[1:]...)
	cmd.Dir = o.Dir
	cmd.Env = append(append(os.Environ(), "LC_ALL=C"), o.Env...)
	cmd.Stdin = o.Stdin
	var stdout bytes.Buffer
	if o.Stdout != nil {
		cmd.Stdout = o.Stdout
	} else {
		cmd.Stdout = &stdout
	}
	stderr := &tailBuffer{max: maxStderr}
	if o.Stderr != nil {
		cmd.Stderr = io.MultiWriter(o.Stderr, stderr)
	} else {
		cmd.Stderr = stderr
	}
	err = cmd.Start()
	if err == nil {
		if o.Nice > 0 {
			unix.Setpriority(unix.PRIO_PROCESS, cmd.Process.Pid, o.Nice)
		}
		err = cmd.Wait()
	}
	if err != nil {
		return stdout.Bytes(), wrap(argv, err, stderr.String())
	}
	return stdout.Bytes(), nil
}

func wrap(argv []string, err error, stderr string) error {
	e := &Error{Argv: argv, ExitCode: -1, Stderr: stderr, Err: err}
	var xe *exec.ExitError
	if errors.As(err, &xe) {
		if ws, ok := xe.Sys().(syscall.WaitStatus); ok && ws.Exited() {
			e.ExitCode = ws.ExitStatus()
		}
	}
	return e
}

// LookPath reports the absolute path of a registered program (PATH, then
// the sbin directories), or an error naming it and its package.
func LookPath(name string) (string, error) {
	return resolve(name)
}

// Detached describes a long-lived process that must outlive the caller.
type Detached struct {
	Argv   []string
	Dir    string
	Env    []string
	Stdout *os.File // nil: /dev/null
	Stderr *os.File // nil: /dev/null
	// ExtraFiles are passed as fds 3, 4, ...
	ExtraFiles []*os.File
}

// StartDetached starts a process in its own session (and so its own process
// group), not tied to any context, and returns its pid. The caller is not
// expected to Wait for it; ReleaseDetached reaps it if it is our child.
func StartDetached(d Detached) (int, error) {
	if len(d.Argv) == 0 {
		return 0, errors.New("system: empty argv")
	}
	path, err := resolve(d.Argv[0])
	if err != nil {
		return 0, wrap(d.Argv, err, "")
	}
	cmd := exec.Command(path, d.Argv[1:]...)
	cmd.Dir = d.Dir
	cmd.Env = append(append(os.Environ(), "LC_ALL=C"), d.Env...)
	if d.Stdout != nil {
		cmd.Stdout = d.Stdout
	}
	if d.Stderr != nil {
		cmd.Stderr = d.Stderr
	}
	cmd.ExtraFiles = d.ExtraFiles
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, wrap(d.Argv, err, "")
	}
	pid := cmd.Process.Pid
	// Reap in the background so that a process that exits while we run
	// does not linger as a zombie; the exit status is not needed (state is
	// derived from the world: pid + start time + control socket).
	go func() { _ = cmd.Wait() }()
	return pid, nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = t.buf[len(t.buf)-t.max:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return string(t.buf) }

// Process is a started program the caller waits for (tests drive the
// banger binaries through it).
type Process struct {
	cmd  *exec.Cmd
	errb *tailBuffer
	argv []string
}

// Start starts argv with o's streams; Wait must be called.
func Start(o Opts, argv ...string) (*Process, error) {
	if len(argv) == 0 {
		return nil, errors.New("system: empty argv")
	}
	path, err := resolve(argv[0])
	if err != nil {
		return nil, wrap(argv, err, "")
	}
	cmd := exec.Command(path, argv[1:]...)
	cmd.Dir = o.Dir
	cmd.Env = append(append(os.Environ(), "LC_ALL=C"), o.Env...)
	cmd.Stdin, cmd.Stdout = o.Stdin, o.Stdout
	errb := &tailBuffer{max: maxStderr}
	if o.Stderr != nil {
		cmd.Stderr = io.MultiWriter(o.Stderr, errb)
	} else {
		cmd.Stderr = errb
	}
	if err := cmd.Start(); err != nil {
		return nil, wrap(argv, err, "")
	}
	return &Process{cmd: cmd, errb: errb, argv: argv}, nil
}

// Pid is the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Wait waits for the process; a non-zero exit is an *Error.
func (p *Process) Wait() error {
	if err := p.cmd.Wait(); err != nil {
		return wrap(p.argv, err, p.errb.String())
	}
	return nil
}

// Exec replaces the current process with argv (looked up in PATH), as a
// shell's exec does: the program's exit code becomes the caller's. It
// returns only on failure.
func Exec(argv []string, env []string) error {
	if len(argv) == 0 {
		return errors.New("system: empty argv")
	}
	path, err := resolve(argv[0])
	if err != nil {
		return wrap(argv, err, "")
	}
	return syscall.Exec(path, argv, append(os.Environ(), env...))
}
