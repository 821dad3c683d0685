// Package diskspace turns a failure on a full file system into an error
// that says so and names the directory to free, whatever reported it: a
// syscall (ENOSPC, EDQUOT), SQLite (SQLITE_FULL) or a program whose
// stderr only the user can read.
package diskspace

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/dustin/go-humanize"
	"golang.org/x/sys/unix"

	"github.com/banger-sh/banger/internal/errdefs"
)

// Low is the free space under which a file system counts as full: an
// operation that failed there most likely failed for want of space.
const Low = 1 << 20

// sqliteFull is SQLite's result code SQLITE_FULL.
const sqliteFull = 13

// Full reports whether err says a file system is full.
func Full(err error) bool {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return true
	}
	var coded interface{ Code() int }
	return errors.As(err, &coded) && coded.Code()&0xff == sqliteFull
}

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
// unavailable error that names the first such dir and keeps err's text.
func Explain(err error, dirs ...string) error {
	if err == nil {
		return nil
	}
	full := Full(err)
	for _, d := range dirs {
		free, serr := Free(d)
		if serr != nil || free >= Low {
			continue
		}
		return fmt.Errorf("%w: %w", errdefs.Unavailable(fmt.Sprintf("no space left in %s (%s free): free some space there and retry", d, humanize.IBytes(free))), err)
	}
	if full {
		return fmt.Errorf("%w: %w", errdefs.Unavailable("a file system is full: free some space and retry"), err)
	}
	return err
}
