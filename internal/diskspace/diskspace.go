// Package diskspace turns a failure on a full file system into an error
// that says so and names the directory to free, whatever reported it: a
// syscall (ENOSPC, EDQUOT), SQLite (SQLITE_FULL) or a program whose
// stderr only the user can read.
package diskspace

import (
	"errors"
	"fmt"
	"strings"
	"syscall"

	"github.com/dustin/go-humanize"
	"golang.org/x/sys/unix"

	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/system"
)

// Low is the free space under which a file system counts as full: an
// operation that failed there most likely failed for want of space.
const Low = 1 << 20

// sqliteFull is SQLite's result code SQLITE_FULL.
const sqliteFull = 13

// Full reports whether err says a file system is full: the errno, SQLite's
// code, or a program's stderr carrying strerror(ENOSPC) (programs run
// with LC_ALL=C, so the text is fixed).
func Full(err error) bool {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return true
	}
	var coded interface{ Code() int }
	if errors.As(err, &coded) && coded.Code()&0xff == sqliteFull {
		return true
	}
	var se *system.Error
	return errors.As(err, &se) && strings.Contains(se.Stderr, strerrorENOSPC)
}

// strerrorENOSPC is glibc's strerror(ENOSPC) in the C locale (Go's own
// text for the errno is lower-case).
const strerrorENOSPC = "No space left on device"

// Free is the space an unprivileged writer has left on dir's file
// system.
func Free(dir string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return st.Bavail * uint64(st.Bsize), nil
}

// Explain returns err unchanged unless one of dirs is on a full file
// system (less than Low free), or err says one is full: then an
// unavailable error that names the dir (the first that is low, else the
// first that err's text names) and keeps err's text. A failed write's
// partial file is often removed before this runs, so free space alone
// does not tell.
func Explain(err error, dirs ...string) error {
	if err == nil {
		return nil
	}
	name := func(d string, free uint64) error {
		return fmt.Errorf("%w: %w", errdefs.Unavailable(fmt.Sprintf("no space left in %s (%s free now): free some space there and retry", d, humanize.IBytes(free))), err)
	}
	for _, d := range dirs {
		if free, serr := Free(d); serr == nil && free < Low {
			return name(d, free)
		}
	}
	if !Full(err) {
		return err
	}
	for _, d := range dirs {
		if strings.Contains(err.Error(), d+"/") {
			free, _ := Free(d)
			return name(d, free)
		}
	}
	return fmt.Errorf("%w: %w", errdefs.Unavailable("a file system is full: free some space and retry"), err)
}
