package workspace

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/banger-sh/banger/internal/errdefs"
)

// WritePatch writes the patch as it is: `git apply` takes it on a tree
// equal to what was shipped and gives a tree byte-identical to the guest's.
func WritePatch(p *Patch, w io.Writer) error {
	if p.Empty() {
		return nil
	}
	return p.raw.writeTo(w)
}

// applyConfig pins the options user config could change in git apply.
var applyConfig = []string{"-c", "apply.whitespace=nowarn", "-c", "apply.ignoreWhitespace=no"}

// ConflictError is returned by Apply and Branch when the patch does not
// apply; nothing was written. It matches errdefs.ErrConflict.
type ConflictError struct {
	Files   []string // the files git named (may be empty)
	Message string   // git's own words
}

func (e *ConflictError) Error() string {
	if len(e.Files) > 0 {
		names := make([]string, len(e.Files))
		for i, f := range e.Files {
			names[i] = quoteName(f)
		}
		return "the patch does not apply (nothing was changed); conflicting files: " + strings.Join(names, ", ")
	}
	return "the patch does not apply (nothing was changed): " + e.Message
}

func (e *ConflictError) Is(target error) bool { return target == errdefs.ErrConflict }

// Apply applies p to the work tree of repo (not its index). git apply is
// all-or-nothing: on any conflict nothing is written and the error (a
// *ConflictError) names the conflicting files. Paths that go through a
// symlink of the work tree are refused before anything runs, and so is a
// patch that changes files that make the host run code (a *HookError;
// see HookFiles and ApplyWith).
func Apply(ctx context.Context, repo string, p *Patch) error {
	return ApplyWith(ctx, repo, p, ApplyOptions{})
}

// ApplyWith is Apply with options.
func ApplyWith(ctx context.Context, repo string, p *Patch, o ApplyOptions) error {
	root, err := Root(ctx, repo)
	if err != nil {
		return err
	}
	if p.Empty() {
		return nil
	}
	if err := checkPlacement(p, worktreeLinks(root), "the work tree"); err != nil {
		return err
	}
	if err := checkHooks(ctx, root, p, o); err != nil {
		return err
	}
	var stderr bytes.Buffer
	g := gitCmd{dir: root, stdin: p.reader(), errw: &limitedBuffer{b: &stderr, max: 1 << 20}}
	if _, err := g.run(ctx, append(applyConfig, "apply", "--whitespace=nowarn", "-")...); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return conflict(p, stderr.String(), err)
	}
	return nil
}

// symlinkTest reports whether a path is a symlink in a target tree.
type symlinkTest func(path string) (bool, error)

func worktreeLinks(root string) symlinkTest {
	return func(p string) (bool, error) {
		fi, err := os.Lstat(filepath.Join(root, filepath.FromSlash(p)))
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("workspace: %w", err)
		}
		return fi.Mode()&fs.ModeSymlink != 0, nil
	}
}

// checkPlacement refuses a patch that would write, delete or rename
// anything below a symlink: one the target tree has now, or one the patch
// leaves there (created, renamed or copied from a symlink, retargeted).
func checkPlacement(p *Patch, isLink symlinkTest, where string) error {
	changed := map[string]Change{}
	for _, c := range p.Changes {
		if prev, ok := changed[c.Path]; ok && prev.Kind != Deleted {
			continue // type change: keep the side that stays
		}
		changed[c.Path] = c
	}
	linkAfter := func(d string) (bool, error) {
		c, ok := changed[d]
		switch {
		case !ok:
			return isLink(d)
		case c.Kind == Deleted:
			return false, nil
		case c.NewMode != "":
			return c.NewMode == "120000", nil
		case c.OldPath != "":
			return isLink(c.OldPath)
		default:
			return isLink(d)
		}
	}
	for _, c := range p.Changes {
		// What the patch writes must not land below a symlink that is
		// there once it applies (git removes before it creates, so a
		// symlink the patch deletes is no obstacle).
		if c.Kind != Deleted {
			for d := parentDir(c.Path); d != ""; d = parentDir(d) {
				after, err := linkAfter(d)
				if err != nil {
					return err
				}
				if after {
					return reject(c.Path, "goes through %s, a symlink in %s", quoteName(d), where)
				}
			}
		}
		// What it removes must not be reached through a symlink now.
		removed := c.OldPath
		if c.Kind == Deleted {
			removed = c.Path
		}
		if c.Kind == Copied {
			removed = "" // read, not removed; still checked below
		}
		for _, path := range []string{removed, c.OldPath} {
			for d := parentDir(path); path != "" && d != ""; d = parentDir(d) {
				now, err := isLink(d)
				if err != nil {
					return err
				}
				if now {
					return reject(path, "goes through %s, a symlink in %s", quoteName(d), where)
				}
			}
		}
	}
	return nil
}

var gitErrorLine = regexp.MustCompile(`(?m)^error: (?:patch failed: )?(.+?):(?: |\d+$)`)

// conflict builds a ConflictError from git apply's stderr, keeping the
// names git gave that are files of the patch.
func conflict(p *Patch, stderr string, err error) error {
	known := map[string]bool{}
	for _, path := range p.Paths() {
		known[path] = true
	}
	seen := map[string]bool{}
	var files []string
	for _, m := range gitErrorLine.FindAllStringSubmatch(stderr, -1) {
		if n := m[1]; known[n] && !seen[n] {
			seen[n] = true
			files = append(files, n)
		}
	}
	msg := strings.TrimSpace(stderr)
	if msg == "" {
		msg = err.Error()
	}
	if len(msg) > 4096 {
		msg = msg[:4096] + "..."
	}
	return &ConflictError{Files: files, Message: msg}
}

type limitedBuffer struct {
	b   *bytes.Buffer
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.max - l.b.Len(); room > 0 {
		if len(p) > room {
			l.b.Write(p[:room])
		} else {
			l.b.Write(p)
		}
	}
	return len(p), nil
}

// Branch records the guest's tree (base.Tree with p applied) as a commit
// whose parent is base.Head, on a new branch refs/heads/NAME. The user's
// work tree, index, HEAD and current branch are not touched (a temporary
// index is used). It refuses an existing branch (errdefs.ErrAlreadyExists)
// and returns the new commit.
func Branch(ctx context.Context, repo string, p *Patch, name string, base Base) (string, error) {
	root, err := Root(ctx, repo)
	if err != nil {
		return "", err
	}
	g := gitCmd{dir: root}
	if _, err := g.run(ctx, "check-ref-format", "--branch", name); err != nil || strings.HasPrefix(name, "-") || name == "HEAD" {
		return "", errdefs.InvalidArgument(fmt.Sprintf("%q is not a valid branch name", name))
	}
	ref := "refs/heads/" + name
	if _, err := g.run(ctx, "rev-parse", "-q", "--verify", ref); err == nil {
		return "", errdefs.AlreadyExists(fmt.Sprintf("branch %s already exists", name))
	}
	if base.Tree == "" {
		return "", errdefs.InvalidArgument("no base tree: the workspace's Info is needed to export as a branch")
	}
	if _, err := g.run(ctx, "cat-file", "-e", base.Tree+"^{tree}"); err != nil {
		return "", errdefs.NotFound(fmt.Sprintf("the shipped tree %s is not in %s (was the workspace prepared from another clone?)", base.Tree, root))
	}
	if base.Head != "" {
		if _, err := g.run(ctx, "cat-file", "-e", base.Head+"^{commit}"); err != nil {
			return "", errdefs.NotFound(fmt.Sprintf("the shipped commit %s is not in %s", base.Head, root))
		}
	}
	if !p.Empty() {
		links, err := treeLinks(ctx, g, base.Tree)
		if err != nil {
			return "", err
		}
		if err := checkPlacement(p, func(p string) (bool, error) { return links[p], nil }, "the shipped tree"); err != nil {
			return "", err
		}
	}
	tmp, err := os.MkdirTemp("", "banger-branch-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	gi := gitCmd{dir: root, env: []string{"GIT_INDEX_FILE=" + filepath.Join(tmp, "index")}}
	if _, err := gi.run(ctx, "read-tree", base.Tree); err != nil {
		return "", fmt.Errorf("workspace: branch: %w", err)
	}
	if !p.Empty() {
		var stderr bytes.Buffer
		ga := gi
		ga.stdin, ga.errw = p.reader(), &limitedBuffer{b: &stderr, max: 1 << 20}
		if _, err := ga.run(ctx, append(applyConfig, "apply", "--cached", "--whitespace=nowarn", "-")...); err != nil {
			return "", conflict(p, stderr.String(), err)
		}
	}
	tree, err := gi.line(ctx, "write-tree")
	if err != nil {
		return "", fmt.Errorf("workspace: branch: %w", err)
	}
	gc := g
	if _, err := g.run(ctx, "var", "GIT_COMMITTER_IDENT"); err != nil {
		gc.env = []string{"GIT_AUTHOR_NAME=banger", "GIT_AUTHOR_EMAIL=banger@localhost",
			"GIT_COMMITTER_NAME=banger", "GIT_COMMITTER_EMAIL=banger@localhost"}
	}
	args := []string{"commit-tree", "--no-gpg-sign", tree, "-m", branchMessage(p)}
	if base.Head != "" {
		args = append(args, "-p", base.Head)
	}
	commit, err := gc.line(ctx, args...)
	if err != nil {
		return "", fmt.Errorf("workspace: branch: %w", err)
	}
	// An empty old value: the update fails if the branch appeared since.
	if _, err := g.run(ctx, "update-ref", "-m", "banger: workspace export", ref, commit, ""); err != nil {
		if _, e := g.run(ctx, "rev-parse", "-q", "--verify", ref); e == nil {
			return "", errdefs.AlreadyExists(fmt.Sprintf("branch %s already exists", name))
		}
		return "", fmt.Errorf("workspace: branch: %w", err)
	}
	return commit, nil
}

func branchMessage(p *Patch) string {
	n := 0
	if p != nil {
		n = len(p.Changes)
	}
	return fmt.Sprintf("banger: workspace export\n\n%d files changed in the VM.\n", n)
}

// treeLinks lists the symlinks of tree.
func treeLinks(ctx context.Context, g gitCmd, tree string) (map[string]bool, error) {
	out, err := g.run(ctx, "ls-tree", "-r", "-z", "--full-tree", tree)
	if err != nil {
		return nil, fmt.Errorf("workspace: %w", err)
	}
	links := map[string]bool{}
	for _, rec := range splitZ(out) {
		if meta, path, ok := strings.Cut(rec, "\t"); ok && strings.HasPrefix(meta, "120000 ") {
			links[path] = true
		}
	}
	return links, nil
}

// SaveRescue saves p inside repo's git dir, as
// <git-common-dir>/banger/rescue-<label>-<time>.patch, so that nothing is
// lost when a VM is removed with unexported edits. It returns the file's
// path and a diffstat for people (git apply --stat).
func SaveRescue(ctx context.Context, repo, label string, p *Patch) (string, string, error) {
	path, err := saveRescue(ctx, repo, label, func(w io.Writer) error { return WritePatch(p, w) })
	if err != nil {
		return "", "", err
	}
	stat, err := Diffstat(ctx, p)
	return path, stat, err
}

// SaveRescueStream saves the export output read from r, unparsed and
// unvalidated, like SaveRescue: for output that ParsePatch refused (too
// large, or rejected) which must not be lost either. Nothing applies it;
// a person reads it. At most limit bytes are kept (<= 0: no limit); more
// is an error after the file is written, so that the caller knows it is
// incomplete.
func SaveRescueStream(ctx context.Context, repo, label string, r io.Reader, limit int64) (string, error) {
	var n int64
	path, err := saveRescue(ctx, repo, label, func(w io.Writer) error {
		var err error
		if limit > 0 {
			n, err = io.Copy(w, io.LimitReader(r, limit+1))
		} else {
			n, err = io.Copy(w, r)
		}
		return err
	})
	if err == nil && limit > 0 && n > limit {
		return path, fmt.Errorf("workspace: rescue patch %s truncated at %d bytes", path, limit)
	}
	return path, err
}

func saveRescue(ctx context.Context, repo, label string, write func(io.Writer) error) (string, error) {
	root, err := Root(ctx, repo)
	if err != nil {
		return "", err
	}
	g := gitCmd{dir: root}
	common, err := g.line(ctx, "rev-parse", "--path-format=absolute", "--git-common-dir")
	if err != nil {
		return "", fmt.Errorf("workspace: %w", err)
	}
	dir := filepath.Join(common, "banger")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("workspace: %w", err)
	}
	base := "rescue-" + safeLabel(label) + "-" + time.Now().UTC().Format("20060102T150405Z")
	var f *os.File
	var path string
	for i := 0; ; i++ {
		path = filepath.Join(dir, base+".patch")
		if i > 0 {
			path = filepath.Join(dir, fmt.Sprintf("%s-%d.patch", base, i))
		}
		f, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrExist) || i > 100 {
			return "", fmt.Errorf("workspace: save rescue patch: %w", err)
		}
	}
	err = write(f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return path, fmt.Errorf("workspace: save rescue patch %s: %w", path, err)
	}
	return path, nil
}

// Diffstat is git apply --stat of the patch ("" for an empty patch).
func Diffstat(ctx context.Context, p *Patch) (string, error) {
	if p.Empty() {
		return "", nil
	}
	return diffstat(ctx, p.reader())
}

// DiffstatOf is git apply --stat of a patch read from r (a checked one:
// ScanPatch), without holding it in memory.
func DiffstatOf(ctx context.Context, r io.Reader) (string, error) { return diffstat(ctx, r) }

func diffstat(ctx context.Context, r io.Reader) (string, error) {
	dir, err := os.MkdirTemp("", "banger-patch-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir)
	g := gitCmd{dir: dir, stdin: r, env: []string{"GIT_CEILING_DIRECTORIES=" + filepath.Dir(dir)}}
	out, err := g.run(ctx, "apply", "--stat", "-")
	if err != nil {
		return "", fmt.Errorf("workspace: diffstat: %w", err)
	}
	return string(out), nil
}

func safeLabel(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
		if b.Len() >= 64 {
			break
		}
	}
	if b.Len() == 0 {
		return "vm"
	}
	return strings.TrimLeft(b.String(), ".")
}
