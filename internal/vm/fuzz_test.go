package vm

import (
	"errors"
	"path"
	"strings"
	"testing"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/errdefs"
)

// FuzzGuestPaths: the guest paths a client names (a file to read or
// write, a workspace mount point, an exec's working directory) are
// accepted only absolute, clean, other than /, without NUL or newline;
// anything else is invalid_argument.
func FuzzGuestPaths(f *testing.F) {
	for _, s := range []string{"/root/repo", "/", "", "rel", "/a/../b", "/a//b", "/a/", "/a\x00b", "/a\nb", "/é", "//x", "/.", "/.."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		good := path.IsAbs(p) && path.Clean(p) == p && p != "/" && !strings.ContainsAny(p, "\x00\n")
		for name, check := range map[string]func(string) error{
			"filePath": func(s string) error { _, err := filePath(s); return err },
			"workspacePath": func(s string) error {
				if s == "" {
					return errdefs.InvalidArgument("empty") // "" means the default
				}
				_, err := workspacePath(s)
				return err
			},
		} {
			err := check(p)
			if err != nil && !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("%s(%q): error of another class: %v", name, p, err)
			}
			if (err == nil) != good {
				t.Fatalf("%s(%q) = %v, want accepted %v", name, p, err, good)
			}
		}
		err := CheckExec(api.ExecRequest{Argv: []string{"true"}, Dir: p})
		if err == nil && p != "" && (!path.IsAbs(p) || strings.ContainsRune(p, 0)) {
			t.Fatalf("CheckExec took dir %q", p)
		}
	})
}
