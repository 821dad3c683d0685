package paths

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckPrivateDir(t *testing.T) {
	base := t.TempDir()
	me := os.Geteuid()
	mk := func(name string, mode os.FileMode) string {
		p := filepath.Join(base, name)
		if err := os.Mkdir(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // past the umask
			t.Fatal(err)
		}
		return p
	}
	good := mk("good", 0o700)
	if err := CheckPrivateDir(good, me); err != nil {
		t.Fatalf("a private dir: %v", err)
	}
	if err := CheckPrivateDir(filepath.Join(base, "missing"), me); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a missing dir: %v", err)
	}
	link := filepath.Join(base, "link")
	os.Symlink(good, link)
	file := filepath.Join(base, "file")
	os.WriteFile(file, nil, 0o600)
	for _, tc := range []struct {
		dir, reason string
		uid         int
	}{
		{link, "symbolic link", me},
		{file, "not a directory", me},
		{mk("open", 0o755), "mode is 0755", me},
		{mk("shared", 0o770), "mode is 0770", me},
		{good, "belongs to uid", me + 1},
	} {
		err := CheckPrivateDir(tc.dir, tc.uid)
		var ue *UnsafeDirError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), tc.reason) || !strings.Contains(err.Error(), tc.dir) {
			t.Errorf("%s: %v, want an UnsafeDirError saying %q", tc.dir, err, tc.reason)
		}
	}
}

// TestEnsureRefusesSquattedRuntime: Ensure makes a missing runtime dir
// 0700 and refuses one that another user made, or one left open.
func TestEnsureRefusesSquattedRuntime(t *testing.T) {
	home := t.TempDir()
	l, err := Resolve(func(k string) string {
		if k == "BANGER_HOME" {
			return home
		}
		return ""
	}, os.Geteuid())
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Ensure(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(l.Runtime); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("runtime dir: %v %v", fi.Mode(), err)
	}
	if err := l.CheckRuntime(); err != nil {
		t.Fatal(err)
	}
	os.Chmod(l.Runtime, 0o777)
	if err := l.Ensure(); err == nil || !strings.Contains(err.Error(), "0777") {
		t.Fatalf("Ensure of a 0777 runtime dir: %v", err)
	}
	if err := l.CheckRuntime(); err == nil {
		t.Fatal("CheckRuntime of a 0777 runtime dir passed")
	}
	if os.Geteuid() == 0 {
		os.Chmod(l.Runtime, 0o700)
		os.Chown(l.Runtime, 65534, 65534)
		if err := l.Ensure(); err == nil || !strings.Contains(err.Error(), "belongs to uid 65534") {
			t.Fatalf("Ensure of another user's runtime dir: %v", err)
		}
	}
	// /tmp/banger-UID is what a user without XDG_RUNTIME_DIR gets.
	l2, _ := Resolve(func(k string) string {
		if k == "HOME" {
			return home
		}
		return ""
	}, 1234)
	if want := filepath.Join(os.TempDir(), "banger-1234"); l2.Runtime != want {
		t.Fatalf("runtime %s, want %s", l2.Runtime, want)
	}
}
