// Package consolelog bounds the VMs' console logs.
//
// A VMM appends the guest's serial console to the VM's console.log for as
// long as the VM runs (QEMU: a file chardev with append=on, so the file is
// open O_APPEND), and the guest decides how much it writes: a guest
// writing /dev/ttyS0 in a loop (~250 KB/s under TCG here) would fill the
// host's disk. The daemon cannot make QEMU stop writing, and VMM processes
// outlive the daemon, so the bound is kept from outside: once a second
// (Watch, started before the daemon serves, so what grew while it was
// down is cut at once) every console log longer than Max loses its oldest
// bytes, down to about Keep.
//
// Trim cuts with fallocate(FALLOC_FL_COLLAPSE_RANGE): the kernel removes
// the head of the file under the inode lock that also serialises the
// writer's appends, so nothing the guest writes is lost or misplaced, and
// the file stays the one the VMM has open. Where the filesystem cannot
// collapse (tmpfs, some others), the tail is read, the file truncated and
// the tail written back: what the guest writes in that instant may be lost
// or land before the tail. Either way the file is bounded by Max plus what
// a guest writes in a second while the daemon runs; while no daemon runs
// it grows at the guest's serial speed until the next start.
//
// The writer must append (O_APPEND): one writing at its own offset would
// leave a hole after a cut.
package consolelog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// Bounds of a console log.
const (
	Max  = 4 << 20 // a log longer than this is cut ...
	Keep = 2 << 20 // ... to about this much (its newest bytes)
)

// Trim cuts the file at path to about its last keep bytes when it is
// longer than max, and returns how many bytes it removed (0 when it was
// not longer). A missing file is not an error.
func Trim(path string, max, keep int64) (int64, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return 0, fmt.Errorf("%s: not a regular file", path)
	}
	if st.Size <= max {
		return 0, nil
	}
	// The cut is a whole number of filesystem blocks (COLLAPSE_RANGE
	// requires it): a little more than keep stays.
	var fs unix.Statfs_t
	bs := int64(4096)
	if err := unix.Fstatfs(int(f.Fd()), &fs); err == nil && fs.Bsize > 0 {
		bs = int64(fs.Bsize)
	}
	cut := (st.Size - keep) / bs * bs
	if cut <= 0 {
		return 0, nil
	}
	err = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_COLLAPSE_RANGE, 0, cut)
	if err == nil {
		return cut, nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOSYS) {
		return 0, fmt.Errorf("%s: collapse: %w", path, err)
	}
	return rewriteTail(f, path, keep)
}

// rewriteTail is Trim without COLLAPSE_RANGE.
func rewriteTail(f *os.File, path string, keep int64) (int64, error) {
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, err
	}
	tail := make([]byte, keep)
	n, err := f.ReadAt(tail, size-keep)
	if err != nil && !errors.Is(err, io.EOF) {
		return 0, fmt.Errorf("%s: read tail: %w", path, err)
	}
	if err := f.Truncate(0); err != nil {
		return 0, fmt.Errorf("%s: truncate: %w", path, err)
	}
	a, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return 0, err
	}
	defer a.Close()
	if _, err := a.Write(tail[:n]); err != nil {
		return 0, fmt.Errorf("%s: write tail: %w", path, err)
	}
	return size - int64(n), nil
}

// Watch trims every file that paths lists (a glob) once at once, then
// every interval until ctx ends.
func Watch(ctx context.Context, pattern string, interval time.Duration, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		files, _ := filepath.Glob(pattern)
		for _, p := range files {
			n, err := Trim(p, Max, Keep)
			switch {
			case err != nil:
				log.Warn("trim console log", "path", p, "err", err)
			case n > 0:
				log.Info("console log trimmed", "path", p, "dropped_bytes", n)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
