package workspace

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/system"
)

// shipped builds a disk of the fixture (with untracked files) and returns
// the host repo, the disk info and a guest: a real copy of the staged tree,
// as the guest would see its disk.
func shipped(t *testing.T) (string, *DiskInfo, string) {
	t.Helper()
	r := fixture(t)
	set, err := List(tctx(t), r, ListOptions{IncludeUntracked: true})
	if err != nil {
		t.Fatal(err)
	}
	info := buildKeep(t, r, set)
	guest := filepath.Join(t.TempDir(), "guest")
	copyTree(t, info.Staging, guest)
	return r, info, guest
}

// editEverything makes every kind of change in the guest.
func editEverything(t *testing.T, g string) {
	t.Helper()
	laterSecond()
	write(t, g, "a.txt", "a edited in the guest\n", 0o644)                         // modify
	write(t, g, "new file ü.txt", "added in the guest\n", 0o644)                   // add, unicode + space
	write(t, g, "new\ndir/x y.txt", "added in a new dir\n", 0o644)                 // newline in a dir name
	write(t, g, "empty.txt", "", 0o644)                                            // empty file
	os.Remove(filepath.Join(g, "with space.txt"))                                  // delete
	os.Remove(filepath.Join(g, "dir/deep/x.go"))                                   // delete a whole dir
	os.Rename(filepath.Join(g, "ünï cödé.txt"), filepath.Join(g, "renamed é.txt")) // rename
	write(t, g, "bin.dat", "\x00\x01\x02binary changed\xfe\xff", 0o644)            // binary modify
	write(t, g, "new.bin", "\x00\xff\x00\xfe new binary", 0o644)                   // binary add
	os.Chmod(filepath.Join(g, "a.txt"), 0o755)                                     // chmod + modify
	os.Chmod(filepath.Join(g, "run.sh"), 0o644)                                    // chmod only
	symlink(t, g, "b.txt", "link-to-a")                                            // retarget a symlink
	symlink(t, g, "../outside", "new-link")                                        // new symlink
	os.Remove(filepath.Join(g, "glob*?[x].txt"))                                   //
	symlink(t, g, "a.txt", "glob*?[x].txt")                                        // file -> symlink
	write(t, g, "untracked.txt", "shipped untracked, edited\n", 0o644)             // edit a shipped untracked file
	write(t, g, "guest.log", "ignored in the guest too\n", 0o644)                  // ignored: not exported
	os.RemoveAll(filepath.Join(g, "sub dir"))                                      // a directory ...
	symlink(t, g, "a.txt", "sub dir")                                              // ... replaced by a symlink
	os.Remove(filepath.Join(g, "link-dir"))                                        // a symlink ...
	write(t, g, "link-dir/real.txt", "a real directory now\n", 0o644)              // ... replaced by a directory
	// A commit in the guest does not change what is exported.
	git(t, g, "add", "a.txt")
	git(t, g, "commit", "-q", "-m", "guest commit")
}

func TestExportRoundTrip(t *testing.T) {
	r, info, g := shipped(t)
	ctx := tctx(t)
	shippedState := treeState(t, info.Staging)
	editEverything(t, g)
	p, raw := runExport(t, g, 0)
	guestState := treeState(t, g)
	delete(guestState, "guest.log")

	kinds := map[string]Change{}
	for _, c := range p.Changes {
		kinds[c.Path] = c
	}
	for path, want := range map[string]ChangeKind{
		"a.txt": Modified, "new file ü.txt": Added, "new\ndir/x y.txt": Added, "empty.txt": Added,
		"with space.txt": Deleted, "dir/deep/x.go": Deleted, "renamed é.txt": Renamed,
		"bin.dat": Modified, "new.bin": Added, "run.sh": ModeChanged, "link-to-a": Modified,
		"new-link": Added, "untracked.txt": Modified,
	} {
		if c, ok := kinds[path]; !ok || c.Kind != want {
			t.Errorf("%q: %+v, want %s", path, c, want)
		}
	}
	if c := kinds["renamed é.txt"]; c.OldPath != "ünï cödé.txt" {
		t.Errorf("rename source %q", c.OldPath)
	}
	if !kinds["bin.dat"].Binary || !kinds["new.bin"].Binary || !kinds["new-link"].Symlink || !kinds["a.txt"].ModeChange {
		t.Errorf("flags: %+v", p.Changes)
	}
	if _, ok := kinds["guest.log"]; ok {
		t.Errorf("ignored file exported")
	}
	t.Logf("summary:\n%s", p.Summary())

	// 1. The patch as is, applied with git apply to a copy of what was shipped.
	fresh := filepath.Join(t.TempDir(), "fresh")
	copyTree(t, info.Staging, fresh)
	sameState(t, "fresh copy", treeState(t, fresh), shippedState)
	var buf bytes.Buffer
	if err := WritePatch(p, &buf); err != nil || !bytes.Equal(buf.Bytes(), raw) {
		t.Fatalf("WritePatch: %v", err)
	}
	os.RemoveAll(filepath.Join(fresh, ".git")) // plain git apply, outside any repository
	if _, err := system.RunOpts(ctx, system.Opts{Dir: fresh, Stdin: &buf}, "git", "apply", "-"); err != nil {
		t.Fatal(err)
	}
	sameState(t, "git apply of WritePatch vs guest", treeState(t, fresh), guestState)

	// 2. Branch: the user's tree, index, HEAD and branch are untouched.
	before := snapshot(t, r)
	commit, err := Branch(ctx, r, p, "vm/export-1", info.Base)
	if err != nil {
		t.Fatal(err)
	}
	if after := snapshot(t, r); after != before {
		t.Fatalf("Branch changed the repository:\n%s\nvs\n%s", before, after)
	}
	if got := strings.TrimSpace(git(t, r, "rev-parse", "vm/export-1")); got != commit {
		t.Errorf("branch at %s, want %s", got, commit)
	}
	if got := strings.TrimSpace(git(t, r, "rev-parse", commit+"^")); got != info.Base.Head {
		t.Errorf("parent %s, want %s", got, info.Base.Head)
	}
	out := filepath.Join(t.TempDir(), "branch")
	os.Mkdir(out, 0o755)
	if _, err := system.RunOpts(ctx, system.Opts{Dir: r}, "sh", "-c", `git archive "$1" | tar -x -C "$2"`, "sh", commit, out); err != nil {
		t.Fatal(err)
	}
	sameState(t, "branch tree vs guest", treeState(t, out), guestState)
	if _, err := Branch(ctx, r, p, "vm/export-1", info.Base); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("second Branch: %v", err)
	}
	if _, err := Branch(ctx, r, p, "bad..name", info.Base); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("bad name: %v", err)
	}

	// 3. Rescue.
	path, stat, err := SaveRescue(ctx, r, "vm one/../x", p)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(path, filepath.Join(r, ".git", "banger")+"/rescue-vm_one_.._x-") {
		t.Errorf("rescue path %s", path)
	}
	if data, _ := os.ReadFile(path); !bytes.Equal(data, raw) {
		t.Errorf("rescue content differs")
	}
	if !strings.Contains(stat, "files changed") {
		t.Errorf("diffstat %q", stat)
	}
	// Output ParsePatch refused is kept too, as it is.
	path2, err := SaveRescueStream(ctx, r, "vm1", bytes.NewReader(raw), 0)
	if err != nil || path2 == path {
		t.Fatalf("SaveRescueStream: %s %v", path2, err)
	}
	if data, _ := os.ReadFile(path2); !bytes.Equal(data, raw) {
		t.Errorf("rescue stream content differs")
	}
	if _, err := SaveRescueStream(ctx, r, "vm1", bytes.NewReader(raw), 10); err == nil {
		t.Errorf("truncated rescue: no error")
	}

	// 4. Apply on the host tree (equal to what was shipped, plus files
	// that were never shipped: ignored ones).
	if err := Apply(ctx, r, p); err != nil {
		t.Fatal(err)
	}
	host := treeState(t, r)
	for k := range host {
		if strings.HasSuffix(k, ".log") || strings.HasPrefix(k, "build/") || k == "x.host-excluded" {
			delete(host, k)
		}
	}
	sameState(t, "host after Apply vs guest", host, guestState)

	// An unchanged guest exports an empty patch.
	g2 := filepath.Join(t.TempDir(), "guest2")
	copyTree(t, info.Staging, g2)
	if p, _ := runExport(t, g2, 0); !p.Empty() {
		t.Errorf("unchanged guest exported %s", p.Summary())
	}
}

// snapshot is a text dump of everything Branch must not change.
func snapshot(t *testing.T, r string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString(git(t, r, "symbolic-ref", "HEAD"))
	b.WriteString(git(t, r, "rev-parse", "HEAD"))
	b.WriteString(git(t, r, "ls-files", "-s", "--debug"))
	st := treeState(t, r)
	b.WriteString(diffStates(st, map[string]string{}))
	return b.String()
}

func TestApplyConflictLeavesTreeUntouched(t *testing.T) {
	r, _, g := shipped(t)
	ctx := tctx(t)
	editEverything(t, g)
	p, _ := runExport(t, g, 0)
	// The user went on working on the host: a file the guest also changed,
	// and a new file where the guest adds one.
	write(t, r, "a.txt", "host edit\n", 0o644)
	write(t, r, "new.bin", "host's own\n", 0o644)
	before := treeState(t, r)
	idx, _ := os.ReadFile(filepath.Join(r, ".git", "index"))
	err := Apply(ctx, r, p)
	var ce *ConflictError
	if !errors.As(err, &ce) || !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("Apply = %v, want a conflict", err)
	}
	if !contains(ce.Files, "a.txt") || !contains(ce.Files, "new.bin") {
		t.Errorf("conflicting files %q (%v)", ce.Files, err)
	}
	t.Logf("error: %v", err)
	sameState(t, "tree after a failed Apply", treeState(t, r), before)
	if idx2, _ := os.ReadFile(filepath.Join(r, ".git", "index")); !bytes.Equal(idx, idx2) {
		t.Errorf("index changed")
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestBigBinaryFile(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	r := newRepo(t)
	data := make([]byte, 100<<20)
	x := uint64(88172645463325252)
	for i := 0; i < len(data); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		for j := 0; j < 8; j++ {
			data[i+j] = byte(x >> (8 * j))
		}
	}
	if err := os.WriteFile(filepath.Join(r, "big.bin"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	write(t, r, "small.txt", "s\n", 0o644)
	git(t, r, "add", "-A")
	git(t, r, "commit", "-q", "-m", "big")
	ctx := tctx(t)
	set, err := List(ctx, r, ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	info := buildKeep(t, r, set)
	t.Logf("100 MiB file: BuildDisk %v (stage %v, .git %v, mkfs %v), image %d MiB, linked %d",
		time.Since(t0).Round(time.Millisecond), info.StageTime.Round(time.Millisecond),
		info.GitTime.Round(time.Millisecond), info.MkfsTime.Round(time.Millisecond), info.Size>>20, info.Linked)
	if got := status(t, info.Staging); got != "" {
		t.Fatalf("guest status %q", got)
	}
	g := filepath.Join(t.TempDir(), "guest")
	copyTree(t, info.Staging, g)
	// Change a few bytes in the middle: a small binary delta comes back.
	laterSecond()
	f, err := os.OpenFile(filepath.Join(g, "big.bin"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("changed in the guest"), 50<<20)
	f.Close()
	t0 = time.Now()
	p, raw := runExport(t, g, 0)
	t.Logf("export of a 100 MiB file with 20 bytes changed: %v, patch %d bytes", time.Since(t0).Round(time.Millisecond), len(raw))
	if len(p.Changes) != 1 || !p.Changes[0].Binary {
		t.Fatalf("changes %+v", p.Changes)
	}
	if err := Apply(ctx, r, p); err != nil {
		t.Fatal(err)
	}
	sameState(t, "host after Apply vs guest", treeState(t, r), treeState(t, g))
}

// TestExportSymlinkRenameFallback: the guest moves a symlink and makes a
// directory at its old name; git pairs the two symlinks as a rename, which
// git apply refuses, so the export falls back to no rename detection.
func TestExportSymlinkRenameFallback(t *testing.T) {
	r, info, g := shipped(t)
	ctx := tctx(t)
	os.Rename(filepath.Join(g, "link-dir"), filepath.Join(g, "moved-link"))
	write(t, g, "link-dir/real.txt", "now a directory\n", 0o644)
	p, raw := runExport(t, g, 0)
	if bytes.Contains(raw, []byte("\nrename from ")) {
		t.Fatalf("patch still has a rename:\n%s", p.Summary())
	}
	if err := Apply(ctx, r, p); err != nil {
		t.Fatal(err)
	}
	host := treeState(t, r)
	for k := range host {
		if strings.HasSuffix(k, ".log") || strings.HasPrefix(k, "build/") || k == "x.host-excluded" {
			delete(host, k)
		}
	}
	sameState(t, "host after Apply vs guest", host, treeState(t, g))
	if _, err := Branch(ctx, r, p, "fallback", info.Base); err != nil {
		t.Fatal(err)
	}
}

func TestExportCommandOutsideWorkspace(t *testing.T) {
	r := newRepo(t)
	_, err := system.RunOpts(context.Background(), system.Opts{}, ExportCommand(r)...)
	if system.ExitCode(err) != 3 || !strings.Contains(err.Error(), "not a banger workspace") {
		t.Fatalf("export outside a workspace: %v", err)
	}
}

// TestHugeFile ships an untracked file of BANGER_WS_HUGE_MIB MiB (skipped
// unless set): the several-GiB case, hard-linked, never hashed twice.
func TestHugeFile(t *testing.T) {
	mibs, _ := strconv.Atoi(os.Getenv("BANGER_WS_HUGE_MIB"))
	if mibs <= 0 {
		t.Skip("set BANGER_WS_HUGE_MIB to run")
	}
	r := newRepo(t)
	write(t, r, "small.txt", "s\n", 0o644)
	git(t, r, "add", "-A")
	git(t, r, "commit", "-q", "-m", "small")
	f, err := os.Create(filepath.Join(r, "huge.img"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	for i := 0; i < mibs; i++ {
		chunk[i%len(chunk)] ^= byte(i)
		if _, err := f.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	ctx := tctx(t)
	set, err := List(ctx, r, ListOptions{IncludeUntracked: true})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	info := buildKeep(t, r, set)
	t.Logf("%d MiB untracked file: BuildDisk %v (stage %v, .git %v, mkfs %v), image %d MiB",
		mibs, time.Since(t0).Round(time.Millisecond), info.StageTime.Round(time.Millisecond),
		info.GitTime.Round(time.Millisecond), info.MkfsTime.Round(time.Millisecond), info.Size>>20)
	if got, want := status(t, info.Staging), status(t, r); got != want {
		t.Fatalf("guest status %q, host %q", got, want)
	}
	t0 = time.Now()
	p, _ := runExport(t, info.Staging, 0)
	t.Logf("export, nothing changed: %v", time.Since(t0).Round(time.Millisecond))
	if !p.Empty() {
		t.Fatalf("changes: %s", p.Summary())
	}
}
