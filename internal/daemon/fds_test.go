package daemon

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestCloseInheritedFDs(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	os.WriteFile(p, nil, 0o600)
	inherited, err := unix.Open(p, unix.O_RDONLY, 0) // no O_CLOEXEC: as a parent passes it
	if err != nil {
		t.Fatal(err)
	}
	ours, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer ours.Close()
	CloseInheritedFDs()
	if _, err := unix.FcntlInt(uintptr(inherited), unix.F_GETFD, 0); err != unix.EBADF {
		unix.Close(inherited)
		t.Fatalf("inherited fd %d still open (%v)", inherited, err)
	}
	if _, err := ours.Stat(); err != nil {
		t.Fatalf("our own file was closed: %v", err)
	}
}
