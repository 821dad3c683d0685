package vm

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

type vmmProc struct {
	pid int
	id  string
}

// findVMMs lists processes whose command line references a socket under
// runtimeRoot/<id>/ — the VMMs this banger (this BANGER_HOME) started.
// Another banger's VMs, with other directories, are never matched.
func findVMMs(procRoot, runtimeRoot string) []vmmProc {
	ents, err := os.ReadDir(procRoot)
	if err != nil {
		return nil
	}
	prefix := []byte(strings.TrimSuffix(runtimeRoot, "/") + "/")
	var out []vmmProc
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(procRoot, e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		i := bytes.Index(b, prefix)
		if i < 0 {
			continue
		}
		rest := b[i+len(prefix):]
		j := bytes.IndexByte(rest, '/')
		if j <= 0 {
			continue
		}
		out = append(out, vmmProc{pid: pid, id: string(rest[:j])})
	}
	return out
}

// KillVMMs kills every process whose command line references a socket
// under runtimeRoot/<id>/ and returns their pids: at start-up, the VMMs of
// template builds that the daemon which ran them did not live to end.
func KillVMMs(runtimeRoot string) []int {
	var pids []int
	for _, o := range findVMMs("/proc", runtimeRoot) {
		if syscall.Kill(o.pid, syscall.SIGKILL) == nil {
			pids = append(pids, o.pid)
		}
	}
	return pids
}
