package qemu

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/banger-sh/banger/internal/vmm"
)

// Root-disk formats (the names QEMU's -drive format= takes).
const (
	formatQCOW2 = "qcow2"
	formatRaw   = "raw"
)

// RootFormats implements vmm.Backend: QEMU reads qcow2 overlays (the
// cheapest copy-on-write root) and raw files.
func (b *Backend) RootFormats() []string { return []string{formatQCOW2, formatRaw} }

// FindProcesses implements vmm.Backend: processes whose command line
// references a socket under runtimeRoot/<id>/ (QEMU's -qmp and -chardev
// arguments name Spec.RuntimeDir). Another banger's VMs, with other
// directories, are never matched; nor is this process.
func (b *Backend) FindProcesses(runtimeRoot string) []vmm.Process {
	return findProcesses(b.proc.Root, runtimeRoot)
}

func findProcesses(procRoot, runtimeRoot string) []vmm.Process {
	ents, err := os.ReadDir(procRoot)
	if err != nil {
		return nil
	}
	prefix := []byte(strings.TrimSuffix(runtimeRoot, "/") + "/")
	var out []vmm.Process
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(procRoot, e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		if id, ok := runtimeID(b, prefix); ok {
			out = append(out, vmm.Process{PID: pid, ID: id})
		}
	}
	return out
}

// runtimeID finds, in a NUL-separated command line, a path
// prefix<id>/<file> (a socket in a runtime dir) and returns id. Every
// occurrence of prefix is tried: another argument may name a file under
// prefix that is not in a runtime dir (a disk beside it, in tests).
func runtimeID(cmdline, prefix []byte) (string, bool) {
	for _, arg := range bytes.Split(cmdline, []byte{0}) {
		for rest := arg; ; {
			i := bytes.Index(rest, prefix)
			if i < 0 {
				break
			}
			rest = rest[i+len(prefix):]
			j := bytes.IndexByte(rest, '/')
			if j > 0 && validID(rest[:j]) {
				return string(rest[:j]), true
			}
		}
	}
	return "", false
}

// validID: a runtime dir's name is a VM id (hex) or a template build's
// (tpl-hex): letters, digits, '-', '_' and '.', never ',' or '='.
func validID(b []byte) bool {
	for _, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return len(b) > 0 && string(b) != "." && string(b) != ".."
}

// ExitReason implements vmm.Backend: QEMU's own output follows a
// "banger: starting ARGV" line per start (Start writes it); that line is
// not a reason, the first line after the last one is.
func (b *Backend) ExitReason(tail []byte) string {
	vl := string(tail)
	if i := strings.LastIndex(vl, " banger: starting "); i >= 0 {
		vl = vl[i:]
		if j := strings.IndexByte(vl, '\n'); j >= 0 {
			vl = vl[j+1:]
		} else {
			vl = ""
		}
	}
	vl = strings.TrimSpace(vl)
	if i := strings.IndexByte(vl, '\n'); i >= 0 {
		vl = vl[:i]
	}
	return strings.TrimSpace(vl)
}
