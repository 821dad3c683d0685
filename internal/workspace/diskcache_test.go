package workspace

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-sh/banger/internal/disk"
	"github.com/banger-sh/banger/internal/system"
)

// TestDiskCache: a tree shipped again unchanged reuses its work disk (the
// same bytes, no build); any change to what the disk is made of — a file
// rewritten in place with its old size and mtime, a commit, a new file —
// builds a new one, and a racy tree is not recorded.
func TestDiskCache(t *testing.T) {
	ctx := tctx(t)
	r := newRepo(t)
	write(t, r, "a.txt", "alpha\n", 0o644)
	write(t, r, "dir/b.txt", "bravo\n", 0o644)
	write(t, r, "run.sh", "#!/bin/sh\necho run\n", 0o755)
	git(t, r, "add", "-A")
	git(t, r, "commit", "-q", "-m", "one")
	old := time.Now().Add(-time.Minute)
	age := func(names ...string) {
		for _, n := range names {
			if err := os.Chtimes(filepath.Join(r, n), old, old); err != nil {
				t.Fatal(err)
			}
		}
	}
	age("a.txt", "dir/b.txt", "run.sh")
	cache := t.TempDir()
	recorded := make(chan error, 8)
	cacheRecorded = func(err error) { recorded <- err }
	t.Cleanup(func() { cacheRecorded = func(error) {} })
	waitRecord := func() error {
		t.Helper()
		select {
		case err := <-recorded:
			return err
		case <-time.After(30 * time.Second):
			t.Fatal("the build was never recorded or refused")
			return nil
		}
	}

	type shipped struct {
		names []string // the files uploaded
		sums  []string
		disk  string // a copy of the uploaded disk
		base  string
	}
	ship := func() shipped {
		t.Helper()
		set, err := List(ctx, r, ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var s shipped
		ws, err := ShipSet(ctx, set, ShipOptions{TmpDir: t.TempDir(), CacheDir: cache}, func(f *os.File) (string, error) {
			s.names = append(s.names, f.Name())
			// The disk is sparse (the slot's 4 GiB): copy and hash its data.
			st, err := f.Stat()
			if err != nil {
				return "", err
			}
			cp := filepath.Join(t.TempDir(), "upload")
			out, err := os.Create(cp)
			if err != nil {
				return "", err
			}
			defer out.Close()
			if err := out.Truncate(st.Size()); err != nil {
				return "", err
			}
			if err := disk.CopyData(f, out, st.Size()); err != nil {
				return "", err
			}
			h := sha256.New()
			err = disk.DataExtents(f, st.Size(), func(off, end int64) error {
				fmt.Fprintf(h, "%d-%d:", off, end)
				_, err := io.Copy(h, io.NewSectionReader(f, off, end-off))
				return err
			})
			if err != nil {
				return "", err
			}
			s.sums = append(s.sums, fmt.Sprintf("%x", h.Sum(nil)))
			if s.disk == "" {
				s.disk = cp
			}
			return fmt.Sprintf("tok%d", len(s.names)), nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if ws.Upload != "tok1" || ws.Pack != "tok2" {
			t.Fatalf("workspace %+v: want the disk and the pack uploaded", ws)
		}
		s.base = ws.Base.Commit
		return s
	}
	built := func(s shipped) bool { return strings.HasPrefix(filepath.Base(s.names[0]), "new-") }
	cat := func(s shipped, p string) string {
		t.Helper()
		out, err := system.Run(ctx, "debugfs", "-R", "cat /"+p, s.disk)
		if err != nil {
			t.Fatal(err)
		}
		return string(out)
	}

	first := ship()
	if !built(first) {
		t.Fatalf("first ship came from the cache: %v", first.names)
	}
	if err := waitRecord(); err != nil {
		t.Fatalf("an unchanged tree was not recorded: %v", err)
	}
	again := ship()
	if built(again) || !strings.HasPrefix(again.names[0], cache) {
		t.Fatalf("unchanged tree: built again (%v)", again.names)
	}
	if again.sums[0] != first.sums[0] || again.sums[1] != first.sums[1] || again.base != first.base {
		t.Fatalf("the cached disk differs from the one built")
	}
	if got := cat(again, "a.txt"); got != "alpha\n" {
		t.Fatalf("cached disk a.txt %q", got)
	}

	// Rewritten in place: same size, mtime put back. Only ctime tells.
	if err := os.WriteFile(filepath.Join(r, "a.txt"), []byte("ALPHA\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	age("a.txt")
	edited := ship()
	if !built(edited) {
		t.Fatal("a file rewritten with its old size and mtime: the cached disk was used")
	}
	if got := cat(edited, "a.txt"); got != "ALPHA\n" {
		t.Fatalf("rebuilt disk a.txt %q", got)
	}
	if err := waitRecord(); err != nil {
		t.Fatalf("not recorded: %v", err)
	}
	if s := ship(); built(s) || cat(s, "a.txt") != "ALPHA\n" {
		t.Fatalf("the edited tree's disk is not the cached one: %v", s.names)
	}

	// A commit (HEAD and the index entries move): a new disk.
	git(t, r, "commit", "-q", "-a", "-m", "two")
	committed := ship()
	if !built(committed) || committed.base == edited.base {
		t.Fatal("after a commit: the cached disk was used")
	}
	if err := waitRecord(); err != nil {
		t.Fatalf("not recorded: %v", err)
	}

	// Another branch at the same commit: HEAD names another ref.
	git(t, r, "checkout", "-q", "-b", "other")
	if s := ship(); !built(s) {
		t.Fatal("after a branch switch: the cached disk was used")
	}
	if err := waitRecord(); err != nil {
		t.Fatalf("not recorded: %v", err)
	}
	if s := ship(); built(s) {
		t.Fatal("unchanged after the branch switch: built again")
	}

	// core.excludesFile (a file only git config names) edited: a new disk.
	excl := filepath.Join(t.TempDir(), "ignore")
	os.WriteFile(excl, []byte("*.log\n"), 0o644)
	os.Chtimes(excl, old, old)
	git(t, r, "config", "core.excludesFile", excl)
	os.Chtimes(filepath.Join(r, ".git", "config"), old, old)
	ship()
	if err := waitRecord(); err != nil {
		t.Fatalf("not recorded: %v", err)
	}
	if s := ship(); built(s) {
		t.Fatal("unchanged with core.excludesFile: built again")
	}
	os.WriteFile(excl, []byte("*.log\n*.tmp\n"), 0o644)
	os.Chtimes(excl, old, old)
	if s := ship(); !built(s) {
		t.Fatal("core.excludesFile edited: the cached disk was used")
	}
	waitRecord()

	// A file written just now is racy: shipped, not recorded.
	write(t, r, "c.txt", "charlie\n", 0o644)
	git(t, r, "add", "c.txt")
	if s := ship(); !built(s) || cat(s, "c.txt") != "charlie\n" {
		t.Fatalf("new file: %v", s.names)
	}
	if err := waitRecord(); err == nil || !strings.Contains(err.Error(), "racy") {
		t.Fatalf("a racy tree: recorded (%v)", err)
	}
	if s := ship(); !built(s) {
		t.Fatal("a racy tree's disk was used")
	}
	waitRecord()
	// Nothing but the one entry (disk, pack, meta) is left.
	ents, _ := os.ReadDir(openDiskCache(cache, r).dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if len(names) > 3 {
		t.Fatalf("cache entries left: %v", names)
	}
}

// TestDrain: a process that exits while its disk is still being recorded
// (Drain times out) leaves nothing in the cache directory, and the late
// recording finds the disk abandoned; one that waits long enough leaves
// the entry.
func TestDrain(t *testing.T) {
	ctx := tctx(t)
	r := newRepo(t)
	write(t, r, "a.txt", "alpha\n", 0o644)
	git(t, r, "add", "-A")
	git(t, r, "commit", "-q", "-m", "one")
	old := time.Now().Add(-time.Minute)
	if err := os.Chtimes(filepath.Join(r, "a.txt"), old, old); err != nil {
		t.Fatal(err)
	}
	recorded := make(chan error, 8)
	release := make(chan struct{})
	cacheRecorded = func(err error) { recorded <- err }
	beforeRecord = func() { <-release }
	t.Cleanup(func() { cacheRecorded, beforeRecord = func(error) {}, func() {} })
	ship := func(cache string) {
		t.Helper()
		set, err := List(ctx, r, ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ShipSet(ctx, set, ShipOptions{TmpDir: t.TempDir(), CacheDir: cache},
			func(*os.File) (string, error) { return "tok", nil }); err != nil {
			t.Fatal(err)
		}
	}
	files := func(cache string) []string {
		var out []string
		filepath.WalkDir(cache, func(p string, d os.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				out = append(out, filepath.Base(p))
			}
			return nil
		})
		return out
	}

	cache := t.TempDir()
	ship(cache)
	if got := files(cache); len(got) == 0 {
		t.Fatal("no disk being recorded: the test cannot tell")
	}
	if Drain(100 * time.Millisecond) {
		t.Fatal("Drain: everything finished while the recording was blocked")
	}
	if got := files(cache); len(got) != 0 {
		t.Fatalf("after a Drain that timed out the cache holds %v", got)
	}
	close(release)
	if err := <-recorded; err == nil || !strings.Contains(err.Error(), "abandoned") {
		t.Fatalf("late recording: %v, want abandoned", err)
	}
	if got := files(cache); len(got) != 0 {
		t.Fatalf("after the late recording the cache holds %v", got)
	}

	cache = t.TempDir()
	ship(cache)
	if !Drain(30 * time.Second) {
		t.Fatal("Drain timed out")
	}
	if err := <-recorded; err != nil {
		t.Fatal(err)
	}
	var json int
	for _, f := range files(cache) {
		if strings.HasPrefix(f, "new-") {
			t.Fatalf("after Drain a disk is still unrecorded: %s", f)
		}
		if strings.HasSuffix(f, ".json") {
			json++
		}
	}
	if json != 1 {
		t.Fatalf("after Drain the cache holds %v, want one entry", files(cache))
	}
}
