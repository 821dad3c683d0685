package firecracker

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// procStat is what banger reads from /proc/PID/stat.
type procStat struct {
	State      byte   // field 3: R, S, D, Z, ...
	PGRP       int    // field 5
	NumThreads int    // field 20
	StartTime  uint64 // field 22, clock ticks after boot
}

// gone reports whether the process has finished exiting. A multi-threaded
// process whose main thread has exited shows state Z while its other
// threads still run (and hold its files and sockets): it is gone only
// once they have exited too.
func (s procStat) gone() bool {
	return s.State == 'X' || s.State == 'Z' && s.NumThreads <= 1
}

// parseStat parses the contents of /proc/PID/stat. The second field (comm)
// is in parentheses and may itself contain spaces and parentheses, so the
// fields are counted from the last ')'.
func parseStat(b []byte) (procStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || bytes.IndexByte(b, '(') < 0 {
		return procStat{}, fmt.Errorf("proc stat: no command name in %.80q", b)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3, so field n is f[n-3].
	if len(f) < 20 {
		return procStat{}, fmt.Errorf("proc stat: %d fields after the command name, want at least 20", len(f))
	}
	if len(f[0]) != 1 {
		return procStat{}, fmt.Errorf("proc stat: bad state %q", f[0])
	}
	pgrp, err := strconv.Atoi(f[5-3])
	if err != nil {
		return procStat{}, fmt.Errorf("proc stat: pgrp: %w", err)
	}
	threads, err := strconv.Atoi(f[20-3])
	if err != nil {
		return procStat{}, fmt.Errorf("proc stat: num_threads: %w", err)
	}
	st, err := strconv.ParseUint(f[22-3], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("proc stat: starttime: %w", err)
	}
	return procStat{State: f[0][0], PGRP: pgrp, NumThreads: threads, StartTime: st}, nil
}

// errNoProcess means the pid names no process (or a zombie, which for
// banger is as good as gone).
var errNoProcess = errors.New("no such process")

// proc reads process facts from a /proc tree (injectable for tests).
type proc struct{ root string }

func (p proc) stat(pid int) (procStat, error) {
	if pid <= 0 {
		return procStat{}, errNoProcess
	}
	b, err := os.ReadFile(filepath.Join(p.root, strconv.Itoa(pid), "stat"))
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
		return procStat{}, errNoProcess
	}
	if err != nil {
		return procStat{}, err
	}
	return parseStat(b)
}

func (p proc) bootID() (string, error) {
	b, err := os.ReadFile(filepath.Join(p.root, "sys", "kernel", "random", "boot_id"))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// alive reports whether pid is the same living process that was started
// at startTime during boot bootID. A pid reused by another process, a
// process that has finished exiting (zombie), or a process from an earlier
// boot is not alive.
func (p proc) alive(pid int, startTime uint64, bootID string) (procStat, bool) {
	if id, err := p.bootID(); err != nil || id != bootID {
		return procStat{}, false
	}
	st, err := p.stat(pid)
	if err != nil || st.StartTime != startTime || st.gone() {
		return st, false
	}
	return st, true
}
