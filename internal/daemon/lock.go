package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/paths"
)

// pidLock is an flock(2)-held file holding the daemon's pid. The kernel
// drops the lock when the process dies, however it dies, so a SIGKILLed
// daemon never blocks the next one.
type pidLock struct{ f *os.File }

func acquireLock(path string) (*pidLock, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			b := make([]byte, 32)
			n, _ := f.ReadAt(b, 0)
			pid := strings.TrimSpace(string(b[:n]))
			return nil, errdefs.Conflict(fmt.Sprintf("another bangerd is running (pid %s holds %s)", pid, path))
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err != nil {
		f.Close()
		return nil, err
	}
	if _, err := f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0); err != nil {
		f.Close()
		return nil, err
	}
	return &pidLock{f: f}, nil
}

func (l *pidLock) release() {
	l.f.Truncate(0)
	l.f.Close()
}

// LockHolder returns the pid recorded in the lock file if a live process
// holds the lock, or 0. A lock file in a directory that is not this
// user's own (paths.CheckPrivateDir) is nobody's: its pid could be any
// process another user wants signalled.
func LockHolder(path string) int {
	if paths.CheckPrivateDir(filepath.Dir(path), os.Geteuid()) != nil {
		return 0
	}
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err == nil {
		unix.Flock(int(f.Fd()), unix.LOCK_UN)
		return 0 // nobody holds it
	}
	b := make([]byte, 32)
	n, _ := f.ReadAt(b, 0)
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b[:n])))
	return pid
}
