// Command untarprobe runs in a guest (static binary, copied in by the
// benchmark) and extracts a tar from stdin under a directory the way the
// agent's put-tar does (every call through an os.Root), or with the same
// calls on plain joined paths, and prints how long it took. It isolates
// the cost of os.Root's per-component path resolution under emulation.
//
//	untarprobe -mode root|plain|minimal DIR < tree.tar
package main

import (
	"archive/tar"
	"bufio"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"time"
)

func main() {
	mode := flag.String("mode", "root", "root: os.Root calls as the agent; plain: the same calls on joined paths; minimal: create+write+chmod+chtimes only")
	flag.Parse()
	dir := flag.Arg(0)
	t0 := time.Now()
	n, err := extract(*mode, dir, bufio.NewReaderSize(os.Stdin, 1<<20))
	if err != nil {
		fmt.Fprintln(os.Stderr, "untarprobe:", err)
		os.Exit(1)
	}
	fmt.Printf("%s: %d entries in %.2fs\n", *mode, n, time.Since(t0).Seconds())
}

type ops interface {
	MkdirAll(string, fs.FileMode) error
	Lstat(string) (fs.FileInfo, error)
	Mkdir(string, fs.FileMode) error
	Remove(string) error
	OpenFile(string, int, fs.FileMode) (*os.File, error)
	Symlink(string, string) error
	Lchown(string, int, int) error
	Chmod(string, fs.FileMode) error
	Chtimes(string, time.Time, time.Time) error
}

type plain struct{ dir string }

func (p plain) j(n string) string                      { return filepath.Join(p.dir, n) }
func (p plain) MkdirAll(n string, m fs.FileMode) error { return os.MkdirAll(p.j(n), m) }
func (p plain) Lstat(n string) (fs.FileInfo, error)    { return os.Lstat(p.j(n)) }
func (p plain) Mkdir(n string, m fs.FileMode) error    { return os.Mkdir(p.j(n), m) }
func (p plain) Remove(n string) error                  { return os.Remove(p.j(n)) }
func (p plain) Symlink(o, n string) error              { return os.Symlink(o, p.j(n)) }
func (p plain) Lchown(n string, u, g int) error        { return os.Lchown(p.j(n), u, g) }
func (p plain) Chmod(n string, m fs.FileMode) error    { return os.Chmod(p.j(n), m) }
func (p plain) Chtimes(n string, a, b time.Time) error { return os.Chtimes(p.j(n), a, b) }
func (p plain) OpenFile(n string, f int, m fs.FileMode) (*os.File, error) {
	return os.OpenFile(p.j(n), f, m)
}

func extract(mode, dir string, r io.Reader) (int, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	var o ops = plain{dir}
	if mode == "root" {
		root, err := os.OpenRoot(dir)
		if err != nil {
			return 0, err
		}
		defer root.Close()
		o = root
	}
	full := mode != "minimal"
	made := map[string]bool{}
	tr := tar.NewReader(r)
	n := 0
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		n++
		name := path.Clean(hdr.Name)
		if name == "." {
			continue
		}
		if parent := path.Dir(name); parent != "." && (full || !made[parent]) {
			if err := o.MkdirAll(parent, 0o755); err != nil {
				return n, err
			}
			made[parent] = true
		}
		m := hdr.FileInfo().Mode() & fs.ModePerm
		switch hdr.Typeflag {
		case tar.TypeDir:
			if _, err := o.Lstat(name); err != nil {
				if err := o.Mkdir(name, 0o700); err != nil {
					return n, err
				}
			}
			made[name] = true
			if full {
				o.Lchown(name, hdr.Uid, hdr.Gid)
			}
			continue
		case tar.TypeReg:
			if full {
				if _, err := o.Lstat(name); err == nil {
					o.Remove(name)
				}
			}
			f, err := o.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return n, err
			}
			_, err = io.Copy(f, tr)
			if !full {
				f.Chmod(m)
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return n, err
			}
		case tar.TypeSymlink:
			if err := o.Symlink(hdr.Linkname, name); err != nil {
				return n, err
			}
			continue
		default:
			continue
		}
		if full {
			if err := o.Lchown(name, hdr.Uid, hdr.Gid); err != nil {
				return n, err
			}
			if err := o.Chmod(name, m); err != nil {
				return n, err
			}
		}
		if err := o.Chtimes(name, hdr.ModTime, hdr.ModTime); err != nil {
			return n, err
		}
	}
}
