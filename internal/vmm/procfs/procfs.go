// Package procfs reads what the VMM backends need to know of a process
// from /proc: its state, start time and the boot it belongs to, so that a
// persisted pid is recognised as the same living process (never a reused
// pid, a zombie or a process of an earlier boot).
package procfs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/banger-sh/banger/internal/crashpoint"
)

// Stat is what banger reads from /proc/PID/stat.
type Stat struct {
	State      byte   // field 3: R, S, D, Z, ...
	PGRP       int    // field 5
	NumThreads int    // field 20
	StartTime  uint64 // field 22, clock ticks after boot
}

// Gone reports whether the process has finished exiting. A multi-threaded
// process whose main thread has exited shows state Z while its other
// threads still run (and hold its files and sockets): it is gone only
// once they have exited too.
func (s Stat) Gone() bool {
	return s.State == 'X' || s.State == 'Z' && s.NumThreads <= 1
}

// ParseStat parses the contents of /proc/PID/stat. The second field (comm)
// is in parentheses and may itself contain spaces and parentheses, so the
// fields are counted from the last ')'.
func ParseStat(b []byte) (Stat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || bytes.IndexByte(b, '(') < 0 {
		return Stat{}, fmt.Errorf("proc stat: no command name in %.80q", b)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3, so field n is f[n-3].
	if len(f) < 20 {
		return Stat{}, fmt.Errorf("proc stat: %d fields after the command name, want at least 20", len(f))
	}
	if len(f[0]) != 1 {
		return Stat{}, fmt.Errorf("proc stat: bad state %q", f[0])
	}
	pgrp, err := strconv.Atoi(f[5-3])
	if err != nil {
		return Stat{}, fmt.Errorf("proc stat: pgrp: %w", err)
	}
	threads, err := strconv.Atoi(f[20-3])
	if err != nil {
		return Stat{}, fmt.Errorf("proc stat: num_threads: %w", err)
	}
	st, err := strconv.ParseUint(f[22-3], 10, 64)
	if err != nil {
		return Stat{}, fmt.Errorf("proc stat: starttime: %w", err)
	}
	return Stat{State: f[0][0], PGRP: pgrp, NumThreads: threads, StartTime: st}, nil
}

// ErrNoProcess means the pid names no process (or a zombie, which for
// banger is as good as gone).
var ErrNoProcess = errors.New("no such process")

// Proc reads process facts from a /proc tree (injectable for tests).
type Proc struct{ Root string }

// Stat reads /proc/PID/stat.
func (p Proc) Stat(pid int) (Stat, error) {
	if pid <= 0 {
		return Stat{}, ErrNoProcess
	}
	b, err := os.ReadFile(filepath.Join(p.Root, strconv.Itoa(pid), "stat"))
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
		return Stat{}, ErrNoProcess
	}
	if err != nil {
		return Stat{}, err
	}
	return ParseStat(b)
}

// BootID is the current boot's id (a test playing a reboot may set
// another, see crashpoint.BootID).
func (p Proc) BootID() (string, error) {
	if id := crashpoint.BootID(); id != "" && p.Root == "/proc" { // a test playing a host reboot
		return id, nil
	}
	b, err := os.ReadFile(filepath.Join(p.Root, "sys", "kernel", "random", "boot_id"))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// Alive reports whether pid is the same living process that was started
// at startTime during boot bootID. A pid reused by another process, a
// process that has finished exiting (zombie), or a process from an earlier
// boot is not alive.
func (p Proc) Alive(pid int, startTime uint64, bootID string) (Stat, bool) {
	if id, err := p.BootID(); err != nil || id != bootID {
		return Stat{}, false
	}
	st, err := p.Stat(pid)
	if err != nil || st.StartTime != startTime || st.Gone() {
		return st, false
	}
	return st, true
}
