package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-sh/banger/internal/system"
)

// trackedMount mounts a tmpfs holding a small tree and tracks it.
func trackedMount(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (mount)")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=16m"); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	os.MkdirAll(filepath.Join(dir, "a/b"), 0o755)
	os.Mkdir(filepath.Join(dir, "empty"), 0o755)
	os.WriteFile(filepath.Join(dir, "a/b/f"), []byte("hello"), 0o644)
	os.WriteFile(filepath.Join(dir, "g"), []byte("world"), 0o644)
	os.MkdirAll(filepath.Join(dir, ".git/info"), 0o755)
	os.MkdirAll(filepath.Join(dir, ".git/refs/heads"), 0o755)
	os.WriteFile(filepath.Join(dir, ".git", ManifestFile), []byte("100644 5 0 g\x00"), 0o644)
	os.WriteFile(filepath.Join(dir, ".git/index"), []byte("DIRC"), 0o644)
	os.WriteFile(filepath.Join(dir, ".git/info/exclude"), nil, 0o644)
	if err := trackChanges(dir); err != nil {
		t.Skipf("no fanotify here: %v", err)
	}
	t.Cleanup(func() {
		trackMu.Lock()
		if tr := tracks[dir]; tr != nil {
			tr.close()
			delete(tracks, dir)
		}
		trackMu.Unlock()
	})
	return dir
}

// TestTrackChanges: reads leave a tracked mount unchanged; every kind of
// change makes it (and keeps it) changed, as does mounting it again.
func TestTrackChanges(t *testing.T) {
	d := trackedMount(t)
	os.ReadFile(filepath.Join(d, "a/b/f"))
	os.ReadDir(filepath.Join(d, "a"))
	os.Lstat(filepath.Join(d, "g"))
	if !unchangedSinceMount(d) || !unchangedSinceMount(d+"/") {
		t.Fatal("reads made the mount changed")
	}
	if unchangedSinceMount(t.TempDir()) {
		t.Error("an untracked directory reported unchanged")
	}
	changes := map[string]func(d string) error{
		"write":    func(d string) error { return appendTo(filepath.Join(d, "g")) },
		"truncate": func(d string) error { return os.Truncate(filepath.Join(d, "a/b/f"), 1) },
		"chmod":    func(d string) error { return os.Chmod(filepath.Join(d, "g"), 0o755) },
		"touch": func(d string) error {
			return os.Chtimes(filepath.Join(d, "g"), time.Unix(1, 0), time.Unix(1, 0))
		},
		"create": func(d string) error { return os.WriteFile(filepath.Join(d, "a/new"), nil, 0o644) },
		"mkdir":  func(d string) error { return os.Mkdir(filepath.Join(d, "a/b/c"), 0o755) },
		"remove": func(d string) error { return os.Remove(filepath.Join(d, "a/b/f")) },
		"rmdir":  func(d string) error { return os.Remove(filepath.Join(d, "empty")) },
		"mmap write": func(d string) error {
			f, err := os.OpenFile(filepath.Join(d, "g"), os.O_RDWR, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			b, err := unix.Mmap(int(f.Fd()), 0, 5, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
			if err != nil {
				return err
			}
			b[0] = 'W'
			return unix.Munmap(b)
		},
		"rename":  func(d string) error { return os.Rename(filepath.Join(d, "g"), filepath.Join(d, "a/g")) },
		"link":    func(d string) error { return os.Link(filepath.Join(d, "g"), filepath.Join(d, "h")) },
		"symlink": func(d string) error { return os.Symlink("g", filepath.Join(d, "s")) },
		"open for write, no write": func(d string) error {
			f, err := os.OpenFile(filepath.Join(d, "g"), os.O_RDWR, 0)
			if err != nil {
				return err
			}
			return f.Close()
		},
		"unmount, mount another": func(d string) error {
			if err := unix.Unmount(d, 0); err == nil {
				return errors.New("unmounted a tracked mount (it is held open)")
			}
			if err := unix.Unmount(d, unix.MNT_DETACH); err != nil {
				return err
			}
			return unix.Mount("tmpfs", d, "tmpfs", 0, "size=16m")
		},
	}
	expectChanged(t, changes)
}

// expectChanged makes each change on a fresh tracked mount and expects it
// reported changed, and still on a second look.
func expectChanged(t *testing.T, changes map[string]func(d string) error) {
	for name, change := range changes {
		t.Run(name, func(t *testing.T) {
			d := trackedMount(t)
			if err := change(d); err != nil {
				t.Fatal(err)
			}
			if unchangedSinceMount(d) {
				t.Fatalf("%s: reported unchanged", name)
			}
			if unchangedSinceMount(d) {
				t.Fatalf("%s: unchanged on the second look", name)
			}
		})
	}
}

// TestTrackChangesGitDir: what git status writes directly in .git (its
// index, through index.lock) leaves the mount unchanged, as the walk
// would find it; a change of the manifest, of .git/info, of .git itself or
// deeper in .git, or beside it in the work tree, still counts, also after
// ignored events.
func TestTrackChangesGitDir(t *testing.T) {
	gitStatus := func(d string) error { // what git does to update its index
		lock := filepath.Join(d, ".git/index.lock")
		if err := os.WriteFile(lock, []byte("DIRC2"), 0o644); err != nil {
			return err
		}
		return os.Rename(lock, filepath.Join(d, ".git/index"))
	}
	d := trackedMount(t)
	if trackMu.Lock(); tracks[d].gitDir == "" {
		trackMu.Unlock()
		t.Skip("this kernel's fanotify does not name events' directories (FAN_REPORT_DFID_NAME) on tmpfs: every event counts")
	}
	trackMu.Unlock()
	for range 2 {
		if err := gitStatus(d); err != nil {
			t.Fatal(err)
		}
		if !unchangedSinceMount(d) {
			t.Fatal("rewriting .git/index made the mount changed")
		}
	}
	changes := map[string]func(d string) error{
		"manifest":        func(d string) error { return appendTo(filepath.Join(d, ".git", ManifestFile)) },
		"info/exclude":    func(d string) error { return appendTo(filepath.Join(d, ".git/info/exclude")) },
		"info/attributes": func(d string) error { return os.WriteFile(filepath.Join(d, ".git/info/attributes"), nil, 0o644) },
		"rename info":     func(d string) error { return os.Rename(filepath.Join(d, ".git/info"), filepath.Join(d, ".git/info2")) },
		"deeper in .git":  func(d string) error { return os.WriteFile(filepath.Join(d, ".git/refs/heads/x"), nil, 0o644) },
		"chmod .git":      func(d string) error { return os.Chmod(filepath.Join(d, ".git"), 0o700) },
		"rename .git":     func(d string) error { return os.Rename(filepath.Join(d, ".git"), filepath.Join(d, "git")) },
		"a tree file written through a link in .git": func(d string) error {
			if err := os.Link(filepath.Join(d, "g"), filepath.Join(d, ".git/g")); err != nil {
				return err
			}
			return appendTo(filepath.Join(d, ".git/g"))
		},
		"index into the tree": func(d string) error {
			return os.Rename(filepath.Join(d, ".git/index"), filepath.Join(d, "index"))
		},
		"the tree, after the index": func(d string) error {
			if err := gitStatus(d); err != nil {
				return err
			}
			return appendTo(filepath.Join(d, "g"))
		},
	}
	expectChanged(t, changes)
}

func appendTo(p string) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := f.Write([]byte("!")); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// TestNeverMounted: a fresh mkfs.ext4 image has never been mounted; one
// whose mount count is not 0 (an earlier boot mounted it) has, and so
// has anything that is not ext4.
func TestNeverMounted(t *testing.T) {
	if _, err := system.LookPath("mkfs.ext4"); err != nil {
		t.Skip("no mkfs.ext4")
	}
	img := filepath.Join(t.TempDir(), "work.ext4")
	os.WriteFile(img, nil, 0o644)
	os.Truncate(img, 64<<20)
	ctx := context.Background()
	if _, err := system.Run(ctx, "mkfs.ext4", "-q", "-F", img); err != nil {
		t.Fatal(err)
	}
	if !NeverMounted(img) {
		t.Fatal("a fresh filesystem reported mounted before")
	}
	if _, err := system.Run(ctx, "debugfs", "-w", "-R", "ssv mnt_count 1", img); err != nil {
		t.Fatal(err)
	}
	if NeverMounted(img) {
		t.Error("mount count 1 reported never mounted")
	}
	junk := filepath.Join(t.TempDir(), "junk")
	os.WriteFile(junk, make([]byte, 4096), 0o644)
	if NeverMounted(junk) || NeverMounted(filepath.Join(t.TempDir(), "missing")) {
		t.Error("not ext4 reported never mounted")
	}
}
