package disk

import (
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// DataExtents calls fn with each data extent [off, end) of f's first size
// bytes, in order, skipping the holes of a sparse file (SEEK_DATA and
// SEEK_HOLE: no byte of a hole is read). Where the filesystem cannot tell,
// the rest of the file is one extent. It moves f's offset.
func DataExtents(f *os.File, size int64, fn func(off, end int64) error) error {
	for off := int64(0); off < size; {
		data, err := f.Seek(off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole is left
		}
		end := size
		if err != nil { // no SEEK_DATA here: the rest is data
			data = off
		} else if data >= size {
			return nil
		} else if hole, herr := f.Seek(data, unix.SEEK_HOLE); herr == nil && hole <= size {
			end = hole
		}
		if err := fn(data, end); err != nil {
			return err
		}
		off = end
	}
	return nil
}

// CopyData copies the data extents of in's first size bytes to the same
// offsets of out (copy_file_range where the kernel can, else read/write),
// leaving out's holes where in has holes. out should be empty or sparse.
func CopyData(in, out *os.File, size int64) error {
	return DataExtents(in, size, func(data, hole int64) error {
		for roff, woff := data, data; roff < hole; {
			n, err := unix.CopyFileRange(int(in.Fd()), &roff, int(out.Fd()), &woff, int(hole-roff), 0)
			if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
				// No copy_file_range between these files: copy by hand.
				w := io.NewOffsetWriter(out, woff)
				if _, err := io.Copy(w, io.NewSectionReader(in, roff, hole-roff)); err != nil {
					return fmt.Errorf("copy data: %w", err)
				}
				return nil
			}
			if err != nil {
				return fmt.Errorf("copy data: %w", err)
			}
			if n == 0 {
				return io.ErrUnexpectedEOF
			}
		}
		return nil
	})
}
