package diskspace

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/system"
)

type sqliteErr int

func (e sqliteErr) Error() string { return "database or disk is full (13)" }
func (e sqliteErr) Code() int     { return int(e) }

func TestFull(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{&fs.PathError{Op: "write", Path: "/x", Err: syscall.ENOSPC}, true},
		{fmt.Errorf("insert: %w", sqliteErr(13)), true},
		{sqliteErr(13 | 1<<8), true}, // an extended code
		{sqliteErr(5), false},        // busy
		{errors.New("no space left on device"), false},
		{os.ErrNotExist, false},
		{fmt.Errorf("copy: %w", &system.Error{Argv: []string{"cp"}, ExitCode: 1, Stderr: "cp: error writing '/x': No space left on device"}), true},
		{&system.Error{Argv: []string{"cp"}, ExitCode: 1, Stderr: "cp: cannot stat '/x': No such file or directory"}, false},
	} {
		if got := Full(c.err); got != c.want {
			t.Errorf("Full(%v) = %v", c.err, got)
		}
	}
}

// TestExplainNamesTheFullDir fills a small tmpfs: Explain names it and
// classes the error unavailable; on a roomy dir it changes nothing.
func TestExplainNamesTheFullDir(t *testing.T) {
	roomy := t.TempDir()
	plain := errors.New("boom")
	if got := Explain(plain, roomy); got != plain {
		t.Errorf("roomy dir: %v", got)
	}
	if got := Explain(nil, roomy); got != nil {
		t.Errorf("nil: %v", got)
	}
	if got := Explain(sqliteErr(13), roomy); !errors.Is(got, errdefs.ErrUnavailable) || !strings.Contains(got.Error(), "full") {
		t.Errorf("a full error on a roomy dir: %v", got)
	}
	// Space came back (the partial file was removed): the dir the error names.
	cp := &system.Error{Argv: []string{"cp"}, ExitCode: 1, Stderr: "cp: error writing '" + roomy + "/tmp/f': No space left on device"}
	if got := Explain(cp, "/nonexistent", roomy); !errors.Is(got, errdefs.ErrUnavailable) || !strings.Contains(got.Error(), "no space left in "+roomy+" (") {
		t.Errorf("a program's ENOSPC naming a roomy dir: %v", got)
	}
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	full := t.TempDir()
	if err := unix.Mount("tmpfs", full, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	defer unix.Unmount(full, unix.MNT_DETACH)
	os.WriteFile(full+"/fill", make([]byte, 1<<20), 0o644) // ENOSPC part-way: fine
	got := Explain(plain, roomy, full)
	if !errors.Is(got, errdefs.ErrUnavailable) || !errors.Is(got, plain) || !strings.Contains(got.Error(), "no space left in "+full) {
		t.Errorf("full dir: %v", got)
	}
}
