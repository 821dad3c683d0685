package vmmtest

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc/PID/stat's CPU times (100 on
// every Linux architecture banger runs on).
const clockTicks = 100

// CPUTime is the user + system CPU time pid has used.
func CPUTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("proc stat of %d: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("proc stat of %d: short", pid)
	}
	// Fields 14 (utime) and 15 (stime); f[0] is field 3.
	ut, err1 := strconv.ParseUint(f[14-3], 10, 64)
	st, err2 := strconv.ParseUint(f[15-3], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("proc stat of %d: bad times", pid)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// CPUFraction is the share of one core pid uses over d (it sleeps d).
func CPUFraction(pid int, d time.Duration) (float64, error) {
	a, err := CPUTime(pid)
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	time.Sleep(d)
	b, err := CPUTime(pid)
	if err != nil {
		return 0, err
	}
	return float64(b-a) / float64(time.Since(t0)), nil
}

// Memory is a process's resident memory, from /proc/PID/smaps_rollup.
type Memory struct {
	RSS, PSS int64 // bytes
}

// MemoryOf reads pid's RSS and PSS.
func MemoryOf(pid int) (Memory, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return Memory{}, err
	}
	defer f.Close()
	var m Memory
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) == 0 {
			continue
		}
		n, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			continue
		}
		switch k {
		case "Rss":
			m.RSS = n << 10
		case "Pss":
			m.PSS = n << 10
		}
	}
	return m, sc.Err()
}
