package image

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/system"
)

// removeTree must detach mounts under the tree instead of deleting
// through them, and kill processes still working in it.
func TestRemoveTreeMountsAndProcesses(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	base := t.TempDir()
	outside := filepath.Join(base, "outside")
	if err := os.MkdirAll(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	precious := filepath.Join(outside, "precious")
	if err := os.WriteFile(precious, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(base, ".build-x-1")
	mnt := filepath.Join(tree, "rootfs", "dev")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	// What a bind-mounted /dev would look like.
	if err := unix.Mount(outside, mnt, "", unix.MS_BIND, ""); err != nil {
		t.Fatalf("bind mount: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(mnt, unix.MNT_DETACH) })
	pid, err := system.StartDetached(system.Detached{Argv: []string{"sleep", "300"}, Dir: filepath.Join(tree, "rootfs")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	deadline := time.Now().Add(5 * time.Second)
	for len(processesUsing(tree)) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if len(processesUsing(tree)) == 0 {
		t.Fatal("the sleep is not seen working in the tree")
	}

	if err := removeTree(tree); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(tree); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("tree still there: %v", err)
	}
	if b, err := os.ReadFile(precious); err != nil || string(b) != "keep me" {
		t.Fatalf("removeTree deleted through a mount: %q %v", b, err)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		// Killed but maybe not reaped yet: it must at least be a zombie.
		st, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
		if len(st) > 0 && !containsState(st, 'Z') {
			t.Errorf("process %d still running: %s", pid, st)
		}
	}
}

// containsState reports whether a /proc/PID/stat line has state s.
func containsState(stat []byte, s byte) bool {
	for i := len(stat) - 1; i > 0; i-- {
		if stat[i] == ')' && i+2 < len(stat) {
			return stat[i+2] == s
		}
	}
	return false
}

func TestRemoveStaleTemp(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{".build-a-1/rootfs/etc", ".import-b-2/image", "keep"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := RemoveStaleTemp(dir); err != nil {
		t.Fatal(err)
	}
	assertOnly(t, dir, "keep")
}

func TestRenameNoReplace(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	for _, d := range []string{a, b} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// rename(2) would replace the empty b.
	if err := renameNoReplace(a, b); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("err = %v, want already exists", err)
	}
	if err := renameNoReplace(a, filepath.Join(dir, "c")); err != nil {
		t.Error(err)
	}
}

func TestLockFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "l.lock")
	unlock, err := lockFile(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := lockFile(ctx, p); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("second lock: %v, want deadline exceeded", err)
	}
	unlock()
	unlock2, err := lockFile(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	unlock2()
}
