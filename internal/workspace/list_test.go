package workspace

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-sh/banger/internal/errdefs"
)

// fixture makes a repo with one commit and every kind of uncommitted state.
func fixture(t *testing.T) string {
	t.Helper()
	r := newRepo(t)
	write(t, r, ".gitignore", "*.log\nbuild/\n", 0o644)
	write(t, r, "a.txt", "a\n", 0o644)
	write(t, r, "b.txt", "b\n", 0o644)
	write(t, r, "c.txt", "c\n", 0o644)
	write(t, r, "staged.txt", "staged\n", 0o644)
	write(t, r, "both.txt", "both\n", 0o644)
	write(t, r, "run.sh", "#!/bin/sh\necho hi\n", 0o755)
	write(t, r, "chmod.sh", "echo\n", 0o644)
	write(t, r, "dir/deep/x.go", "package x\n", 0o644)
	write(t, r, "with space.txt", "space\n", 0o644)
	write(t, r, "ünï cödé.txt", "unicode\n", 0o644)
	write(t, r, "new\nline.txt", "newline\n", 0o644)
	write(t, r, "glob*?[x].txt", "glob\n", 0o644)
	write(t, r, "bin.dat", "\x00\x01\x02binary\xff", 0o644)
	symlink(t, r, "a.txt", "link-to-a")
	symlink(t, r, "/etc/passwd", "link-outside")
	symlink(t, r, "dir", "link-dir")
	git(t, r, "add", "-A")
	git(t, r, "commit", "-q", "-m", "init")
	// Uncommitted state.
	write(t, r, "b.txt", "b modified\n", 0o644)           // unstaged edit
	os.Remove(filepath.Join(r, "c.txt"))                  // deleted in the work tree
	write(t, r, "staged.txt", "staged v2\n", 0o644)       // staged edit
	git(t, r, "add", "staged.txt")                        //
	write(t, r, "both.txt", "both v2\n", 0o644)           // staged ...
	git(t, r, "add", "both.txt")                          //
	write(t, r, "both.txt", "both v3\n", 0o644)           // ... and unstaged
	write(t, r, "added.txt", "added\n", 0o644)            // new, staged
	git(t, r, "add", "added.txt")                         //
	os.Chmod(filepath.Join(r, "chmod.sh"), 0o755)         // mode change
	write(t, r, "untracked.txt", "u\n", 0o644)            // untracked
	write(t, r, "sub dir/untracked ü.txt", "u2\n", 0o644) // untracked, in a new dir
	write(t, r, "debug.log", "ignored\n", 0o644)          // ignored
	write(t, r, "build/out.o", "ignored\n", 0o644)        // ignored dir
	return r
}

func TestListTrackedUntrackedIgnored(t *testing.T) {
	r := fixture(t)
	ctx := tctx(t)
	set, err := List(ctx, r, ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Tracked = git ls-files minus the files deleted in the work tree.
	var want []string
	for _, p := range lsFiles(t, r) {
		if _, err := os.Lstat(filepath.Join(r, p)); err == nil {
			want = append(want, p)
		}
	}
	if !equalStrings(paths(set), want) {
		t.Fatalf("tracked list:\n got %q\nwant %q", paths(set), want)
	}
	for _, p := range paths(set) {
		if p == "c.txt" || p == "untracked.txt" || strings.HasSuffix(p, ".log") || strings.HasPrefix(p, "build/") {
			t.Errorf("shipped %q", p)
		}
	}
	if set.Untracked != 0 {
		t.Errorf("untracked = %d", set.Untracked)
	}

	withU, err := List(ctx, filepath.Join(r, "dir", "deep"), ListOptions{IncludeUntracked: true})
	if err != nil {
		t.Fatal(err)
	}
	want = append(want, lsFiles(t, r, "--others", "--exclude-standard")...)
	got := paths(withU)
	if len(got) != len(want) || withU.Untracked != 2 {
		t.Fatalf("with untracked: got %q (untracked %d), want %q", got, withU.Untracked, want)
	}
	m := map[string]File{}
	for _, f := range withU.Files {
		m[f.Path] = f
	}
	for _, p := range want {
		if _, ok := m[p]; !ok {
			t.Errorf("missing %q", p)
		}
	}
	for _, p := range []string{"debug.log", "build/out.o"} {
		if _, ok := m[p]; ok {
			t.Errorf("ignored file %q shipped", p)
		}
	}
	// Modes, symlinks, sizes.
	if f := m["run.sh"]; f.Mode.Perm()&0o100 == 0 {
		t.Errorf("run.sh mode %v", f.Mode)
	}
	if f := m["chmod.sh"]; f.Mode.Perm()&0o100 == 0 {
		t.Errorf("chmod.sh mode %v", f.Mode)
	}
	if f := m["link-outside"]; !f.IsSymlink() || f.Link != "/etc/passwd" || f.Size != int64(len("/etc/passwd")) {
		t.Errorf("link-outside = %+v", f)
	}
	if f := m["link-dir"]; !f.IsSymlink() || f.Link != "dir" {
		t.Errorf("link-dir = %+v", f)
	}
	if f := m["b.txt"]; f.Size != int64(len("b modified\n")) {
		t.Errorf("b.txt size %d", f.Size)
	}
	if f := m["new\nline.txt"]; f.Mode&fs.ModeType != 0 {
		t.Errorf("newline name: %+v", f)
	}
	var total int64
	for _, f := range withU.Files {
		total += f.Size
	}
	if total != withU.TotalSize {
		t.Errorf("total %d, sum %d", withU.TotalSize, total)
	}
	if withU.Root != r {
		t.Errorf("root %q, want %q", withU.Root, r)
	}
}

func TestDryRun(t *testing.T) {
	r := fixture(t)
	set, err := List(tctx(t), r, ListOptions{IncludeUntracked: true})
	if err != nil {
		t.Fatal(err)
	}
	out := DryRun(set)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	// One line per file, then the total: a newline in a name is quoted.
	if len(lines) != len(set.Files)+1 {
		t.Fatalf("%d lines for %d files:\n%s", len(lines), len(set.Files), out)
	}
	for _, want := range []string{`"new\nline.txt"`, "with space.txt", "ünï cödé.txt", "link-outside -> /etc/passwd", "? 100644", " 100755 "} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(lines[len(lines)-1], "files (2 untracked)") {
		t.Errorf("total line: %q", lines[len(lines)-1])
	}
}

func TestListNotARepo(t *testing.T) {
	ctx := tctx(t)
	for _, dir := range []string{t.TempDir(), filepath.Join(t.TempDir(), "missing")} {
		_, err := List(ctx, dir, ListOptions{})
		if !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Fatalf("List(%s) = %v, want invalid argument", dir, err)
		}
		if !strings.Contains(err.Error(), dir) {
			t.Errorf("message does not name the dir: %v", err)
		}
	}
}

func TestListEmptyRepo(t *testing.T) {
	r := newRepo(t)
	ctx := tctx(t)
	set, err := List(ctx, r, ListOptions{IncludeUntracked: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Files) != 0 {
		t.Fatalf("files %v", paths(set))
	}
	info := buildKeep(t, r, set)
	if info.Base.Head != "" || info.Base.Tree == "" {
		t.Fatalf("base %+v", info.Base)
	}
	if s := status(t, info.Staging); s != status(t, r) {
		t.Fatalf("status %q vs %q", s, status(t, r))
	}

	// No commits, one staged file, one untracked.
	write(t, r, "staged.txt", "s\n", 0o644)
	git(t, r, "add", "staged.txt")
	write(t, r, "u.txt", "u\n", 0o644)
	set, err = List(ctx, r, ListOptions{IncludeUntracked: true})
	if err != nil {
		t.Fatal(err)
	}
	if !equalStrings(paths(set), []string{"staged.txt", "u.txt"}) {
		t.Fatalf("files %q", paths(set))
	}
	info = buildKeep(t, r, set)
	if got, want := status(t, info.Staging), status(t, r); got != want {
		t.Fatalf("guest status %q, host %q", got, want)
	}
	// Export from a repo without commits, and back as a branch.
	guest := filepath.Join(t.TempDir(), "guest")
	copyTree(t, info.Staging, guest)
	write(t, guest, "u.txt", "u changed\n", 0o644)
	p, _ := runExport(t, guest, 0)
	if len(p.Changes) != 1 || p.Changes[0].Path != "u.txt" {
		t.Fatalf("changes %+v", p.Changes)
	}
	commit, err := Branch(ctx, r, p, "from-vm", info.Base)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(git(t, r, "show", commit+":u.txt")); got != "u changed" {
		t.Fatalf("branch content %q", got)
	}
	if parents := strings.Fields(git(t, r, "rev-list", "--parents", "-n1", commit)); len(parents) != 1 {
		t.Fatalf("root commit has parents: %v", parents)
	}
}

func TestSubmodule(t *testing.T) {
	ctx := tctx(t)
	sub := newRepo(t)
	write(t, sub, "lib.c", "int x;\n", 0o644)
	write(t, sub, "inner/h.h", "#define X\n", 0o644)
	git(t, sub, "add", "-A")
	git(t, sub, "commit", "-q", "-m", "sub")
	r := newRepo(t)
	write(t, r, "main.c", "int main;\n", 0o644)
	git(t, r, "add", "main.c")
	git(t, r, "submodule", "add", "-q", sub, "third_party/sub")
	git(t, r, "commit", "-q", "-m", "with sub")
	set, err := List(ctx, r, ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{".gitmodules", "main.c", "third_party/sub/inner/h.h", "third_party/sub/lib.c"}
	if !equalStrings(paths(set), want) {
		t.Fatalf("files %q, want %q", paths(set), want)
	}
	if !equalStrings(set.Submodules, []string{"third_party/sub"}) {
		t.Fatalf("submodules %q", set.Submodules)
	}
	if !strings.Contains(DryRun(set), "submodule third_party/sub") {
		t.Errorf("dry run does not mention the submodule")
	}
	info := buildKeep(t, r, set)
	if s := status(t, info.Staging); s != "" {
		t.Fatalf("guest status with a submodule: %q", s)
	}
	if _, err := os.Stat(filepath.Join(info.Staging, "third_party/sub/.git")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the submodule's .git was shipped: %v", err)
	}
}

func TestListOtherOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give the repository away")
	}
	r := newRepo(t)
	write(t, r, "a.txt", "a\n", 0o644)
	if err := filepath.Walk(r, func(p string, _ fs.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, 4242, 4242)
	}); err != nil {
		t.Fatal(err)
	}
	_, err := List(tctx(t), r, ListOptions{})
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), "another user") {
		t.Fatalf("List of another user's repo: %v", err)
	}
}

// TestListNeverFollowsSymlinkedDir: a tracked directory replaced by a
// symlink to elsewhere: its tracked files are deleted (as git sees them),
// the symlink is shipped as a link, nothing outside is read.
func TestListNeverFollowsSymlinkedDir(t *testing.T) {
	r := newRepo(t)
	write(t, r, "d/x.txt", "inside\n", 0o644)
	write(t, r, "keep.txt", "k\n", 0o644)
	git(t, r, "add", "-A")
	git(t, r, "commit", "-q", "-m", "d")
	outside := t.TempDir()
	write(t, outside, "x.txt", "SECRET outside the repo\n", 0o644)
	os.RemoveAll(filepath.Join(r, "d"))
	symlink(t, r, outside, "d")
	ctx := tctx(t)
	set, err := List(ctx, r, ListOptions{IncludeUntracked: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := paths(set); !equalStrings(got, []string{"d", "keep.txt"}) {
		t.Fatalf("files %q", got)
	}
	if f := set.Files[0]; !f.IsSymlink() || f.Link != outside {
		t.Fatalf("d = %+v", f)
	}
	info := buildKeep(t, r, set)
	if got, want := status(t, info.Staging), status(t, r); got != want {
		t.Fatalf("guest status %q, host %q", got, want)
	}
}
