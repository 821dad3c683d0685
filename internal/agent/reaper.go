package agent

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// Reaper starts processes and reports how they ended.
//
// The agent as PID 1 inherits every orphan in the guest and must reap them
// all, yet the exit status of the programs it runs itself must reach their
// exec sessions. InitReaper does both with one wait4(-1) loop; ChildWaiter
// waits for each process by pid and is for agents that are not PID 1 (and
// for tests, which share their process with other children).
type Reaper interface {
	// Start calls start (which must start exactly one process) and returns
	// its pid and a channel that receives its wait status once.
	Start(start func() (*os.Process, error)) (pid int, exit <-chan syscall.WaitStatus, err error)
}

// ChildWaiter waits for each started process individually.
type ChildWaiter struct{}

// Start implements Reaper.
func (ChildWaiter) Start(start func() (*os.Process, error)) (int, <-chan syscall.WaitStatus, error) {
	p, err := start()
	if err != nil {
		return 0, nil, err
	}
	ch := make(chan syscall.WaitStatus, 1)
	go func() {
		ps, err := p.Wait()
		if err != nil {
			ch <- syscall.WaitStatus(0xff << 8) // exit 255: status lost
			return
		}
		ch <- ps.Sys().(syscall.WaitStatus)
	}()
	return p.Pid, ch, nil
}

// InitReaper reaps every child of the process (wait4(-1)) and delivers the
// statuses of the processes started through it. Use one per process, and
// only where no other code waits for children.
type InitReaper struct {
	mu      sync.Mutex // held while starting a process and while reaping
	waiters map[int]chan syscall.WaitStatus
	sigs    chan os.Signal
}

// NewInitReaper starts the reaping loop.
func NewInitReaper() *InitReaper {
	r := &InitReaper{waiters: map[int]chan syscall.WaitStatus{}, sigs: make(chan os.Signal, 1)}
	signal.Notify(r.sigs, syscall.SIGCHLD)
	go r.loop()
	r.sigs <- syscall.SIGCHLD // reap what exited before Notify
	return r
}

// Start implements Reaper. The lock keeps the loop from reaping the new
// process before it is registered.
func (r *InitReaper) Start(start func() (*os.Process, error)) (int, <-chan syscall.WaitStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	p, err := start()
	if err != nil {
		return 0, nil, err
	}
	pid := p.Pid // Release clears it
	if pid <= 0 {
		return 0, nil, fmt.Errorf("started process has pid %d", pid)
	}
	ch := make(chan syscall.WaitStatus, 1)
	r.waiters[pid] = ch
	p.Release() // the loop reaps it, not os.Process
	return pid, ch, nil
}

func (r *InitReaper) loop() {
	for range r.sigs {
		r.reapAll()
	}
}

func (r *InitReaper) reapAll() {
	for {
		var ws unix.WaitStatus
		r.mu.Lock()
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		if err == nil && pid > 0 {
			if ch, ok := r.waiters[pid]; ok {
				delete(r.waiters, pid)
				ch <- syscall.WaitStatus(ws)
			}
		}
		r.mu.Unlock()
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || pid <= 0 {
			return
		}
	}
}

// exitStatus converts a wait status to the wire form.
func exitStatus(ws syscall.WaitStatus) ExitStatus {
	switch {
	case ws.Exited():
		return ExitStatus{Code: ws.ExitStatus()}
	case ws.Signaled():
		return ExitStatus{Code: 128 + int(ws.Signal()), Signal: int(ws.Signal())}
	default:
		return ExitStatus{Code: 255}
	}
}
