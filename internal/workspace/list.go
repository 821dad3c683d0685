package workspace

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/system"
)

// ListOptions selects what List ships.
type ListOptions struct {
	// IncludeUntracked adds untracked files that are not ignored
	// (git ls-files --others --exclude-standard). Ignored files are never
	// shipped.
	IncludeUntracked bool
}

// File is one file to ship.
type File struct {
	Path      string      // slash-separated, relative to the work-tree root
	Size      int64       // bytes (a symlink: the length of its target)
	Mode      fs.FileMode // type and permission bits, from lstat
	Link      string      // a symlink's target ("" otherwise)
	Untracked bool        // shipped because of IncludeUntracked
	Submodule string      // the submodule it belongs to ("" for the repo's own)

	// What the work-disk cache keys on (diskcache.go): the index entry
	// ("<mode> <oid> <stage>", "" when untracked) and lstat's identity.
	index string
	stat  fileStat
}

// fileStat is the part of a file's lstat that changes when it does.
type fileStat struct {
	dev, ino     uint64
	mtime, ctime int64 // ns
}

func statOf(fi fs.FileInfo) fileStat {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileStat{mtime: fi.ModTime().UnixNano()}
	}
	return fileStat{dev: uint64(st.Dev), ino: st.Ino, mtime: st.Mtim.Nano(), ctime: st.Ctim.Nano()}
}

// IsSymlink reports whether f is shipped as a symlink.
func (f File) IsSymlink() bool { return f.Mode&fs.ModeSymlink != 0 }

// FileSet is what List found to ship.
type FileSet struct {
	Root      string // absolute work-tree root (git rev-parse --show-toplevel)
	Files     []File // sorted by Path (byte order, as git sorts)
	TotalSize int64  // sum of Size
	Untracked int    // how many of Files are untracked
	// Submodules are the gitlinks of the repo: their directories are
	// shipped (with the files of the checked-out ones); edits inside them
	// are not exported.
	Submodules []string
	// Skipped are paths git lists that are not shipped, with why (a
	// special file, a tracked path that is now a directory).
	Skipped []string
	// IncludeUntracked records the option List ran with.
	IncludeUntracked bool

	listed            time.Time // when List began (the work-disk cache's racy rule)
	gitDir, commonDir string    // the work tree's (absolute)
}

// Root resolves the work-tree root of dir. A dir outside any git work tree
// is errdefs.ErrInvalidArgument.
func Root(ctx context.Context, dir string) (string, error) {
	root, _, _, err := rootDirs(ctx, dir)
	return root, err
}

// rootDirs is Root with the work tree's git dir and common dir (absolute),
// from the same git command.
func rootDirs(ctx context.Context, dir string) (root, gitDir, commonDir string, err error) {
	root, err = rootOf(ctx, dir)
	if err != nil {
		return "", "", "", err
	}
	l := strings.Split(root, "\n")
	if len(l) != 3 {
		return "", "", "", fmt.Errorf("workspace %s: unexpected rev-parse output %q", dir, root)
	}
	return l[0], l[1], l[2], nil
}

func rootOf(ctx context.Context, dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", errdefs.InvalidArgument(fmt.Sprintf("workspace %s: %v", dir, err))
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return "", errdefs.InvalidArgument(fmt.Sprintf("workspace %s: %v", dir, unwrapPathError(err)))
	}
	if !fi.IsDir() {
		return "", errdefs.InvalidArgument(fmt.Sprintf("workspace %s: not a directory", dir))
	}
	out, err := gitCmd{dir: abs}.line(ctx, "rev-parse", "--show-toplevel", "--path-format=absolute", "--git-dir", "--git-common-dir")
	var se *system.Error
	switch {
	case err == nil && out != "":
		return out, nil
	case errors.As(err, &se) && strings.Contains(se.Stderr, "dubious ownership"):
		return "", errdefs.InvalidArgument(fmt.Sprintf("git refuses %s: the repository belongs to another user (run banger as the repository's owner)", dir))
	case errors.As(err, &se) && se.ExitCode < 0:
		return "", fmt.Errorf("workspace %s: %w", dir, err) // git did not run
	default:
		return "", errdefs.InvalidArgument(fmt.Sprintf("%s is not inside a git work tree (run `git init` there, or pass a repository)", dir))
	}
}

func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// List returns the files to ship from the work tree containing dir.
func List(ctx context.Context, dir string, o ListOptions) (*FileSet, error) {
	t0 := time.Now()
	root, gitDir, commonDir, err := rootDirs(ctx, dir)
	if err != nil {
		return nil, err
	}
	set := &FileSet{Root: root, IncludeUntracked: o.IncludeUntracked, listed: t0, gitDir: gitDir, commonDir: commonDir}
	l := &lister{set: set, root: root, dirs: map[string]bool{"": true}}
	if err := l.listRepo(ctx, "", o.IncludeUntracked); err != nil {
		return nil, err
	}
	sort.Slice(set.Files, func(i, j int) bool { return set.Files[i].Path < set.Files[j].Path })
	sort.Strings(set.Submodules)
	for _, f := range set.Files {
		set.TotalSize += f.Size
		if f.Untracked {
			set.Untracked++
		}
	}
	return set, nil
}

// lister collects a FileSet.
type lister struct {
	set  *FileSet
	root string
	dirs map[string]bool // relative dir -> is a real directory (not a symlink)
}

// realDir reports whether every component of dir is a real directory:
// a tracked path below a symlink is not shipped (git itself reports it
// deleted), so nothing outside the work tree is ever read.
func (l *lister) realDir(dir string) bool {
	if ok, seen := l.dirs[dir]; seen {
		return ok
	}
	ok := l.realDir(parentDir(dir))
	if ok {
		fi, err := os.Lstat(filepath.Join(l.root, filepath.FromSlash(dir)))
		ok = err == nil && fi.IsDir()
	}
	l.dirs[dir] = ok
	return ok
}

// listRepo adds the files of the repository at root/prefix (prefix is ""
// for the top-level repository, or a submodule's path).
func (l *lister) listRepo(ctx context.Context, prefix string, untracked bool) error {
	set, root := l.set, l.root
	dir := root
	if prefix != "" {
		dir = filepath.Join(root, filepath.FromSlash(prefix))
	}
	g := gitCmd{dir: dir}
	out, err := g.run(ctx, "ls-files", "-s", "-z")
	if err != nil {
		return fmt.Errorf("list files of %s: %w", dir, err)
	}
	seen := make(map[string]bool)
	for _, rec := range splitZ(out) {
		// "<mode> <oid> <stage>\t<path>"
		tab := strings.IndexByte(rec, '\t')
		if tab < 0 {
			return fmt.Errorf("list files of %s: unexpected ls-files record %q", dir, rec)
		}
		meta, p := rec[:tab], rec[tab+1:]
		if seen[p] {
			continue // unmerged: one record per stage
		}
		seen[p] = true
		full := joinPrefix(prefix, p)
		if strings.HasPrefix(meta, "160000 ") {
			set.Submodules = append(set.Submodules, full)
			sub := filepath.Join(root, filepath.FromSlash(full))
			if _, err := os.Lstat(filepath.Join(sub, ".git")); err == nil && l.realDir(full) {
				if err := l.listRepo(ctx, full, false); err != nil {
					return err
				}
			}
			continue
		}
		if err := l.addFile(full, meta, false, prefix); err != nil {
			return err
		}
	}
	if !untracked {
		return nil
	}
	out, err = g.run(ctx, "ls-files", "-z", "--others", "--exclude-standard")
	if err != nil {
		return fmt.Errorf("list untracked files of %s: %w", dir, err)
	}
	for _, p := range splitZ(out) {
		if strings.HasSuffix(p, "/") {
			continue // an embedded repository: git shows it as a directory
		}
		if err := l.addFile(joinPrefix(prefix, p), "", true, prefix); err != nil {
			return err
		}
	}
	return nil
}

func joinPrefix(prefix, p string) string {
	if prefix == "" {
		return p
	}
	return prefix + "/" + p
}

// addFile lstats root/p and adds it when it is a regular file or symlink.
func (l *lister) addFile(p, index string, untracked bool, submodule string) error {
	set := l.set
	if !l.realDir(parentDir(p)) {
		return nil // below a symlink or a file: deleted, as git sees it
	}
	full := filepath.Join(l.root, filepath.FromSlash(p))
	fi, err := os.Lstat(full)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return nil // deleted in the working tree
		}
		return fmt.Errorf("workspace: %w", err)
	}
	f := File{Path: p, Mode: fi.Mode(), Untracked: untracked, Submodule: submodule, index: index, stat: statOf(fi)}
	switch {
	case fi.Mode().IsRegular():
		f.Size = fi.Size()
	case fi.Mode()&fs.ModeSymlink != 0:
		f.Link, err = os.Readlink(full)
		if err != nil {
			return fmt.Errorf("workspace: %w", err)
		}
		f.Size = int64(len(f.Link))
	case fi.IsDir():
		set.Skipped = append(set.Skipped, p+" (tracked path is now a directory)")
		return nil
	default:
		set.Skipped = append(set.Skipped, p+" (not a regular file or symlink)")
		return nil
	}
	set.Files = append(set.Files, f)
	return nil
}

// WriteDryRun prints what would be shipped: one line per file (mode, size,
// path, and for a symlink its target), then the totals. Names are printed
// with C-style quoting when they hold control characters, so a newline in a
// name cannot forge a line.
func WriteDryRun(w io.Writer, set *FileSet) error {
	var b strings.Builder
	for _, f := range set.Files {
		tag := " "
		if f.Untracked {
			tag = "?"
		}
		mode := "100644"
		switch {
		case f.IsSymlink():
			mode = "120000"
		case f.Mode&0o111 != 0:
			mode = "100755"
		}
		fmt.Fprintf(&b, "%s %s %10d  %s", tag, mode, f.Size, quoteName(f.Path))
		if f.IsSymlink() {
			fmt.Fprintf(&b, " -> %s", quoteName(f.Link))
		}
		b.WriteByte('\n')
	}
	for _, s := range set.Submodules {
		fmt.Fprintf(&b, "note: submodule %s: its checked-out files are shipped; edits inside it are not exported\n", quoteName(s))
	}
	for _, s := range set.Skipped {
		fmt.Fprintf(&b, "skipped: %s\n", quoteName(s))
	}
	fmt.Fprintf(&b, "%d files (%d untracked), %s (%d bytes) from %s\n",
		len(set.Files), set.Untracked, humanize.IBytes(uint64(set.TotalSize)), set.TotalSize, set.Root)
	_, err := io.WriteString(w, b.String())
	return err
}

// DryRun is WriteDryRun into a string.
func DryRun(set *FileSet) string {
	var b strings.Builder
	_ = WriteDryRun(&b, set)
	return b.String()
}

// quoteName quotes a name like git's core.quotePath when it holds control
// characters, a backslash or a double quote; other bytes (UTF-8 included)
// are printed as they are.
// QuoteName returns a path as git would show it to people: as is, or
// C-quoted when it holds a control character, a quote or a backslash (a
// name from a guest may hold terminal escapes).
func QuoteName(s string) string { return quoteName(s) }

func quoteName(s string) string {
	need := false
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f || c == '"' || c == '\\' {
			need = true
			break
		}
	}
	if !need {
		return s
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch c {
		case '\n':
			b.WriteString(`\n`)
		case '\t':
			b.WriteString(`\t`)
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		default:
			if c < 0x20 || c == 0x7f {
				fmt.Fprintf(&b, `\%03o`, c)
			} else {
				b.WriteByte(c)
			}
		}
	}
	b.WriteByte('"')
	return b.String()
}
