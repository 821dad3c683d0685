package qemu

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-sh/banger/internal/vmm"
)

// TestFindProcesses uses a fake /proc: only processes whose command line
// names a socket under this banger's runtime root are found, with their
// VM id.
func TestFindProcesses(t *testing.T) {
	proc := t.TempDir()
	write := func(pid, cmdline string) {
		os.MkdirAll(filepath.Join(proc, pid), 0o755)
		os.WriteFile(filepath.Join(proc, pid, "cmdline"), []byte(strings.ReplaceAll(cmdline, " ", "\x00")), 0o644)
	}
	write("100", "qemu-system-x86_64 -chardev socket,path=/home/a/run/vm/abc123/qmp.sock")
	write("101", "qemu-system-x86_64 -chardev socket,path=/home/b/run/vm/zzz/qmp.sock") // another banger
	write("102", "bash")
	write("103", "qemu-system-x86_64 -chardev socket,path=/home/a/run/vm/") // no id
	write("self", "x")
	// A disk beside the runtime dirs comes first on the command line.
	write("104", "qemu-system-x86_64 -drive id=root,file=/home/a/run/vm/root.qcow2,format=qcow2 -qmp unix:/home/a/run/vm/def456/qmp.sock,server=on")
	got := findProcesses(proc, "/home/a/run/vm/")
	if len(got) != 2 || got[0] != (vmm.Process{PID: 100, ID: "abc123"}) || got[1] != (vmm.Process{PID: 104, ID: "def456"}) {
		t.Fatalf("findProcesses = %+v", got)
	}
}

func TestExitReason(t *testing.T) {
	b := New()
	for _, tc := range []struct{ log, want string }{
		{"2026-11-25 banger: starting qemu -name x\nqemu: terminating on signal 15\n", "qemu: terminating on signal 15"},
		{"old: boom\n2026 banger: starting qemu -name x\n2026 banger: starting qemu -name y\nqemu-system-x86_64: -drive x: Could not open\nsecond line\n", "qemu-system-x86_64: -drive x: Could not open"},
		{"2026-11-25 banger: starting qemu -name x\n", ""},
		{"2026-11-25 banger: starting qemu -name x", ""},
		{"", ""},
		{"no start line in the tail\n", "no start line in the tail"},
	} {
		if got := b.ExitReason([]byte(tc.log)); got != tc.want {
			t.Errorf("ExitReason(%q) = %q, want %q", tc.log, got, tc.want)
		}
	}
	if f := b.RootFormats(); len(f) != 2 || f[0] != "qcow2" || f[1] != "raw" {
		t.Errorf("RootFormats = %v", f)
	}
}
