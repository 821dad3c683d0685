package workspace

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// TarStream writes set's files and the prepared .git as a tar stream, for a
// VM that is already running (agent.Client.PutTar extracts it at the
// workspace path). Entries are owned by root, in an order where every
// directory precedes its contents; files that are hard links of each other
// are sent once. The returned Info (the same as in the shipped .git) is
// what Branch needs later: record it with the VM.
func TarStream(ctx context.Context, repo string, set *FileSet, w io.Writer) (*Info, error) {
	s, err := prepare(ctx, repo, set, "")
	if err != nil {
		return nil, err
	}
	defer s.close()
	if err := writeTar(ctx, s.tree, w); err != nil {
		return nil, err
	}
	info := s.info
	return &info, nil
}

func writeTar(ctx context.Context, dir string, w io.Writer) error {
	tw := tar.NewWriter(w)
	type inode struct{ dev, ino uint64 }
	seen := make(map[inode]string)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		rel = filepath.ToSlash(rel)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		// Whole-second mtimes (the shipped .git compares no more:
		// checkStat = minimal, as on the work disk) and no forced format:
		// a PAX record for sub-second mtimes cost every entry an extra
		// 1 KiB header to ship and parse (~1 MiB on this repository);
		// the writer still falls back to PAX for long names.
		hdr := &tar.Header{
			Name:    rel,
			Mode:    int64(fi.Mode().Perm()),
			ModTime: fi.ModTime().Truncate(time.Second),
		}
		switch {
		case fi.IsDir():
			hdr.Typeflag = tar.TypeDir
			hdr.Name += "/"
		case fi.Mode()&fs.ModeSymlink != 0:
			hdr.Typeflag = tar.TypeSymlink
			if hdr.Linkname, err = os.Readlink(p); err != nil {
				return err
			}
		case fi.Mode().IsRegular():
			hdr.Typeflag = tar.TypeReg
			hdr.Size = fi.Size()
			if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink > 1 {
				k := inode{uint64(st.Dev), st.Ino}
				if first, ok := seen[k]; ok {
					hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
				} else {
					seen[k] = rel
				}
			}
		default:
			return nil
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("tar %s: %w", rel, err)
		}
		if hdr.Typeflag != tar.TypeReg {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		n, err := io.Copy(tw, f)
		if err != nil {
			return fmt.Errorf("tar %s: %w", rel, err)
		}
		if n != hdr.Size {
			return fmt.Errorf("tar %s: file changed size while being read", rel)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("workspace: tar stream: %w", err)
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("workspace: tar stream: %w", err)
	}
	return nil
}
