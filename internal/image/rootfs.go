package image

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/system"
)

// debootstrap runs debootstrap in its own mount and pid namespaces
// (unshare --mount --pid --kill-child): the /proc and /sys it mounts inside
// the target never show on the host, and when the build is cancelled, the
// kill of unshare takes debootstrap and every process it started (the
// chrooted dpkg included) with it.
func debootstrap(ctx context.Context, o *BuildOptions, target string) error {
	cache := filepath.Join(o.CacheDir, "debootstrap")
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return err
	}
	// Builds sharing a cache take turns: debootstrap does not expect
	// another one writing the same package files.
	unlock, err := lockFile(ctx, cache+".lock")
	if err != nil {
		return err
	}
	defer unlock()
	argv := []string{
		"unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private",
		"debootstrap", "--variant=minbase", "--cache-dir=" + cache,
	}
	if len(o.Packages) > 0 {
		argv = append(argv, "--include="+strings.Join(o.Packages, ","))
	}
	argv = append(argv, o.Suite, target, o.Mirror)
	meter := newBootstrapMeter(o)
	out := io.MultiWriter(o.Log, meter)
	_, err = system.RunOpts(ctx, system.Opts{Stdout: out, Stderr: o.Log}, argv...)
	if err == nil {
		meter.done()
	}
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// debootstrap's own log has the real reason.
		if tail := fileTail(filepath.Join(target, "debootstrap", "debootstrap.log"), 2048); tail != "" {
			return fmt.Errorf("debootstrap: %w\n--- debootstrap.log (tail) ---\n%s", err, tail)
		}
		return fmt.Errorf("debootstrap: %w", err)
	}
	return nil
}

func fileTail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(st.Size()-n, 0)
	b := make([]byte, st.Size()-off)
	_, _ = f.ReadAt(b, off)
	return string(b)
}

// prepareTree turns a debootstrapped tree into banger's guest root: identity
// files that the agent rewrites per VM, no sshd host keys (ssh-keygen -A
// in the guest), no package caches, docs, man pages or translations.
func prepareTree(root, hostname string) error {
	// merged /usr: debootstrap makes /bin, /sbin, /lib links into /usr.
	for _, d := range []string{"usr/bin", "usr/sbin", "usr/lib", "etc", "root", "tmp", "proc", "sys", "dev", "run", "var/tmp", "mnt"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	for _, l := range []struct{ link, target string }{{"bin", "usr/bin"}, {"sbin", "usr/sbin"}, {"lib", "usr/lib"}} {
		p := filepath.Join(root, l.link)
		if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
			if err := os.Symlink(l.target, p); err != nil {
				return err
			}
		}
	}
	if err := os.Chmod(filepath.Join(root, "tmp"), 0o1777|fs.ModeSticky); err != nil {
		return err
	}
	files := []struct {
		path string
		mode os.FileMode
		data string
	}{
		{"etc/hostname", 0o644, hostname + "\n"},
		{"etc/hosts", 0o644, "127.0.0.1\tlocalhost\n127.0.1.1\t" + hostname + "\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"},
		{"etc/fstab", 0o644, "# The root file system is mounted by banger-agent (PID 1) from /dev/vda.\n/dev/vda\t/\text4\trw,relatime\t0\t1\n"},
		{"etc/resolv.conf", 0o644, "# Written by banger-agent at boot.\n"},
		// The agent writes a per-VM machine id; empty means "not set yet".
		{"etc/machine-id", 0o444, ""},
		// Packages installed later in the guest stay small too.
		{"etc/dpkg/dpkg.cfg.d/01-banger-nodoc", 0o644, "path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\npath-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\npath-exclude /usr/share/locale/*\npath-include /usr/share/locale/locale.alias\n"},
		{"etc/apt/apt.conf.d/01-banger-nocache", 0o644, "APT::Install-Recommends \"false\";\n"},
	}
	for _, f := range files {
		p := filepath.Join(root, f.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		// Replace, never write through, a symlink (resolv.conf may be one).
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if err := os.WriteFile(p, []byte(f.data), f.mode); err != nil {
			return err
		}
		if err := os.Chmod(p, f.mode); err != nil {
			return err
		}
	}
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{{"root", 0o700}, {"root/.ssh", 0o700}} {
		p := filepath.Join(root, d.path)
		if err := os.MkdirAll(p, d.mode); err != nil {
			return err
		}
		if err := os.Chmod(p, d.mode); err != nil {
			return err
		}
	}
	// sshd host keys are per VM.
	keys, _ := filepath.Glob(filepath.Join(root, "etc/ssh/ssh_host_*"))
	for _, k := range keys {
		if err := os.Remove(k); err != nil {
			return err
		}
	}
	// Trim what no one reads in a sandbox. Copyright files stay.
	if err := trimDir(filepath.Join(root, "usr/share/doc"), func(rel string, d fs.DirEntry) bool {
		return d.IsDir() || filepath.Base(rel) == "copyright"
	}); err != nil {
		return err
	}
	for _, d := range []string{"usr/share/man", "usr/share/info", "usr/share/lintian", "usr/share/linda", "var/cache/apt/archives", "var/lib/apt/lists", "var/cache/debconf", "var/log"} {
		if err := emptyDir(filepath.Join(root, d)); err != nil {
			return err
		}
	}
	for _, g := range []string{"var/cache/apt/*.bin", "var/cache/ldconfig/aux-cache"} {
		matches, _ := filepath.Glob(filepath.Join(root, g))
		for _, m := range matches {
			if err := os.RemoveAll(m); err != nil {
				return err
			}
		}
	}
	// Translations: keep the C locale's files and locale.alias only.
	locale := filepath.Join(root, "usr/share/locale")
	if entries, err := os.ReadDir(locale); err == nil {
		for _, e := range entries {
			if !e.IsDir() || e.Name() == "C" || e.Name() == "C.UTF-8" {
				continue
			}
			if err := os.RemoveAll(filepath.Join(locale, e.Name())); err != nil {
				return err
			}
		}
	}
	// /run is runtime state (a tmpfs once the guest runs): start it empty
	// but for what must exist even without a tmpfs.
	if err := emptyDir(filepath.Join(root, "run")); err != nil {
		return err
	}
	// Directories apt, sshd and lock users expect to exist.
	for _, d := range []string{"var/cache/apt/archives/partial", "var/lib/apt/lists/partial", "var/log/apt", "run/lock", "run/sshd"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(root, "run/lock"), 0o777|fs.ModeSticky); err != nil {
		return err
	}
	// debootstrap's own leftovers.
	return os.RemoveAll(filepath.Join(root, "debootstrap"))
}

// emptyDir removes a directory's contents but keeps the directory.
func emptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// trimDir removes every non-directory under dir that keep rejects, then
// directories left empty.
func trimDir(dir string, keep func(rel string, d fs.DirEntry) bool) error {
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	var dirs []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != dir {
				dirs = append(dirs, path)
			}
			return nil
		}
		if !keep(path, d) {
			return os.Remove(path)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		_ = os.Remove(dirs[i]) // fails, as wanted, when not empty
	}
	return nil
}

// Minimum and alignment of a root file system image.
const (
	minRootfsSize = 64 << 20
	rootfsAlign   = 1 << 20
)

// makeExt4 builds an ext4 image of exactly size bytes (sparse) from the
// tree at root, keeping owners, modes, links and xattrs (mkfs.ext4 -d; no
// mount needed).
func makeExt4(ctx context.Context, root, out string, size int64, label string, log io.Writer) error {
	used, inodes, err := treeUsage(root)
	if err != nil {
		return fmt.Errorf("measure %s: %w", root, err)
	}
	// ext4 metadata (inode tables, journal, bitmaps) needs room too.
	need := used + used/10 + 64<<20
	if size < need {
		return errdefs.InvalidArgument(fmt.Sprintf("root file system of %d MiB does not fit in %d MiB: use a size of at least %d MiB", used>>20, size>>20, (need>>20)+1))
	}
	f, err := os.OpenFile(out, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	// At least 2x the tree's inodes, and the default ratio otherwise.
	minInodes := strconv.FormatInt(max(inodes*2, size/16384), 10)
	// The file is new and sparse, so the journal already reads as zeros:
	// lazy_journal_init leaves it a hole instead of writing 64 MiB of
	// zeros (same bytes, same digest). Inode tables are holes too and
	// marked zeroed, so the guest's kernel has no lazy init to do.
	_, err = system.RunOpts(ctx, system.Opts{Stdout: log, Stderr: log},
		"mkfs.ext4", "-q", "-F", "-L", label, "-m", "0", "-N", minInodes,
		"-E", "lazy_journal_init=1", "-d", root, out)
	if err != nil {
		return fmt.Errorf("mkfs.ext4: %w", err)
	}
	return nil
}
