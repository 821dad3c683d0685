package agent

import (
	"archive/tar"
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"
)

func (s *session) putTar(st *yamux.Stream, dir string) {
	defer st.Close()
	if err := extractTar(dir, st); err != nil {
		writeFrame(st, reply{Error: err.Error()})
		io.Copy(io.Discard, st) // until the host stops sending
		return
	}
	io.Copy(io.Discard, st) // padding after the end-of-archive blocks
	writeFrame(st, reply{})
}

// extractTar extracts r under dir (created if needed). Every entry stays
// inside dir: os.Root refuses paths and symlinks that would leave it.
func extractTar(dir string, r io.Reader) error {
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("put-tar: %q is not an absolute path", dir)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("put-tar: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("put-tar: %w", err)
	}
	defer root.Close()
	asRoot := os.Geteuid() == 0
	type dirMeta struct {
		name  string
		mode  fs.FileMode
		mtime time.Time
	}
	var dirs []dirMeta
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("put-tar: read: %w", err)
		}
		name, err := tarEntryName(hdr.Name)
		if err != nil {
			return err
		}
		if name == "." {
			continue
		}
		if parent := path.Dir(name); parent != "." {
			if err := root.MkdirAll(parent, 0o755); err != nil {
				return fmt.Errorf("put-tar: %s: %w", name, err)
			}
		}
		mode := hdr.FileInfo().Mode()
		fail := func(err error) error { return fmt.Errorf("put-tar: %s: %w", name, err) }
		switch hdr.Typeflag {
		case tar.TypeDir:
			fi, err := root.Lstat(name)
			if err == nil && !fi.IsDir() {
				if err := root.Remove(name); err != nil {
					return fail(err)
				}
				err = fs.ErrNotExist
			}
			if err != nil {
				if err := root.Mkdir(name, 0o700); err != nil {
					return fail(err)
				}
			}
			dirs = append(dirs, dirMeta{name, mode, hdr.ModTime})
			if asRoot {
				root.Lchown(name, hdr.Uid, hdr.Gid)
			}
			continue
		case tar.TypeReg, tar.TypeRegA:
			if err := removeNonDir(root, name); err != nil {
				return fail(err)
			}
			f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return fail(err)
			}
			_, err = io.Copy(f, tr)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fail(err)
			}
		case tar.TypeSymlink:
			if err := removeNonDir(root, name); err != nil {
				return fail(err)
			}
			if err := root.Symlink(hdr.Linkname, name); err != nil {
				return fail(err)
			}
			if asRoot {
				root.Lchown(name, hdr.Uid, hdr.Gid)
			}
			continue
		case tar.TypeLink:
			target, err := tarEntryName(hdr.Linkname)
			if err != nil {
				return err
			}
			if err := removeNonDir(root, name); err != nil {
				return fail(err)
			}
			if err := root.Link(target, name); err != nil {
				return fail(err)
			}
			continue
		default:
			// Devices, FIFOs and PAX globals are not part of a work tree.
			continue
		}
		if asRoot {
			if err := root.Lchown(name, hdr.Uid, hdr.Gid); err != nil {
				return fail(err)
			}
		}
		if err := root.Chmod(name, mode&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
			return fail(err)
		}
		if err := root.Chtimes(name, hdr.ModTime, hdr.ModTime); err != nil {
			return fail(err)
		}
	}
	// Directory modes and times last: creating children changes them.
	for i := len(dirs) - 1; i >= 0; i-- {
		d := dirs[i]
		if err := root.Chmod(d.name, d.mode&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
			return fmt.Errorf("put-tar: %s: %w", d.name, err)
		}
		root.Chtimes(d.name, d.mtime, d.mtime)
	}
	return nil
}

// tarEntryName cleans an entry name to a path relative to the extraction
// root, refusing names that leave it.
func tarEntryName(n string) (string, error) {
	c := path.Clean("/" + n)
	c = strings.TrimPrefix(c, "/")
	if c == "" {
		return ".", nil
	}
	// path.Clean of an absolute path never keeps "..": check the raw name.
	for _, el := range strings.Split(n, "/") {
		if el == ".." {
			return "", fmt.Errorf("put-tar: entry %q leaves the target directory", n)
		}
	}
	return c, nil
}

func removeNonDir(root *os.Root, name string) error {
	fi, err := root.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return fmt.Errorf("a directory is in the way")
	}
	return root.Remove(name)
}

func (s *session) getTar(st *yamux.Stream, p string) {
	defer st.Close()
	if !filepath.IsAbs(p) {
		writeFrame(st, reply{Error: fmt.Sprintf("get-tar: %q is not an absolute path", p)})
		return
	}
	if _, err := os.Lstat(p); err != nil {
		writeFrame(st, reply{Error: fmt.Sprintf("get-tar: %v", err)})
		return
	}
	if err := writeFrame(st, reply{}); err != nil {
		return
	}
	// The host closes its side to stop the transfer (limit reached,
	// cancelled): unblock our writes then.
	go func() {
		io.Copy(io.Discard, st)
		st.SetWriteDeadline(time.Unix(1, 0))
	}()
	cw := &chunkWriter{w: st}
	bw := bufio.NewWriterSize(cw, 256<<10)
	tw := tar.NewWriter(bw)
	err := writeTree(tw, p)
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = bw.Flush()
	}
	if cw.err != nil {
		return // the stream is gone
	}
	var end [4]byte
	if _, werr := st.Write(end[:]); werr != nil {
		return
	}
	r := reply{}
	if err != nil {
		r.Error = err.Error()
	}
	writeFrame(st, r)
}

// chunkWriter frames a byte stream as length-prefixed chunks.
type chunkWriter struct {
	w   io.Writer
	err error
}

func (c *chunkWriter) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	written := 0
	for len(p) > 0 {
		n := min(len(p), maxChunk)
		buf := make([]byte, 4+n)
		binary.BigEndian.PutUint32(buf, uint32(n))
		copy(buf[4:], p[:n])
		if _, err := c.w.Write(buf); err != nil {
			c.err = err
			return written, err
		}
		written += n
		p = p[n:]
	}
	return written, nil
}

// writeTree writes p (and, for a directory, everything under it) to tw,
// with names starting at p's last element. Symlinks are stored as links,
// hard links as such, sockets skipped.
func writeTree(tw *tar.Writer, p string) error {
	p = filepath.Clean(p)
	base := filepath.Base(p)
	if base == "/" {
		base = "."
	}
	type inode struct{ dev, ino uint64 }
	seen := map[inode]string{}
	return filepath.WalkDir(p, func(fp string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(p, fp)
		if err != nil {
			return err
		}
		name := path.Join(base, filepath.ToSlash(rel))
		fi, err := d.Info()
		if err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSocket != 0 {
			return nil
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(fp); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		hdr.Name = name
		if fi.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uname, hdr.Gname = "", ""
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && fi.Mode().IsRegular() && st.Nlink > 1 {
			key := inode{uint64(st.Dev), st.Ino}
			if first, ok := seen[key]; ok {
				hdr.Typeflag = tar.TypeLink
				hdr.Linkname = first
				hdr.Size = 0
				return tw.WriteHeader(hdr)
			}
			seen[key] = name
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(fp)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := io.CopyN(tw, f, hdr.Size); err != nil {
			return fmt.Errorf("%s: %w (file changed while read?)", fp, err)
		}
		return nil
	})
}
