package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-sh/banger/internal/workspace"
)

// guestScriptExport runs the old export (git in the guest, ExportCommand)
// and returns its patch.
func guestScriptExport(t *testing.T, h *harness, vm string) string {
	t.Helper()
	r, code := h.run(t, nil, append([]string{"vm", "exec", vm, "--"}, workspace.ExportCommand("/root/repo")...)...)
	if code != 0 {
		t.Fatalf("guest export script: exit %d %s", code, r.stderr)
	}
	return r.stdout
}

// The daemon exports with host git from the files the agent reports
// changed (issue 12 item 3); its patch has the bytes of git in the guest,
// for every kind of edit, and an unchanged workspace exports nothing. A
// conversion attribute makes it fall back to git in the guest, with the
// same result.
func TestWorkspaceHostExport(t *testing.T) {
	h := env(t)
	repo := fixtureRepo(t)
	h.must(t, "vm", "create", "hx", "--workspace", repo, "--include-untracked")
	defer h.run(t, nil, "vm", "delete", "--force", "hx")
	if v := vmInfo(t, h, "hx"); v.Workspace == nil || !v.Workspace.HostExport {
		t.Fatalf("workspace %+v: no host export", v.Workspace)
	}
	if out := h.must(t, "workspace", "export", "hx"); strings.TrimSpace(out) != "" {
		t.Fatalf("unchanged workspace exported:\n%s", out)
	}
	if r, code := h.run(t, nil, "vm", "exec", "hx", "--", "sh", "-c", guestEdits+`
echo ignored > new.log; mkdir -p nested-ignored && echo '*' > nested-ignored/.gitignore && echo x > nested-ignored/f
printf '*.o\n' > .gitignore; echo obj > x.o; echo kept > kept.txt`); code != 0 {
		t.Fatalf("guest edits: exit %d %s", code, r.stderr)
	}
	patch := filepath.Join(t.TempDir(), "hx.patch")
	h.must(t, "workspace", "export", "hx", "--out", patch)
	got, _ := os.ReadFile(patch)
	want := guestScriptExport(t, h, "hx")
	if string(got) != want {
		t.Fatalf("host export differs from git in the guest:\n--- host\n%s\n--- guest\n%s", got, want)
	}
	for _, s := range []string{"kept.txt", "sub/deep.txt", "rename to dir with space/renamed.txt"} {
		if !strings.Contains(want, s) {
			t.Errorf("the patch lacks %q", s)
		}
	}
	if log := h.daemonLogTail(); strings.Contains(log, "host export not possible") {
		t.Fatalf("the export fell back to git in the guest:%s", log)
	}

	// A conversion attribute: git in the guest, the same bytes as ever.
	h.must(t, "vm", "exec", "hx", "--", "sh", "-c", `cd /root/repo && printf '*.txt text eol=crlf\n' > .gitattributes && echo more >> kept.txt`)
	h.must(t, "workspace", "export", "hx", "--out", patch)
	got, _ = os.ReadFile(patch)
	if want := guestScriptExport(t, h, "hx"); string(got) != want {
		t.Fatalf("fallback export differs from git in the guest:\n--- host\n%s\n--- guest\n%s", got, want)
	}
	if log := h.daemonLogTail(); !strings.Contains(log, "host export not possible") {
		t.Errorf("no fallback logged:%s", log)
	}
}

// TestWorkspaceShadowIncomplete: the shadow repository (the base's
// objects for host exports) is made in the background. One the daemon
// did not finish (it stopped meanwhile: shadow.pending is left beside
// it) is never used: the export with changes is git in the guest's, the
// same bytes.
func TestWorkspaceShadowIncomplete(t *testing.T) {
	h := env(t)
	repo := fixtureRepo(t)
	h.must(t, "vm", "create", "hz", "--workspace", repo)
	defer h.run(t, nil, "vm", "delete", "--force", "hz")
	v := vmInfo(t, h, "hz")
	if v.Workspace == nil || !v.Workspace.HostExport {
		t.Fatalf("workspace %+v: no host export", v.Workspace)
	}
	h.run(t, nil, "daemon", "stop")
	if err := os.WriteFile(filepath.Join(h.home, "state", "vms", v.ID, "shadow.pending"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	h.must(t, "vm", "exec", "hz", "--", "sh", "-c", "cd /root/repo && echo changed >> README.md && echo new > added.txt")
	patch := filepath.Join(t.TempDir(), "hz.patch")
	h.must(t, "workspace", "export", "hz", "--out", patch)
	got, _ := os.ReadFile(patch)
	if want := guestScriptExport(t, h, "hz"); string(got) != want || !strings.Contains(want, "added.txt") {
		t.Fatalf("export differs from git in the guest:\n--- export\n%s\n--- guest\n%s", got, want)
	}
	if log := h.daemonLogTail(); !strings.Contains(log, "host export not possible") || !strings.Contains(log, "not completed") {
		t.Errorf("no fallback logged:%s", log)
	}
}

// TestWorkspaceEditsSurviveRestart: edits made before a stop are exported
// after the start (the agent tracks changes only from a disk's first
// mount; a later mount walks).
func TestWorkspaceEditsSurviveRestart(t *testing.T) {
	h := env(t)
	repo := fixtureRepo(t)
	h.must(t, "vm", "create", "hr", "--workspace", repo)
	defer h.run(t, nil, "vm", "delete", "--force", "hr")
	h.must(t, "vm", "exec", "hr", "--", "sh", "-c", "cd /root/repo && echo before-stop >> README.md && echo kept > before-stop.txt && sync")
	h.must(t, "vm", "stop", "hr")
	h.must(t, "vm", "start", "hr")
	patch := filepath.Join(t.TempDir(), "hr.patch")
	h.must(t, "workspace", "export", "hr", "--out", patch)
	got, _ := os.ReadFile(patch)
	if !strings.Contains(string(got), "before-stop") || !strings.Contains(string(got), "before-stop.txt") {
		t.Fatalf("the edits made before the stop are not exported:\n%s", got)
	}
	if want := guestScriptExport(t, h, "hr"); string(got) != want {
		t.Fatalf("export differs from git in the guest:\n--- export\n%s\n--- guest\n%s", got, want)
	}
}
