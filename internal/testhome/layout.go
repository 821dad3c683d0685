package testhome

import (
	"os"
	"testing"

	"github.com/banger-sh/banger/internal/paths"
)

// Layout is a banger home of its own for one test, with its directories
// made, removed at the end of the test: the layout BANGER_HOME=DIR gives.
// DIR is short (under os.TempDir, not t.TempDir): unix socket paths inside
// it are limited to 107 bytes.
func Layout(t testing.TB) paths.Layout {
	t.Helper()
	dir, err := os.MkdirTemp("", "bh")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	l, err := paths.Resolve(func(k string) string {
		if k == "BANGER_HOME" {
			return dir
		}
		return ""
	}, os.Geteuid())
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Ensure(); err != nil {
		t.Fatal(err)
	}
	return l
}
