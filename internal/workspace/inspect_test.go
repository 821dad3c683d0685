package workspace

import (
	"context"
	"strings"
	"testing"
)

// TestInspect: the one-git fast path and the step-by-step one agree on
// what they find: an unborn branch, a root commit on a branch, a commit
// with a parent, and a detached HEAD.
func TestInspect(t *testing.T) {
	ctx := context.Background()
	r := newRepo(t)
	check := func(name, head, branch string, parents bool) {
		t.Helper()
		h, err := inspect(ctx, r)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if h.head != head || h.branch != branch || h.parents != parents || h.format != "sha1" || !strings.HasSuffix(h.gitDir, "/.git") || h.commonDir != h.gitDir {
			t.Errorf("%s: %+v, want head %q branch %q parents %v", name, h, head, branch, parents)
		}
	}
	check("unborn", "", "refs/heads/main", false)
	write(t, r, "a", "a\n", 0o644)
	git(t, r, "add", "a")
	git(t, r, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a")
	first := strings.TrimSpace(git(t, r, "rev-parse", "HEAD"))
	check("root commit", first, "refs/heads/main", false)
	write(t, r, "a", "b\n", 0o644)
	git(t, r, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "b")
	second := strings.TrimSpace(git(t, r, "rev-parse", "HEAD"))
	check("second commit", second, "refs/heads/main", true)
	git(t, r, "checkout", "-q", "--detach", first)
	check("detached", first, "", false)
}
