package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-sh/banger/internal/system"
)

// git runs git in dir with an isolated configuration.
func git(t *testing.T, dir string, args ...string) string {
	t.Helper()
	out, err := system.RunOpts(context.Background(), system.Opts{Dir: dir, Env: []string{
		"GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1",
		"GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@t", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@t",
	}}, append([]string{"git"}, args...)...)
	if err != nil {
		t.Fatalf("git %v: %v", args, err)
	}
	return string(out)
}

// fixtureRepo makes a repository with every kind of file a workspace must
// carry: names with spaces and unicode, a symlink, an executable, a binary
// file, an ignored file and an untracked one, plus an uncommitted edit.
func fixtureRepo(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	git(t, dir, "init", "-q", "-b", "main")
	w := func(name, content string, mode os.FileMode) {
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	w("README.md", "hello\n", 0o644)
	w("dir with space/naïve file.txt", "unicode\n", 0o644)
	w("run.sh", "#!/bin/sh\necho run\n", 0o755)
	w("blob.bin", string(bytes.Repeat([]byte{0, 1, 2, 255}, 4096)), 0o644)
	w(".gitignore", "*.log\n", 0o644)
	os.Symlink("README.md", filepath.Join(dir, "link"))
	git(t, dir, "add", "-A")
	git(t, dir, "commit", "-q", "-m", "fixture")
	w("README.md", "hello, edited on the host\n", 0o644) // uncommitted
	w("build.log", "ignored\n", 0o644)
	w("notes.txt", "untracked\n", 0o644)
	return dir
}

// treeDigest describes a work tree (without .git): paths, types, exec
// bits, contents and link targets, one line each, sorted.
const treeDigestScript = `cd "$1" && find . -path ./.git -prune -o \( -type f -o -type l \) -print | LC_ALL=C sort | while IFS= read -r p; do
  if [ -L "$p" ]; then echo "l $p -> $(readlink "$p")"
  elif [ -x "$p" ]; then echo "x $p $(sha256sum < "$p" | cut -c1-64)"
  else echo "f $p $(sha256sum < "$p" | cut -c1-64)"; fi
done`

func hostTreeDigest(t *testing.T, dir string) string {
	t.Helper()
	out, err := system.Run(context.Background(), "sh", "-c", treeDigestScript, "digest", dir)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func guestTreeDigest(t *testing.T, h *harness, vm string) string {
	t.Helper()
	r, code := h.run(t, nil, "vm", "exec", vm, "--", "sh", "-c", treeDigestScript, "digest", "/root/repo")
	if code != 0 {
		t.Fatalf("guest digest: exit %d %s", code, r.stderr)
	}
	return r.stdout
}

// The guest edits: modify, add (incl. untracked-not-ignored), delete,
// rename, binary, chmod, symlink retarget, unicode names.
const guestEdits = `set -e; cd /root/repo
echo "guest line" >> README.md
printf 'new\n' > "dir with space/new ✓.txt"
rm run.sh.orig 2>/dev/null || true
git mv -f "dir with space/naïve file.txt" "dir with space/renamed.txt"
rm .gitignore
printf '\377\376binary' > blob.bin
chmod +x README.md
ln -sfn "dir with space/renamed.txt" link
mkdir -p sub && echo deep > sub/deep.txt`

func TestWorkspaceRunShowsHostStatus(t *testing.T) {
	h := env(t)
	repo := fixtureRepo(t)
	hostStatus := git(t, repo, "status", "--porcelain")
	r, code := h.run(t, nil, "vm", "run", "--rm", repo, "--", "git", "status", "--porcelain")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, r.stderr)
	}
	// Untracked files are not shipped by default: the guest sees the
	// tracked state only.
	want := strings.ReplaceAll(hostStatus, "?? notes.txt\n", "")
	if r.stdout != want {
		t.Fatalf("guest status:\n%s\nhost status (minus untracked):\n%s", r.stdout, want)
	}
	if r, _ := h.run(t, nil, "vm", "run", "--rm", repo, "--", "git", "log", "-1", "--format=%H"); strings.TrimSpace(r.stdout) != strings.TrimSpace(git(t, repo, "rev-parse", "HEAD")) {
		t.Fatalf("guest HEAD %q", r.stdout)
	}
	// With --include-untracked, notes.txt comes; build.log (ignored) never.
	r, code = h.run(t, nil, "vm", "run", "--rm", "--include-untracked", repo, "--", "sh", "-c", "ls notes.txt build.log 2>&1; git config --get remote.origin.url || echo no-remote")
	if code != 0 || !strings.Contains(r.stdout, "notes.txt") || !strings.Contains(r.stdout, "cannot access 'build.log'") || !strings.Contains(r.stdout, "no-remote") {
		t.Fatalf("--include-untracked: exit %d %q %s", code, r.stdout, r.stderr)
	}
	h.assertNoLeftovers(t, "shared")
}

func TestWorkspaceDryRunMatchesLsFiles(t *testing.T) {
	h := env(t)
	repo := fixtureRepo(t)
	out := h.must(t, "workspace", "prepare", "--dry-run", "nonexistent-vm", repo)
	for _, f := range strings.Split(strings.TrimRight(git(t, repo, "ls-files"), "\n"), "\n") {
		f = strings.Trim(f, `"`)
		if strings.Contains(f, `\`) {
			continue // git quotes non-ASCII; checked via -z below
		}
		if !strings.Contains(out, f) {
			t.Errorf("dry-run lacks %q:\n%s", f, out)
		}
	}
	if strings.Contains(out, "notes.txt") || strings.Contains(out, "build.log") {
		t.Errorf("dry-run lists untracked or ignored files:\n%s", out)
	}
	out = h.must(t, "workspace", "prepare", "--dry-run", "--include-untracked", "x", repo)
	if !strings.Contains(out, "notes.txt") || strings.Contains(out, "build.log") {
		t.Errorf("dry-run --include-untracked:\n%s", out)
	}
	if r, code := h.run(t, nil, "workspace", "prepare", "--dry-run", "x", t.TempDir()); code == 0 || !strings.Contains(r.stderr, "git") {
		t.Errorf("not a repository: exit %d %s", code, r.stderr)
	}
}

func TestWorkspaceExportModesRoundTrip(t *testing.T) {
	h := env(t)
	repo := fixtureRepo(t)
	h.must(t, "vm", "create", "ws", "--workspace", repo, "--include-untracked")
	defer h.run(t, nil, "vm", "delete", "--force", "ws")
	if r, code := h.run(t, nil, "vm", "exec", "ws", "--", "sh", "-c", guestEdits); code != 0 {
		t.Fatalf("guest edits: exit %d %s", code, r.stderr)
	}
	guest := guestTreeDigest(t, h, "ws")

	// Deleting now would lose the edits: refused, naming files.
	if r, code := h.run(t, nil, "vm", "delete", "ws"); code != 4 || !strings.Contains(r.stderr, "README.md") {
		t.Fatalf("delete with unexported edits: exit %d %s", code, r.stderr)
	}

	// 1. --out: git apply on a copy of what was shipped gives the guest's tree.
	patch := filepath.Join(t.TempDir(), "ws.patch")
	h.must(t, "workspace", "export", "ws", "--out", patch)
	copyDir := t.TempDir()
	if _, err := system.Run(context.Background(), "cp", "-a", repo+"/.", copyDir); err != nil {
		t.Fatal(err)
	}
	git(t, copyDir, "apply", patch)
	if got := stripUntracked(hostTreeDigest(t, copyDir)); got != guest {
		t.Fatalf("tree after git apply differs from the guest's:\n--- host\n%s--- guest\n%s", got, guest)
	}

	// 2. --branch: the user's tree, index and HEAD are untouched.
	before := hostTreeDigest(t, repo) + git(t, repo, "status", "--porcelain") + git(t, repo, "rev-parse", "HEAD") + git(t, repo, "symbolic-ref", "HEAD")
	h.must(t, "workspace", "export", "ws", "--branch", "from-guest")
	after := hostTreeDigest(t, repo) + git(t, repo, "status", "--porcelain") + git(t, repo, "rev-parse", "HEAD") + git(t, repo, "symbolic-ref", "HEAD")
	if before != after {
		t.Fatal("--branch touched the working tree, index or HEAD")
	}
	if parent := git(t, repo, "rev-parse", "from-guest^"); parent != git(t, repo, "rev-parse", "HEAD") {
		t.Fatalf("branch parent %s", parent)
	}
	wt := t.TempDir()
	git(t, repo, "worktree", "add", "-q", wt, "from-guest")
	if got := hostTreeDigest(t, wt); got != guest {
		t.Fatalf("branch tree differs from the guest's:\n%s\n%s", got, guest)
	}

	// 3. --apply with a conflict: the tree is left byte-identical.
	os.WriteFile(filepath.Join(repo, "README.md"), []byte("conflicting host edit\n"), 0o644)
	before = hostTreeDigest(t, repo)
	r, code := h.run(t, nil, "workspace", "export", "ws", "--apply")
	if code == 0 || !strings.Contains(r.stderr, "README.md") {
		t.Fatalf("conflicting --apply: exit %d %s", code, r.stderr)
	}
	if hostTreeDigest(t, repo) != before {
		t.Fatal("a refused --apply changed the tree")
	}
	// Without the conflict, --apply brings the guest's tree.
	git(t, repo, "checkout", "-q", "--", "README.md")
	os.WriteFile(filepath.Join(repo, "README.md"), []byte("hello, edited on the host\n"), 0o644)
	h.must(t, "workspace", "export", "ws", "--apply")
	if got := hostTreeDigest(t, repo); stripUntracked(got) != stripUntracked(guest) {
		t.Fatalf("tree after --apply differs:\n%s\n%s", got, guest)
	}
	// Exported: deleting no longer needs --force.
	h.must(t, "vm", "delete", "ws")
}

// stripUntracked drops the host-only ignored file from a digest.
func stripUntracked(d string) string {
	var keep []string
	for _, l := range strings.Split(d, "\n") {
		if !strings.Contains(l, "build.log") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

func TestWorkspaceRescueOnRm(t *testing.T) {
	h := env(t)
	repo := fixtureRepo(t)
	r, code := h.run(t, nil, "vm", "run", "--rm", "--name", "rescue", repo, "--", "sh", "-c", "echo lost? >> README.md; exit 3")
	if code != 3 {
		t.Fatalf("exit %d: %s", code, r.stderr)
	}
	matches, _ := filepath.Glob(filepath.Join(repo, ".git", "banger", "rescue-rescue-*.patch"))
	if len(matches) != 1 || !strings.Contains(r.stderr, matches[0]) || !strings.Contains(r.stderr, "README.md") {
		t.Fatalf("rescue patch %v not reported:\n%s", matches, r.stderr)
	}
	b, _ := os.ReadFile(matches[0])
	if !bytes.Contains(b, []byte("+lost?")) {
		t.Fatalf("rescue patch content:\n%s", b)
	}
	h.assertNoLeftovers(t, "shared")
}

// TestWorkspacePrepareRunningAndExportStopped: prepare into a running VM
// attaches a host-built work disk to its empty slot (the workspace then is
// the VM's: host export, mounted again on start, one per VM); an export
// of a stopped VM starts and stops it.
func TestWorkspacePrepareRunningAndExportStopped(t *testing.T) {
	h := env(t)
	repo := fixtureRepo(t)
	h.must(t, "vm", "create", "wsp")
	defer h.run(t, nil, "vm", "delete", "--force", "wsp")
	if v := vmInfo(t, h, "wsp"); !v.WorkSlot || v.Workspace != nil {
		t.Fatalf("a new VM without a workspace: work_slot %v, workspace %+v", v.WorkSlot, v.Workspace)
	}
	if out := h.must(t, "workspace", "prepare", "wsp", repo); !strings.Contains(out, "(work disk)") {
		t.Fatalf("prepare did not attach a work disk: %q", out)
	}
	if v := vmInfo(t, h, "wsp"); v.WorkSlot || v.Workspace == nil || !v.Workspace.Disk || !v.Workspace.HostExport {
		t.Fatalf("after prepare: work_slot %v, workspace %+v", v.WorkSlot, v.Workspace)
	}
	want := strings.ReplaceAll(git(t, repo, "status", "--porcelain"), "?? notes.txt\n", "")
	status := func(when, dir string) {
		t.Helper()
		r, code := h.run(t, nil, "vm", "exec", "--cwd", dir, "wsp", "--", "git", "status", "--porcelain")
		if code != 0 || r.stdout != want {
			t.Fatalf("status %s: exit %d %q want %q %s", when, code, r.stdout, want, r.stderr)
		}
	}
	status("after prepare", "/root/repo")
	// One workspace per VM: a second prepare is refused, at any path.
	if r, code := h.run(t, nil, "workspace", "prepare", "wsp", repo, "--path", "/root/other"); code == 0 || !strings.Contains(r.stderr, "already has a workspace") {
		t.Fatalf("second prepare: exit %d %s", code, r.stderr)
	}
	h.must(t, "vm", "exec", "--cwd", "/root/repo", "wsp", "--", "sh", "-c", "echo stopped-export > new.txt; sync")
	h.must(t, "vm", "stop", "wsp")
	out := h.must(t, "workspace", "export", "wsp")
	if !strings.Contains(out, "+stopped-export") {
		t.Fatalf("export from a stopped VM:\n%s", out)
	}
	if v := vmInfo(t, h, "wsp"); v.State != "stopped" {
		t.Fatalf("after exporting a stopped VM it is %s", v.State)
	}
	h.must(t, "vm", "start", "wsp")
	if out := h.must(t, "vm", "exec", "wsp", "--", "cat", "/root/repo/new.txt"); out != "stopped-export\n" {
		t.Fatalf("the prepared work disk after a restart: %q", out)
	}

	// --unpack: tar into the root filesystem; then a work disk can still
	// replace that workspace (the slot is empty).
	h.must(t, "vm", "create", "wsu")
	defer h.run(t, nil, "vm", "delete", "--force", "wsu")
	if out := h.must(t, "workspace", "prepare", "--unpack", "wsu", repo); strings.Contains(out, "work disk") {
		t.Fatalf("--unpack: %q", out)
	}
	if v := vmInfo(t, h, "wsu"); !v.WorkSlot || v.Workspace == nil || v.Workspace.Disk {
		t.Fatalf("after prepare --unpack: work_slot %v, workspace %+v", v.WorkSlot, v.Workspace)
	}
	r, code := h.run(t, nil, "vm", "exec", "--cwd", "/root/repo", "wsu", "--", "git", "status", "--porcelain")
	if code != 0 || r.stdout != want {
		t.Fatalf("status after prepare --unpack: exit %d %q want %q %s", code, r.stdout, want, r.stderr)
	}
	h.must(t, "workspace", "prepare", "wsu", repo, "--path", "/root/disk")
	r, code = h.run(t, nil, "vm", "exec", "--cwd", "/root/disk", "wsu", "--", "sh", "-c", "git status --porcelain && echo edit >> README.md")
	if code != 0 || r.stdout != want {
		t.Fatalf("status of the disk after an unpacked prepare: exit %d %q want %q %s", code, r.stdout, want, r.stderr)
	}
	if out := h.must(t, "workspace", "export", "wsu"); !strings.Contains(out, "+edit") {
		t.Fatalf("export of the disk workspace:\n%s", out)
	}
}

var _ = fmt.Sprint
var _ = sha256.New
