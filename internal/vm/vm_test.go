package vm

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/banger-sh/banger/internal/vmm"
)

func TestExitReason(t *testing.T) {
	dir := t.TempDir()
	con, vmmLog := filepath.Join(dir, "console.log"), filepath.Join(dir, "vmm.log")
	boot1 := "[    0.100000] Linux version 6.1\n[    2.000000] reboot: Power down\n"
	for _, tc := range []struct {
		name      string
		console   string
		vmm       string
		conOff    int64
		want      string
		wantEmpty bool
	}{
		{"clean power-off", boot1, "", -1, "", true},
		{"panic", "[    0.1] x\n[    1.5] Kernel panic - not syncing: Attempted to kill init!\n", "", -1, "guest kernel panic: Kernel panic - not syncing: Attempted to kill init!", false},
		{"oom", "[    0.1] x\n[    9.0] Out of memory: Killed process 42\n", "", -1, "guest ran out of memory", false},
		{"killed after an earlier clean boot", boot1 + "[    0.100000] Linux version 6.1\n[    1.000000] booted\n", "", -1, "VMM exited unexpectedly (killed?)", false},
		{"killed, offset past the old boot", boot1 + "[    0.1] again\n", "", int64(len(boot1)), "VMM exited unexpectedly (killed?)", false},
		{"vmm error", "[    0.1] x\n", "vmm: terminating on signal 15\n", -1, "VMM exited: vmm: terminating on signal 15", false},
		{"vmm log says nothing", "[    0.1] x\n", "\n", -1, "VMM exited unexpectedly (killed?)", false},
	} {
		os.WriteFile(con, []byte(tc.console), 0o644)
		os.WriteFile(vmmLog, []byte(tc.vmm), 0o644)
		got := exitReason(lineBackend{}, con, vmmLog, tc.conOff, -1)
		if tc.wantEmpty && got != "" || !tc.wantEmpty && got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestLastBoot(t *testing.T) {
	log := "[    0.1] a\n[    5.0] b\n[    0.2] c\n[    3.0] d\nno timestamp\n"
	if got := string(lastBoot([]byte(log))); got != "[    0.2] c\n[    3.0] d\nno timestamp\n" {
		t.Fatalf("lastBoot = %q", got)
	}
}

func TestValidName(t *testing.T) {
	for _, ok := range []string{"dev", "a", "vm-1", "x1y2", strings.Repeat("a", 63)} {
		if !ValidName(ok) {
			t.Errorf("%q rejected", ok)
		}
	}
	for _, bad := range []string{"", "Dev", "-a", "a-", "a_b", "a.b", strings.Repeat("a", 64), "../x"} {
		if ValidName(bad) {
			t.Errorf("%q accepted", bad)
		}
	}
}

// copyDisk writes a work disk into an existing (held open) slot file: same
// inode, same bytes, holes left as holes; or into a new sparse file.
func TestCopyDisk(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "slot")
	const size = 64 << 20
	if err := os.WriteFile(dst, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(dst, size); err != nil { // sparse, as a spare's slot
		t.Fatal(err)
	}
	held, err := os.Open(dst) // as the spare's VMM holds it
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(size)
	chunks := map[int64]string{0: "superblock", 1 << 20: "middle", size - 4096: "last block"}
	for off, s := range chunks {
		f.WriteAt([]byte(s), off)
	}
	f.Close()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if err := copyDisk(in, size, dst, false); err != nil {
		t.Fatal(err)
	}
	for off, s := range chunks {
		b := make([]byte, len(s)+1)
		if _, err := held.ReadAt(b, off); err != nil {
			t.Fatal(err)
		}
		if string(b[:len(s)]) != s || b[len(s)] != 0 {
			t.Errorf("at %d: %q", off, b)
		}
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dst, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != size || st.Blocks*512 > 1<<20 {
		t.Errorf("slot is %d bytes, %d allocated: holes not kept", st.Size, st.Blocks*512)
	}
	if err := copyDisk(in, size, filepath.Join(dir, "missing"), false); err == nil {
		t.Error("copyDisk into a missing slot succeeded")
	}
	// A new disk: created sparse, the same data; never over a file.
	made := filepath.Join(dir, "made")
	if err := copyDisk(in, size, made, true); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(made, &st); err != nil || st.Size != size || st.Blocks*512 > 1<<20 {
		t.Errorf("new disk: %d bytes, %d allocated (%v)", st.Size, st.Blocks*512, err)
	}
	if b := make([]byte, 6); func() bool { g, _ := os.Open(made); defer g.Close(); g.ReadAt(b, 1<<20); return string(b) != "middle" }() {
		t.Errorf("new disk at 1 MiB: %q", b)
	}
	if err := copyDisk(in, size, made, true); err == nil {
		t.Error("copyDisk over an existing disk succeeded")
	}
}

// lineBackend's ExitReason is the VMM log's last line (the backends' own
// parsing is tested in their packages).
type lineBackend struct{ vmm.Backend }

func (lineBackend) ExitReason(tail []byte) string {
	lines := strings.Split(strings.TrimSpace(string(tail)), "\n")
	return lines[len(lines)-1]
}
