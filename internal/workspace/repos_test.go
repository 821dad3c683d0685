package workspace

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// roundTrip ships r, checks the guest's status against the host's, edits
// a file in the guest and brings it back as a branch.
func roundTrip(t *testing.T, r string, o DiskOptions) *DiskInfo {
	t.Helper()
	ctx := tctx(t)
	set, err := List(ctx, r, ListOptions{IncludeUntracked: true})
	if err != nil {
		t.Fatal(err)
	}
	if o.Dest == "" {
		o.Dest = filepath.Join(t.TempDir(), "work.ext4")
	}
	o.KeepStaging = true
	info, err := BuildDisk(ctx, r, set, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(filepath.Dir(info.Staging)) })
	if got, want := status(t, info.Staging), status(t, r); got != want {
		t.Fatalf("guest status\n%q\nhost\n%q", got, want)
	}
	g := filepath.Join(t.TempDir(), "guest")
	copyTree(t, info.Staging, g)
	write(t, g, "from-guest.txt", "hello from the guest\n", 0o644)
	p, _ := runExport(t, g, 0)
	if len(p.Changes) != 1 || p.Changes[0].Path != "from-guest.txt" {
		t.Fatalf("changes: %s", p.Summary())
	}
	c, err := Branch(ctx, r, p, "guest", info.Base)
	if err != nil {
		t.Fatal(err)
	}
	if got := git(t, r, "show", c+":from-guest.txt"); got != "hello from the guest\n" {
		t.Fatalf("branch content %q", got)
	}
	return info
}

func TestSHA256Repo(t *testing.T) {
	r := filepath.Join(t.TempDir(), "repo")
	os.Mkdir(r, 0o755)
	git(t, r, "init", "-q", "--object-format=sha256")
	write(t, r, "a.txt", "a\n", 0o644)
	git(t, r, "add", "-A")
	git(t, r, "commit", "-q", "-m", "sha256")
	write(t, r, "a.txt", "a2\n", 0o644)
	info := roundTrip(t, r, DiskOptions{})
	if info.ObjectFormat != "sha256" || len(info.Base.Head) != 64 {
		t.Fatalf("info %+v", info.Info)
	}
}

func TestConflictedHostRepo(t *testing.T) {
	r := newRepo(t)
	write(t, r, "f.txt", "base\n", 0o644)
	write(t, r, "g.txt", "g\n", 0o644)
	git(t, r, "add", "-A")
	git(t, r, "commit", "-q", "-m", "base")
	git(t, r, "checkout", "-q", "-b", "other")
	write(t, r, "f.txt", "other\n", 0o644)
	git(t, r, "commit", "-q", "-am", "other")
	git(t, r, "checkout", "-q", "main")
	write(t, r, "f.txt", "main\n", 0o644)
	git(t, r, "commit", "-q", "-am", "main")
	gitMayFail(t, r, "merge", "-q", "other")
	if !strings.Contains(status(t, r), "UU f.txt") {
		t.Fatalf("no conflict: %q", status(t, r))
	}
	roundTrip(t, r, DiskOptions{})
}

func TestLinkedWorktreeDetachedHead(t *testing.T) {
	r := newRepo(t)
	write(t, r, "a.txt", "a\n", 0o644)
	git(t, r, "add", "-A")
	git(t, r, "commit", "-q", "-m", "one")
	write(t, r, "a.txt", "a2\n", 0o644)
	git(t, r, "commit", "-q", "-am", "two")
	wt := filepath.Join(t.TempDir(), "wt")
	git(t, r, "worktree", "add", "-q", "--detach", wt, "HEAD~1")
	write(t, wt, "a.txt", "edited in the linked worktree\n", 0o644)
	info := roundTrip(t, wt, DiskOptions{})
	if info.Base.Branch != "" || info.Base.Head != strings.TrimSpace(git(t, r, "rev-parse", "HEAD~1")) {
		t.Fatalf("base %+v", info.Base)
	}
	if got := strings.TrimSpace(git(t, info.Staging, "rev-parse", "HEAD")); got != info.Base.Head {
		t.Fatalf("guest HEAD %s", got)
	}
}

func TestSplitIndexRepo(t *testing.T) {
	r := newRepo(t)
	git(t, r, "config", "core.splitIndex", "true")
	git(t, r, "config", "core.untrackedCache", "true")
	for i := 0; i < 30; i++ {
		write(t, r, filepathFor(i), "x\n", 0o644)
	}
	git(t, r, "add", "-A")
	git(t, r, "commit", "-q", "-m", "split")
	write(t, r, filepathFor(3), "changed\n", 0o644)
	git(t, r, "update-index", "--split-index", "--untracked-cache")
	status(t, r)
	info := roundTrip(t, r, DiskOptions{})
	if entries, _ := filepath.Glob(filepath.Join(info.Staging, ".git", "sharedindex.*")); len(entries) != 0 {
		t.Fatalf("shared index shipped: %v", entries)
	}
}

// TestCopyWhenNotLinkable stages on another filesystem (tmpfs): files are
// copied, with their mtimes, and the guest's status is still the host's.
func TestCopyWhenNotLinkable(t *testing.T) {
	const shm = "/dev/shm"
	var a, b syscall.Stat_t
	r := fixture(t)
	if syscall.Stat(shm, &a) != nil || syscall.Stat(r, &b) != nil || a.Dev == b.Dev {
		t.Skip("no other filesystem to stage on")
	}
	tmp, err := os.MkdirTemp(shm, "banger-ws-test-")
	if err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() { os.RemoveAll(tmp) })
	info := roundTrip(t, r, DiskOptions{TmpDir: tmp})
	if info.Linked != 0 || info.Copied == 0 {
		t.Fatalf("linked %d, copied %d", info.Linked, info.Copied)
	}
}

// TestSameSecondSameSizeEdit: a file edited after `git add` within the same
// second and to the same size looks clean to a guest that compares size
// and whole-second mtime only, unless it is shipped one second newer.
func TestSameSecondSameSizeEdit(t *testing.T) {
	r := newRepo(t)
	write(t, r, "f.txt", "v1\n", 0o644)
	git(t, r, "add", "-A")
	git(t, r, "commit", "-q", "-m", "v1")
	p := filepath.Join(r, "f.txt")
	t0 := time.Unix(1700000000, 100)
	write(t, r, "f.txt", "v2\n", 0o644)
	os.Chtimes(p, t0, t0)
	git(t, r, "add", "f.txt")
	// As editors save: a new file renamed over the old one (a new inode,
	// which the host's git notices and the guest's cannot).
	write(t, r, "f.txt.new", "v3\n", 0o644)
	t1 := time.Unix(1700000000, 900)
	os.Chtimes(p+".new", t1, t1)
	if err := os.Rename(p+".new", p); err != nil {
		t.Fatal(err)
	}
	if got := status(t, r); got != "MM f.txt" {
		t.Fatalf("host status %q", got)
	}
	info := roundTrip(t, r, DiskOptions{})
	if info.Copied != 1 {
		t.Errorf("copied %d, want the tied file copied", info.Copied)
	}
	fi, _ := os.Lstat(p)
	if !fi.ModTime().Equal(t1) {
		t.Errorf("the user's file mtime changed: %v", fi.ModTime())
	}
}
