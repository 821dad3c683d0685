package disk

import (
	"errors"
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
