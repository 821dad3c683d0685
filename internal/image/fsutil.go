package image

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/system"
)

// writeFileAtomic writes data to path through a temporary file in the same
// directory and a rename.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// renameNoReplace renames a directory to dest, failing if dest exists
// (rename(2) alone would replace an empty directory).
func renameNoReplace(src, dest string) error {
	err := unix.Renameat2(unix.AT_FDCWD, src, unix.AT_FDCWD, dest, unix.RENAME_NOREPLACE)
	if errors.Is(err, unix.EEXIST) {
		return errdefs.AlreadyExists(fmt.Sprintf("%s already exists", dest))
	}
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
		// File system without RENAME_NOREPLACE: check, then rename.
		if _, serr := os.Lstat(dest); serr == nil {
			return errdefs.AlreadyExists(fmt.Sprintf("%s already exists", dest))
		}
		err = os.Rename(src, dest)
	}
	if err != nil {
		return fmt.Errorf("rename %s to %s: %w", src, dest, err)
	}
	return nil
}

// fsDevice returns the device number of the file system holding path, or
// of its nearest existing ancestor.
func fsDevice(path string) (uint64, error) {
	p := path
	for {
		var st syscall.Stat_t
		err := syscall.Stat(p, &st)
		if err == nil {
			return st.Dev, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return 0, fmt.Errorf("stat %s: %w", p, err)
		}
		parent := filepath.Dir(p)
		if parent == p {
			return 0, fmt.Errorf("stat %s: %w", path, err)
		}
		p = parent
	}
}

// mountsUnder lists the mount points at or below dir (deepest first), from
// /proc/self/mountinfo.
func mountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b string) int { return len(b) - len(a) })
	return out, nil
}

func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// killProcessesUsing SIGKILLs every process whose root or working directory
// lies under dir (a chrooted dpkg left behind by a killed debootstrap), and
// waits a little for them to go. It returns how many it found.
func killProcessesUsing(dir string) int {
	found := 0
	for round := 0; round < 50; round++ {
		pids := processesUsing(dir)
		if len(pids) == 0 {
			return found
		}
		found += len(pids)
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return found
}

func processesUsing(dir string) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		for _, link := range []string{"root", "cwd"} {
			target, err := os.Readlink(filepath.Join("/proc", e.Name(), link))
			if err != nil {
				continue
			}
			if target == dir || strings.HasPrefix(target, dir+"/") {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// removeTree deletes a scratch directory that a build created. It first
// kills processes still working in it and detaches anything mounted under
// it, so that removal never walks into a mounted /proc, /sys or /dev; it
// refuses to remove the tree if a mount stays.
func removeTree(dir string) error {
	if dir == "" || dir == "/" {
		return fmt.Errorf("refusing to remove %q", dir)
	}
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	// /proc and mountinfo show resolved paths.
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	}
	killProcessesUsing(dir)
	mounts, err := mountsUnder(dir)
	if err != nil {
		return fmt.Errorf("remove %s: list mounts: %w", dir, err)
	}
	for _, mp := range mounts {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove %s: unmount %s: %w", dir, mp, err)
		}
	}
	if mounts, err := mountsUnder(dir); err != nil || len(mounts) > 0 {
		return fmt.Errorf("remove %s: still mounted under it: %v (%v)", dir, mounts, err)
	}
	// A dying process may still create a file while we walk; retry.
	for i := 0; ; i++ {
		err = os.RemoveAll(dir)
		if err == nil || i == 5 {
			break
		}
		killProcessesUsing(dir)
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("remove %s: %w", dir, err)
	}
	return nil
}

// copySparse copies a file keeping holes (cp --sparse=always).
func copySparse(ctx context.Context, src, dst string) error {
	if _, err := system.Run(ctx, "cp", "--sparse=always", "--", src, dst); err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return os.Chmod(dst, 0o644)
}

// treeUsage returns the bytes a directory tree occupies on disk (st_blocks)
// and its number of inodes. Hard links are counted once.
func treeUsage(dir string) (bytes int64, inodes int64, err error) {
	seen := map[uint64]bool{}
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if !ok {
			return nil
		}
		if st.Nlink > 1 && !d.IsDir() {
			if seen[st.Ino] {
				return nil
			}
			seen[st.Ino] = true
		}
		inodes++
		bytes += st.Blocks * 512
		return nil
	})
	return bytes, inodes, err
}

// lockFile takes an exclusive flock on path, waiting until it is free or
// ctx is done.
func lockFile(ctx context.Context, path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { _ = unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
