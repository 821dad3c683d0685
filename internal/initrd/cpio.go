// Package initrd writes the initramfs banger gives a VM: one uncompressed
// newc cpio archive holding the guest agent as /init and the kernel
// modules it must load before it can reach its devices.
//
// Layout of a composed initrd:
//
//	/init                          the agent (PID 1), mode 0755
//	/dev/console                   char 5:1, so the kernel can give init stdio
//	/dev /proc /sys /run /tmp /newroot /root
//	/lib/modules/banger/*.ko       modules (as found in modulesDir)
//	/lib/modules/banger/load-order one module file name per line
//
// Archives are deterministic (inode numbers in order, mtime 0, owner 0:0),
// so one agent and one module set always give the same bytes. The kernel
// accepts several archives concatenated, which tests use to add files.
package initrd

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
)

const (
	newcMagic  = "070701"
	trailer    = "TRAILER!!!"
	headerSize = 110
)

// Unix file-type bits as cpio stores them.
const (
	modeDir     = 0o040000
	modeRegular = 0o100000
	modeSymlink = 0o120000
	modeCharDev = 0o020000
)

// Writer writes a newc ("070701") cpio archive. Names are stored without a
// leading slash. Parent directories are not created implicitly: write them
// first (the kernel's unpacker needs them to exist).
type Writer struct {
	w      io.Writer
	off    int64
	ino    uint32
	err    error
	closed bool
}

// NewWriter returns a Writer that writes an archive to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w, ino: 1} }

// Dir adds a directory.
func (w *Writer) Dir(name string, perm fs.FileMode) error {
	return w.entry(name, modeDir|uint32(perm.Perm()), 2, 0, 0, nil)
}

// File adds a regular file with the given contents.
func (w *Writer) File(name string, perm fs.FileMode, data []byte) error {
	return w.entry(name, modeRegular|unixPerm(perm), 1, 0, 0, data)
}

// Symlink adds a symbolic link name -> target.
func (w *Writer) Symlink(name, target string) error {
	if target == "" {
		return errors.New("cpio: empty symlink target")
	}
	return w.entry(name, modeSymlink|0o777, 1, 0, 0, []byte(target))
}

// CharDev adds a character device node.
func (w *Writer) CharDev(name string, perm fs.FileMode, major, minor uint32) error {
	return w.entry(name, modeCharDev|uint32(perm.Perm()), 1, major, minor, nil)
}

// Close writes the trailer. It does not close the underlying writer.
func (w *Writer) Close() error {
	if w.closed {
		return w.err
	}
	if err := w.entry(trailer, 0, 1, 0, 0, nil); err != nil {
		return err
	}
	w.closed = true
	return nil
}

func unixPerm(m fs.FileMode) uint32 {
	p := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		p |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		p |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		p |= 0o1000
	}
	return p
}

func cleanName(name string) (string, error) {
	if name == trailer {
		return name, nil
	}
	n := strings.TrimPrefix(path.Clean("/"+name), "/")
	if n == "" || n == "." {
		return "", fmt.Errorf("cpio: invalid entry name %q", name)
	}
	return n, nil
}

func (w *Writer) entry(name string, mode, nlink, rmajor, rminor uint32, data []byte) error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return errors.New("cpio: write after Close")
	}
	n, err := cleanName(name)
	if err != nil {
		return err
	}
	if uint64(len(data)) > 0xffffffff {
		return fmt.Errorf("cpio: %s: file too large for newc (%d bytes)", n, len(data))
	}
	ino := w.ino
	if n == trailer {
		ino = 0
	} else {
		w.ino++
	}
	hdr := fmt.Sprintf("%s%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		newcMagic, ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmajor, rminor, len(n)+1, 0)
	buf := make([]byte, 0, headerSize+len(n)+4)
	buf = append(buf, hdr...)
	buf = append(buf, n...)
	buf = append(buf, 0)
	buf = append(buf, make([]byte, pad4(len(buf)))...)
	if err := w.write(buf); err != nil {
		return err
	}
	if len(data) > 0 {
		if err := w.write(data); err != nil {
			return err
		}
		if err := w.write(make([]byte, pad4(len(data)))); err != nil {
			return err
		}
	}
	return nil
}

func (w *Writer) write(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	n, err := w.w.Write(b)
	w.off += int64(n)
	if err != nil {
		w.err = err
	}
	return err
}

func pad4(n int) int { return (4 - n%4) % 4 }
