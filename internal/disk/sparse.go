package disk

import (
	"os"

	"golang.org/x/sys/unix"
)

// Sparse creates path (which must not exist) as a sparse file of size
// bytes, all zeros: a work-disk slot costs no space until it is filled.
func Sparse(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}

// Zero makes the whole of path a hole again (all zeros, no data), keeping
// its size and inode: a slot a VMM holds open is emptied in place.
func Zero(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if st.Size() == 0 {
		return nil
	}
	return unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, st.Size())
}
