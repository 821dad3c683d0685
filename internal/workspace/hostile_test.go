package workspace

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-sh/banger/internal/errdefs"
)

func newFilePatch(name, content string) string {
	return "diff --git a/" + name + " b/" + name + "\nnew file mode 100644\n" +
		"index 0000000000000000000000000000000000000000..587be6b4c3f93f93c489c0111bba5596147a26cb\n" +
		"--- /dev/null\n+++ b/" + name + "\n@@ -0,0 +1 @@\n+" + content + "\n"
}

func TestHostilePatches(t *testing.T) {
	r := fixture(t)
	outside := t.TempDir()
	symlink(t, r, outside, "out")
	git(t, r, "add", "out")
	git(t, r, "commit", "-q", "-m", "a symlink to a directory outside")
	set, err := List(tctx(t), r, ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	info := buildKeep(t, r, set)
	ctx := tctx(t)

	cases := []struct {
		name, patch string
		parseOK     bool // refused later, by Apply and Branch
	}{
		{"dotdot", newFilePatch("../x", "x"), false},
		{"dotdot inside", newFilePatch("dir/../../x", "x"), false},
		{"absolute", "diff --git a//tmp/x b//tmp/x\nnew file mode 100644\n--- /dev/null\n+++ b//tmp/x\n@@ -0,0 +1 @@\n+x\n", false},
		{"git hooks", newFilePatch(".git/hooks/post-checkout", "#!/bin/sh"), false},
		{"GIT config", newFilePatch(".GIT/config", "[core]"), false},
		{"nested .git", newFilePatch("dir/.Git/config", "[core]"), false},
		{"git dot", newFilePatch(".git./x", "x"), false},
		{"quoted dotdot", "diff --git \"a/\\056\\056/x\" \"b/\\056\\056/x\"\nnew file mode 100644\n--- /dev/null\n+++ \"b/\\056\\056/x\"\n@@ -0,0 +1 @@\n+x\n", false},
		{"rename into .git", "diff --git a/a.txt b/.git/config\nsimilarity index 100%\nrename from a.txt\nrename to .git/config\n", false},
		{"names differ", "diff --git a/a.txt b/a.txt\n--- a/a.txt\n+++ b/../a.txt\n@@ -1 +1 @@\n-a\n+x\n", false},
		{"smuggled after hunk", "diff --git a/a.txt b/a.txt\n--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-a\n+x\n--- a/../x\n+++ b/../x\n@@ -0,0 +1 @@\n+x\n", false},
		{"garbage first", "hello\n" + newFilePatch("ok.txt", "x"), false},
		{"symlink then below", "diff --git a/evil b/evil\nnew file mode 120000\n--- /dev/null\n+++ b/evil\n@@ -0,0 +1 @@\n+/tmp\n\\ No newline at end of file\n" + newFilePatch("evil/f", "x"), false},
		{"gitlink", "diff --git a/sub b/sub\nnew file mode 160000\nindex 0000000000000000000000000000000000000000..587be6b4c3f93f93c489c0111bba5596147a26cb\n--- /dev/null\n+++ b/sub\n@@ -0,0 +1 @@\n+Subproject commit 587be6b4c3f93f93c489c0111bba5596147a26cb\n", false},
		{"through a symlink to outside", newFilePatch("out/pwned", "x"), true},
		{"through a symlink inside", newFilePatch("link-dir/evil.txt", "x"), true},
		{"rename a symlink, then below", "diff --git a/link-dir b/m\nsimilarity index 100%\nrename from link-dir\nrename to m\n" + newFilePatch("m/evil.txt", "x"), true},
		{"delete through a symlink", "diff --git a/link-dir/deep/x.go b/link-dir/deep/x.go\ndeleted file mode 100644\n--- a/link-dir/deep/x.go\n+++ /dev/null\n@@ -1 +0,0 @@\n-package x\n", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := treeState(t, r)
			p, err := ParsePatch(strings.NewReader(c.patch), 0)
			if !c.parseOK {
				if err == nil {
					t.Fatalf("accepted:\n%s", c.patch)
				}
				if !errors.Is(err, ErrRejected) || !errors.Is(err, errdefs.ErrInvalidArgument) {
					t.Errorf("error class: %v", err)
				}
				t.Logf("%v", err)
				return
			}
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			if err := Apply(ctx, r, p); !errors.Is(err, ErrRejected) {
				t.Errorf("Apply = %v, want rejected", err)
			} else {
				t.Logf("Apply: %v", err)
			}
			if _, err := Branch(ctx, r, p, "hostile", info.Base); !errors.Is(err, ErrRejected) {
				t.Errorf("Branch = %v, want rejected", err)
			}
			sameState(t, "tree after a hostile patch", treeState(t, r), before)
			if entries, _ := os.ReadDir(outside); len(entries) != 0 {
				t.Errorf("written outside: %v", entries)
			}
			if _, err := os.Stat(filepath.Join(r, "dir", "evil.txt")); err == nil {
				t.Errorf("written through the symlink")
			}
		})
	}

	t.Run("oversize", func(t *testing.T) {
		big := newFilePatch("big.txt", strings.Repeat("x", 5000))
		_, err := ParsePatch(strings.NewReader(big), 1000)
		if !errors.Is(err, ErrRejected) || !strings.Contains(err.Error(), "limit") {
			t.Fatalf("oversize: %v", err)
		}
		if _, err := ParsePatch(strings.NewReader(big), int64(len(big))); err != nil {
			t.Fatalf("at the limit: %v", err)
		}
	})
}

func TestCheckPath(t *testing.T) {
	for p, ok := range map[string]bool{
		"a.txt": true, "dir/b c.txt": true, "ünï/x": true, ".gitignore": true, ".github/x": true,
		"x/.gitmodules": true, "a..b": true, "new\nline": true,
		"": false, "/abs": false, "../x": false, "a/../b": false, "./a": false, "a//b": false,
		".git": false, ".git/x": false, ".GIT/x": false, "d/.gIt/x": false, ".git /x": false,
		"git~1/x": false, "a\x00b": false, "a/": false,
	} {
		if err := CheckPath(p); (err == nil) != ok {
			t.Errorf("CheckPath(%q) = %v, want ok=%v", p, err, ok)
		}
	}
}

func TestGitLineName(t *testing.T) {
	for in, want := range map[string]string{
		"a/x b/x":                           "x",
		"a/with space b/with space":         "with space",
		"a/a b/c b/a b/c":                   "a b/c",
		`"a/new\nline" "b/new\nline"`:       "new\nline",
		`"a/\303\274.txt" "b/\303\274.txt"`: "ü.txt",
		"a/x b/y":                           "",
	} {
		got, ok := gitLineName(in)
		if got != want || ok != (want != "") {
			t.Errorf("gitLineName(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}
