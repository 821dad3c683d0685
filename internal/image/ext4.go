package image

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/banger-sh/banger/internal/errdefs"
)

// ext4 superblock: 1024 bytes in, magic 0xEF53 at offset 56 of it.
const (
	ext4SuperblockOffset = 1024
	ext4MagicOffset      = ext4SuperblockOffset + 56 // 1080
	ext4Magic            = 0xEF53
)

// CheckExt4 reports an invalid-argument error unless path is a file
// holding an ext2/3/4 file system (superblock magic 0xEF53 at offset 1080).
func CheckExt4(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return errdefs.InvalidArgument(fmt.Sprintf("%s is not a regular file", path))
	}
	var b [2]byte
	if _, err := f.ReadAt(b[:], ext4MagicOffset); err != nil {
		if errors.Is(err, io.EOF) {
			return errdefs.InvalidArgument(fmt.Sprintf("%s is too small to be an ext4 file system", path))
		}
		return fmt.Errorf("read %s: %w", path, err)
	}
	if m := binary.LittleEndian.Uint16(b[:]); m != ext4Magic {
		return errdefs.InvalidArgument(fmt.Sprintf("%s is not an ext4 file system (magic %#04x at offset %d, want %#04x)", path, m, ext4MagicOffset, ext4Magic))
	}
	return nil
}
