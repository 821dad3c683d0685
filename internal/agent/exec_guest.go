package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
	"golang.org/x/sys/unix"
)

const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// guestProc is a program started by an exec request.
type guestProc struct {
	pid    int
	master *os.File // the pty master of a TTY exec

	mu     sync.Mutex
	exited bool
}

// signal sends sig to the program's process group (and, for a TTY, to the
// terminal's foreground group), never after the program was reaped.
func (p *guestProc) signal(sig unix.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited {
		return nil
	}
	if p.master != nil {
		if pg, err := ptyForeground(p.master); err == nil && pg > 0 && pg != p.pid {
			unix.Kill(-pg, sig)
			if sig != unix.SIGKILL {
				return nil
			}
		}
	}
	return unix.Kill(-p.pid, sig)
}

func (p *guestProc) kill() { p.signal(unix.SIGKILL) }

func (p *guestProc) markExited() {
	p.mu.Lock()
	p.exited = true
	p.mu.Unlock()
}

func (s *session) exec(ctx context.Context, ctl *yamux.Stream, req *execStart) {
	defer ctl.Close()
	if req == nil || len(req.Argv) == 0 {
		writeFrame(ctl, reply{Error: "exec: empty argv"})
		return
	}
	streams, err := s.waitAttached(req.ID)
	if err != nil {
		writeFrame(ctl, reply{Error: err.Error()})
		return
	}
	stdinSt, stdoutSt, stderrSt := streams[fdStdin], streams[fdStdout], streams[fdStderr]
	defer stdinSt.Close()
	defer stdoutSt.Close()
	defer stderrSt.Close()

	env := execEnv(req.Env, req.TTY)
	dir := req.Dir
	if dir == "" {
		dir = "/root"
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			dir = "/"
		}
	}
	startErr := func(code int, msg string) {
		writeFrame(ctl, reply{StartError: &StartError{Argv0: req.Argv[0], Code: code, Message: msg}})
	}
	if fi, err := os.Stat(dir); err != nil {
		startErr(126, fmt.Sprintf("working directory: %v", err))
		return
	} else if !fi.IsDir() {
		startErr(126, fmt.Sprintf("working directory %s: not a directory", dir))
		return
	}
	path, code, err := lookPath(req.Argv[0], envGet(env, "PATH"), dir)
	if err != nil {
		startErr(code, err.Error())
		return
	}

	// Child ends go to the program; parent ends stay pollable so that
	// read deadlines work.
	var (
		childFiles []*os.File
		stdinW     *os.File // nil for a TTY (stdin goes to the master)
		outputs    []*os.File
		master     *os.File
		sys        = &syscall.SysProcAttr{Setsid: true}
	)
	closeChild := func() {
		for _, f := range childFiles {
			f.Close()
		}
	}
	if req.TTY {
		m, slave, err := openPTY()
		if err != nil {
			writeFrame(ctl, reply{Error: fmt.Sprintf("exec: %v", err)})
			return
		}
		master = m
		rows, cols := req.Rows, req.Cols
		if rows == 0 || cols == 0 {
			rows, cols = 24, 80
		}
		setWinsize(master, rows, cols)
		childFiles = []*os.File{slave, slave, slave}
		sys.Setctty = true
		sys.Ctty = 0
		outputs = []*os.File{master}
		stderrSt.Close()
	} else {
		inR, inW, err1 := os.Pipe()
		outR, outW, err2 := os.Pipe()
		errR, errW, err3 := os.Pipe()
		if err := errors.Join(err1, err2, err3); err != nil {
			for _, f := range []*os.File{inR, inW, outR, outW, errR, errW} {
				if f != nil {
					f.Close()
				}
			}
			writeFrame(ctl, reply{Error: fmt.Sprintf("exec: %v", err)})
			return
		}
		childFiles = []*os.File{inR, outW, errW}
		stdinW = inW
		outputs = []*os.File{outR, errR}
		// Bigger pipes mean fewer context switches, which are what
		// costs most under emulation.
		for _, f := range []*os.File{outR, inW} {
			setPipeSize(f, 1<<20)
		}
	}
	closeParent := func() {
		for _, f := range outputs {
			f.Close()
		}
		if stdinW != nil {
			stdinW.Close()
		}
	}

	pid, exitCh, err := s.opts.Reaper.Start(func() (*os.Process, error) {
		return os.StartProcess(path, req.Argv, &os.ProcAttr{Dir: dir, Env: env, Files: childFiles, Sys: sys})
	})
	closeChild()
	if err != nil {
		closeParent()
		code := 126
		if errors.Is(err, fs.ErrNotExist) {
			code = 127
		}
		startErr(code, err.Error())
		return
	}
	gp := &guestProc{pid: pid, master: master}
	s.track(gp, true)
	defer s.track(gp, false)
	// If the session ended while we started, nobody else will kill it.
	select {
	case <-s.sess.CloseChan():
		gp.kill()
	default:
	}
	writeFrame(ctl, reply{Pid: pid})

	// stdin: host -> program. EOF closes the pipe (a TTY keeps going).
	go func() {
		if stdinW != nil {
			io.Copy(stdinW, stdinSt)
			stdinW.Close()
		} else {
			io.Copy(master, stdinSt)
		}
	}()
	// Control: signals and resizes until the host closes.
	go func() {
		for {
			var c control
			if err := readFrame(ctl, maxFrame, &c); err != nil {
				return
			}
			if c.Signal > 0 && c.Signal < 65 {
				gp.signal(unix.Signal(c.Signal))
			}
			if c.Resize != nil && master != nil {
				setWinsize(master, c.Resize.Rows, c.Resize.Cols)
			}
		}
	}()
	var exited atomic.Bool
	var copies sync.WaitGroup
	dsts := []net.Conn{stdoutSt, stderrSt}
	for i, src := range outputs {
		copies.Add(1)
		go func(dst net.Conn, src *os.File) {
			defer copies.Done()
			copyOutput(dst, src, &exited, s.opts.OutputGrace)
			dst.Close()
		}(dsts[i], src)
	}

	ws := <-exitCh
	gp.markExited()
	exited.Store(true)
	for _, f := range outputs {
		f.SetReadDeadline(time.Now().Add(s.opts.OutputGrace))
	}
	copies.Wait()
	closeParent()
	st := exitStatus(ws)
	writeFrame(ctl, reply{Exit: &st})
}

// copyOutput forwards a program's output. Once the program has exited, it
// keeps going only while output keeps coming within grace.
func copyOutput(dst net.Conn, src *os.File, exited *atomic.Bool, grace time.Duration) {
	buf := make([]byte, 256<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF, EIO from a pty whose slave closed, or the grace deadline
		}
		if exited.Load() {
			src.SetReadDeadline(time.Now().Add(grace))
		}
	}
}

// execEnv is the default environment with extra entries applied on top.
func execEnv(extra []string, tty bool) []string {
	term := "dumb"
	if tty {
		term = "xterm-256color"
	}
	env := []string{
		"PATH=" + defaultPath,
		"HOME=/root",
		"USER=root",
		"LOGNAME=root",
		"SHELL=/bin/sh",
		"TERM=" + term,
	}
	for _, kv := range extra {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			continue
		}
		replaced := false
		for i, e := range env {
			if strings.HasPrefix(e, k+"=") {
				env[i], replaced = kv, true
				break
			}
		}
		if !replaced {
			env = append(env, kv)
		}
	}
	return env
}

func envGet(env []string, key string) string {
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, key+"="); ok {
			return v
		}
	}
	return ""
}

// lookPath resolves a program like a shell does, with shell exit codes for
// failures: 127 not found, 126 found but not executable.
func lookPath(file, pathEnv, dir string) (string, int, error) {
	check := func(p string) (int, error) {
		fi, err := os.Stat(p)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return 127, fmt.Errorf("%s: %w", p, ErrCommandNotFound)
			}
			return 126, err
		}
		if fi.IsDir() {
			return 126, fmt.Errorf("%s: is a directory", p)
		}
		if fi.Mode()&0o111 == 0 {
			return 126, fmt.Errorf("%s: permission denied", p)
		}
		return 0, nil
	}
	if strings.Contains(file, "/") {
		p := file
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		code, err := check(p)
		return p, code, err
	}
	var firstErr error
	firstCode := 127
	for _, d := range filepath.SplitList(pathEnv) {
		if d == "" {
			d = dir
		}
		p := filepath.Join(d, file)
		code, err := check(p)
		if err == nil {
			return p, 0, nil
		}
		if code == 126 && firstErr == nil {
			firstErr, firstCode = err, code
		}
	}
	if firstErr != nil {
		return "", firstCode, firstErr
	}
	return "", 127, fmt.Errorf("%s: %w", file, ErrCommandNotFound)
}

// openPTY opens a pseudo-terminal pair without putting the master into
// blocking mode (its reads need deadlines).
func openPTY() (master, slave *os.File, err error) {
	master, err = os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("open pty: %w", err)
	}
	rc, err := master.SyscallConn()
	if err != nil {
		master.Close()
		return nil, nil, err
	}
	var n int
	var ioErr error
	rc.Control(func(fd uintptr) {
		n, ioErr = unix.IoctlGetInt(int(fd), unix.TIOCGPTN)
		if ioErr == nil {
			ioErr = unix.IoctlSetPointerInt(int(fd), unix.TIOCSPTLCK, 0)
		}
	})
	if ioErr != nil {
		master.Close()
		return nil, nil, fmt.Errorf("open pty: %w", ioErr)
	}
	slave, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		master.Close()
		return nil, nil, fmt.Errorf("open pty slave: %w", err)
	}
	return master, slave, nil
}

func setWinsize(master *os.File, rows, cols uint16) {
	rc, err := master.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols})
	})
}

func ptyForeground(master *os.File) (int, error) {
	rc, err := master.SyscallConn()
	if err != nil {
		return 0, err
	}
	var pg int
	var ioErr error
	if err := rc.Control(func(fd uintptr) {
		pg, ioErr = unix.IoctlGetInt(int(fd), unix.TIOCGPGRP)
	}); err != nil {
		return 0, err
	}
	return pg, ioErr
}

func setPipeSize(f *os.File, n int) {
	if rc, err := f.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) { unix.FcntlInt(fd, unix.F_SETPIPE_SZ, n) })
	}
}
