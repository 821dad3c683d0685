package workspace

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// InfoFile is where the workspace Info is written inside the shipped .git.
const InfoFile = "banger-workspace.json"

// BaseRef names, in the guest repository, the commit whose tree is exactly
// what was shipped. Export diffs against it.
const BaseRef = "refs/banger/base"

// baseIndexFile is the index of the base tree inside the shipped .git,
// with stat data matching the shipped files (export starts from a copy).
const baseIndexFile = "banger-base.index"

// Base identifies what was shipped.
type Base struct {
	Head   string `json:"head,omitempty"`   // the host's HEAD commit ("" in a repo without commits)
	Branch string `json:"branch,omitempty"` // the host's current branch (refs/heads/...), "" when detached
	Tree   string `json:"tree"`             // the tree of the shipped files
	Commit string `json:"commit"`           // a commit of Tree whose parent is Head (BaseRef in the guest)
}

// Info describes a prepared workspace. It is returned by BuildDisk and
// written into the shipped .git as InfoFile.
type Info struct {
	Version          int       `json:"version"`
	Repo             string    `json:"repo"` // host work-tree root
	Base             Base      `json:"base"`
	ObjectFormat     string    `json:"object_format"` // sha1 or sha256
	Files            int       `json:"files"`
	Bytes            int64     `json:"bytes"`
	Untracked        int       `json:"untracked"`
	IncludeUntracked bool      `json:"include_untracked"`
	Submodules       []string  `json:"submodules,omitempty"`
	Created          time.Time `json:"created"`
}

// staging is a prepared tree (files + .git) in a temporary directory.
type staging struct {
	work   string // temporary directory, removed by close
	tree   string // work/tree: the root of what is shipped
	info   Info
	linked int
	copied int
	// timings
	tStage, tGit time.Duration
	// cleaned, if set, is called once the directory is gone.
	cleaned func()
}

// close removes the staging directory: it is renamed aside at once and
// removed in the background (removing 11,000 entries takes ~0.2 s that
// nobody needs to wait for); what a process leaves when it exits first is
// swept after the next close in the same tmpDir (not before a prepare: it
// would compete with staging).
func (s *staging) close() {
	if s == nil || s.work == "" {
		return
	}
	work, cleaned := s.work, s.cleaned
	s.work, s.cleaned = "", nil
	if cleaned == nil {
		cleaned = func() {}
	}
	trash := filepath.Join(filepath.Dir(work), trashPrefix+filepath.Base(work))
	if err := os.Rename(work, trash); err != nil {
		os.RemoveAll(work)
		cleaned()
		return
	}
	background.wg.Add(1)
	go func() {
		defer background.wg.Done()
		os.RemoveAll(trash)
		sweep(filepath.Dir(trash))
		cleaned()
	}()
}

const trashPrefix = ".trash-"

// sweep removes what earlier runs left in tmpDir.
func sweep(tmpDir string) {
	entries, err := os.ReadDir(tmpDir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), trashPrefix) {
			os.RemoveAll(filepath.Join(tmpDir, e.Name()))
		}
	}
}

// hostRepo is what prepare needs to know about the user's repository.
type hostRepo struct {
	root      string
	gitDir    string // per-worktree git dir (holds index, HEAD)
	commonDir string // objects, info/exclude
	format    string // sha1 | sha256
	head      string // "" when unborn
	branch    string // refs/heads/X, "" when detached
	parents   bool   // head has parents (its history is not shipped)
}

func inspect(ctx context.Context, root string) (*hostRepo, error) {
	g := gitCmd{dir: root}
	// One git for all of it when HEAD is a commit (else rev-parse fails
	// on HEAD^{commit}, and the steps below find out one by one).
	if out, err := g.line(ctx, "rev-parse", "--path-format=absolute", "--git-dir", "--git-common-dir", "--show-object-format",
		"HEAD^{commit}", "HEAD^@", "--symbolic-full-name", "HEAD"); err == nil {
		l := strings.Split(out, "\n")
		if len(l) >= 5 {
			h := &hostRepo{root: root, gitDir: l[0], commonDir: l[1], format: l[2], head: l[3], parents: len(l) > 5}
			if b := l[len(l)-1]; b != "HEAD" { // HEAD: detached
				h.branch = b
			}
			return h, nil
		}
	}
	out, err := g.line(ctx, "rev-parse", "--path-format=absolute", "--git-dir", "--git-common-dir", "--show-object-format")
	if err != nil {
		return nil, fmt.Errorf("inspect repository %s: %w", root, err)
	}
	lines := strings.Split(out, "\n")
	if len(lines) != 3 {
		return nil, fmt.Errorf("inspect repository %s: unexpected rev-parse output %q", root, out)
	}
	h := &hostRepo{root: root, gitDir: lines[0], commonDir: lines[1], format: lines[2]}
	if h.head, err = g.line(ctx, "rev-parse", "-q", "--verify", "HEAD^{commit}"); err != nil {
		h.head = "" // no commits yet
	}
	if h.branch, err = g.line(ctx, "symbolic-ref", "-q", "HEAD"); err != nil {
		h.branch = "" // detached
	}
	if h.head != "" {
		parents, err := g.line(ctx, "rev-list", "--parents", "-n", "1", h.head)
		if err != nil {
			return nil, fmt.Errorf("inspect repository %s: %w", root, err)
		}
		h.parents = len(strings.Fields(parents)) > 1
	}
	return h, nil
}

// prepare stages set's files under a new temporary directory in tmpDir
// (hard links when possible) and builds the .git shipped with them.
func prepare(ctx context.Context, repo string, set *FileSet, tmpDir string) (_ *staging, err error) {
	if set == nil {
		return nil, errors.New("workspace: nil FileSet")
	}
	// A set's Root is its repository's top level (List found it): no
	// need to ask git again for the same path.
	root := set.Root
	if root == "" || filepath.Clean(repo) != root {
		var err error
		if root, err = Root(ctx, repo); err != nil {
			return nil, err
		}
	}
	if set.Root != "" && filepath.Clean(set.Root) != root {
		return nil, fmt.Errorf("workspace: file set is of %s, not %s", set.Root, root)
	}
	h, err := inspect(ctx, root)
	if err != nil {
		return nil, err
	}
	if tmpDir == "" {
		tmpDir = filepath.Join(h.commonDir, "banger", "tmp")
	}
	if err := os.MkdirAll(tmpDir, 0o755); err != nil {
		return nil, fmt.Errorf("workspace: %w", err)
	}
	work, err := os.MkdirTemp(tmpDir, "stage-")
	if err != nil {
		return nil, fmt.Errorf("workspace: %w", err)
	}
	s := &staging{work: work, tree: filepath.Join(work, "tree")}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	t0 := time.Now()
	if err := s.stageFiles(root, set); err != nil {
		return nil, err
	}
	s.tStage = time.Since(t0)
	t0 = time.Now()
	if err := s.buildGit(ctx, h, set); err != nil {
		return nil, err
	}
	if err := s.writeManifest(set); err != nil {
		return nil, err
	}
	s.tGit = time.Since(t0)
	return s, nil
}

// stageFiles links (or copies) every file of set into s.tree.
func (s *staging) stageFiles(root string, set *FileSet) error {
	if err := os.MkdirAll(s.tree, 0o755); err != nil {
		return fmt.Errorf("workspace: stage: %w", err)
	}
	made := map[string]bool{".": true}
	mkdirs := func(rel string) error {
		if made[rel] {
			return nil
		}
		if err := os.MkdirAll(filepath.Join(s.tree, filepath.FromSlash(rel)), 0o755); err != nil {
			return fmt.Errorf("workspace: stage: %w", err)
		}
		for d := rel; d != "." && !made[d]; d = filepath.ToSlash(filepath.Dir(d)) {
			made[d] = true
		}
		return nil
	}
	for _, sub := range set.Submodules {
		if err := mkdirs(sub); err != nil {
			return err
		}
	}
	for _, f := range set.Files {
		if err := mkdirs(filepath.ToSlash(filepath.Dir(f.Path))); err != nil {
			return err
		}
	}
	for _, f := range set.Files {
		src := filepath.Join(root, filepath.FromSlash(f.Path))
		dst := filepath.Join(s.tree, filepath.FromSlash(f.Path))
		if err := os.Link(src, dst); err == nil {
			s.linked++
			continue
		}
		if err := copyEntry(src, dst); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // removed since List: not shipped
			}
			return fmt.Errorf("workspace: stage %s: %w", f.Path, err)
		}
		s.copied++
	}
	return nil
}

// copyEntry copies a regular file or symlink, keeping mode and mtime (git's
// stat data in the shipped index must match).
func copyEntry(src, dst string) error {
	fi, err := os.Lstat(src)
	if err != nil {
		return err
	}
	mt := unix.NsecToTimespec(fi.ModTime().UnixNano())
	if fi.Mode()&fs.ModeSymlink != 0 {
		target, err := os.Readlink(src)
		if err != nil {
			return err
		}
		if err := os.Symlink(target, dst); err != nil {
			return err
		}
		return unix.UtimesNanoAt(unix.AT_FDCWD, dst, []unix.Timespec{mt, mt}, unix.AT_SYMLINK_NOFOLLOW)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("not a regular file")
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fi.Mode().Perm())
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Chmod(dst, fi.Mode().Perm()); err != nil {
		return err
	}
	return os.Chtimes(dst, fi.ModTime(), fi.ModTime())
}

// entryStat is what the guest's minimal stat check compares.
type entryStat struct {
	mtimeSec int64
	size     int64
}

// parseIndexStat reads `git ls-files --debug -z`: each path (NUL-ended) is
// followed by five indented lines (ctime, mtime, dev/ino, uid/gid,
// size/flags).
func parseIndexStat(out []byte) map[string]entryStat {
	m := map[string]entryStat{}
	for len(out) > 0 {
		nul := bytes.IndexByte(out, 0)
		if nul < 0 {
			break
		}
		path := string(out[:nul])
		out = out[nul+1:]
		var st entryStat
		for i := 0; i < 5 && len(out) > 0; i++ {
			nl := bytes.IndexByte(out, '\n')
			if nl < 0 {
				nl = len(out) - 1
			}
			line := strings.TrimSpace(string(out[:nl]))
			out = out[nl+1:]
			switch {
			case strings.HasPrefix(line, "mtime: "):
				sec, _, _ := strings.Cut(strings.TrimPrefix(line, "mtime: "), ":")
				st.mtimeSec, _ = strconv.ParseInt(sec, 10, 64)
			case strings.HasPrefix(line, "size: "):
				n, _, _ := strings.Cut(strings.TrimPrefix(line, "size: "), "\t")
				st.size, _ = strconv.ParseInt(n, 10, 64)
			}
		}
		m[path] = st
	}
	return m
}

// untie handles the paths that differ from the index (dirty) but whose
// size and mtime second equal their index entry's: the guest, which
// compares only those, would take them for clean. Such a file is shipped
// as a copy one second newer.
func (s *staging) untie(root string, dirty []string, index map[string]entryStat) error {
	for _, p := range dirty {
		dst := filepath.Join(s.tree, filepath.FromSlash(p))
		fi, err := os.Lstat(dst)
		if err != nil || !(fi.Mode().IsRegular() || fi.Mode()&fs.ModeSymlink != 0) {
			continue // not shipped
		}
		e, ok := index[p]
		if !ok || e.size != fi.Size() || e.mtimeSec != fi.ModTime().Unix() {
			continue // the guest sees the difference by itself
		}
		// Never touch the staged inode itself when it is the user's file.
		src := filepath.Join(root, filepath.FromSlash(p))
		sfi, err := os.Lstat(src)
		if err != nil {
			continue // gone since: leave the staged entry alone
		}
		if os.SameFile(sfi, fi) {
			if err := os.Remove(dst); err != nil {
				return fmt.Errorf("workspace: stage %s: %w", p, err)
			}
			if err := copyEntry(src, dst); err != nil {
				return fmt.Errorf("workspace: stage %s: %w", p, err)
			}
			s.linked--
			s.copied++
		}
		mt := unix.NsecToTimespec(fi.ModTime().Add(time.Second).UnixNano())
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, dst, []unix.Timespec{mt, mt}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("workspace: stage %s: %w", p, err)
		}
	}
	return nil
}

// indexTweaks make git rewrite an index it reads as a plain, self-contained
// one: no split index (its shared part lives in the host's git dir), no
// untracked cache or fsmonitor data (host-specific). trustctime=false:
// hard-linking a file changes its ctime, and the staged files would
// otherwise all be hashed again.
var indexTweaks = []string{"-c", "core.trustctime=false", "-c", "core.splitIndex=false", "-c", "core.untrackedCache=false", "-c", "core.looseCompression=1", "-c", "pack.compression=1"}

// buildGit writes s.tree/.git.
func (s *staging) buildGit(ctx context.Context, h *hostRepo, set *FileSet) error {
	gd := filepath.Join(s.tree, ".git")
	for _, d := range []string{"objects/pack", "objects/info", "refs/heads", "refs/tags", "refs/banger", "info"} {
		if err := os.MkdirAll(filepath.Join(gd, filepath.FromSlash(d)), 0o755); err != nil {
			return fmt.Errorf("workspace: %w", err)
		}
	}
	hostIndex := filepath.Join(h.gitDir, "index")
	_, statErr := os.Stat(hostIndex)
	haveIndex := statErr == nil

	onStaged := func(index string) gitCmd {
		return gitCmd{dir: s.tree, env: []string{
			"GIT_DIR=" + h.gitDir, "GIT_WORK_TREE=" + s.tree, "GIT_INDEX_FILE=" + index,
		}}
	}
	// The guest's index: the host's, stat data refreshed against the
	// staged files so that the guest trusts them without hashing.
	var indexTree string
	clean := false // the shipped index is exactly the staged files
	if haveIndex {
		guestIndex := filepath.Join(gd, "index")
		if err := copyFile(hostIndex, guestIndex); err != nil {
			return fmt.Errorf("workspace: copy index: %w", err)
		}
		gi := onStaged(guestIndex)
		if _, err := gi.run(ctx, append(indexTweaks, "update-index", "--no-split-index")...); err != nil {
			return fmt.Errorf("workspace: unsplit the shipped index: %w", err)
		}
		if _, err := gi.run(ctx, append(indexTweaks, "update-index", "-q", "--ignore-missing", "--unmerged", "--refresh")...); err != nil {
			// Exit 1 lists the entries that differ: expected (uncommitted edits).
			if ec := exitCode(err); ec != 1 {
				return fmt.Errorf("workspace: refresh the shipped index: %w", err)
			}
		}
		// The guest compares size and whole-second mtime only: a file
		// edited after it was staged, within the same second and to the
		// same size, would look clean there. Ship such files as copies
		// with a later mtime.
		dirty, err := gi.run(ctx, append(indexTweaks, "diff-files", "--name-only", "-z")...)
		if err != nil {
			return fmt.Errorf("workspace: compare the shipped index: %w", err)
		}
		d := splitZ(dirty)
		clean = len(d) == 0
		if len(d) > 0 {
			dbg, err := gi.run(ctx, append(indexTweaks, "ls-files", "--debug", "-z")...)
			if err != nil {
				return fmt.Errorf("workspace: read the shipped index: %w", err)
			}
			if err := s.untie(h.root, d, parseIndexStat(dbg)); err != nil {
				return err
			}
		}
		// Fills the cache tree and writes its trees, so every tree the
		// index names is shipped. Fails (harmlessly) with unmerged entries.
		if t, err := gi.line(ctx, append(indexTweaks, "write-tree")...); err == nil {
			indexTree = t
		}
	}

	// The base: the host's index, updated to exactly the staged files.
	// When the shipped index already is (nothing differs from the staged
	// files, none untracked or submodule shipped, its tree written), the
	// base is a copy of it: three git commands fewer.
	baseIndex := filepath.Join(gd, baseIndexFile)
	var baseTree string
	if clean && indexTree != "" && set.Untracked == 0 && len(set.Submodules) == 0 {
		if err := copyFile(filepath.Join(gd, "index"), baseIndex); err != nil {
			return fmt.Errorf("workspace: copy index: %w", err)
		}
		baseTree = indexTree
	} else {
		if haveIndex {
			if err := copyFile(hostIndex, baseIndex); err != nil {
				return fmt.Errorf("workspace: copy index: %w", err)
			}
		}
		gb := onStaged(baseIndex)
		if haveIndex {
			if _, err := gb.run(ctx, append(indexTweaks, "update-index", "--no-split-index")...); err != nil {
				return fmt.Errorf("workspace: unsplit the base index: %w", err)
			}
		}
		if _, err := gb.run(ctx, append(indexTweaks, "add", "-A")...); err != nil {
			return fmt.Errorf("workspace: index the shipped files: %w", err)
		}
		var err error
		if baseTree, err = gb.line(ctx, append(indexTweaks, "write-tree")...); err != nil {
			return fmt.Errorf("workspace: write the shipped tree: %w", err)
		}
	}

	// The base commit: tree = shipped files, parent = HEAD.
	g := gitCmd{dir: h.root, env: []string{
		"GIT_AUTHOR_NAME=banger", "GIT_AUTHOR_EMAIL=banger@localhost",
		"GIT_COMMITTER_NAME=banger", "GIT_COMMITTER_EMAIL=banger@localhost",
	}}
	args := []string{"commit-tree", "--no-gpg-sign", baseTree, "-m", "banger: shipped work tree (base of workspace export)"}
	if h.head != "" {
		args = append(args, "-p", h.head)
	}
	baseCommit, err := g.line(ctx, args...)
	if err != nil {
		return fmt.Errorf("workspace: record the shipped tree: %w", err)
	}

	// Objects: HEAD (without history), the base, the index's trees.
	revs := []string{"rev-list", "--objects", "--no-walk", baseCommit}
	if h.head != "" {
		revs = append(revs, h.head)
	}
	objs, err := g.run(ctx, revs...)
	if err != nil {
		return fmt.Errorf("workspace: list objects: %w", err)
	}
	if indexTree != "" && indexTree != baseTree {
		more, err := g.run(ctx, "rev-list", "--objects", indexTree)
		if err != nil {
			return fmt.Errorf("workspace: list objects: %w", err)
		}
		objs = append(objs, more...)
	}
	// Written through the staged object directory (the host's as an
	// alternate): pack-objects renames its temporary file into place, which
	// fails across filesystems.
	pack := gitCmd{dir: h.root, stdin: bytes.NewReader(objs), env: []string{
		"GIT_OBJECT_DIRECTORY=" + filepath.Join(gd, "objects"),
		"GIT_ALTERNATE_OBJECT_DIRECTORIES=" + filepath.Join(h.commonDir, "objects"),
	}}
	// No delta search (--window=0): the objects are one tree's (HEAD's
	// without history, the base's, the index's), with little to delta
	// against, and the search was most of the host's cost of shipping:
	// 60-175 ms of 190 on this repository's 977 objects for a pack 0.2%
	// smaller. Deltas already in the host's packs are still reused.
	if _, err := pack.run(ctx, "-c", "pack.compression=0", "pack-objects", "-q", "--window=0", filepath.Join(gd, "objects", "pack", "pack")); err != nil {
		return fmt.Errorf("workspace: pack objects: %w", err)
	}

	// Refs.
	files := map[string]string{
		"refs/banger/base": baseCommit + "\n",
		"description":      "banger workspace\n",
	}
	switch {
	case h.branch != "":
		files["HEAD"] = "ref: " + h.branch + "\n"
		if h.head != "" {
			files[h.branch] = h.head + "\n"
		}
	case h.head != "":
		files["HEAD"] = h.head + "\n"
	default:
		files["HEAD"] = "ref: refs/heads/main\n"
	}
	if h.parents {
		files["shallow"] = h.head + "\n"
	}
	files["config"] = guestConfig(h.format)
	files["info/exclude"] = hostExcludes(ctx, h)

	s.info = Info{
		Version:          1,
		Repo:             h.root,
		Base:             Base{Head: h.head, Branch: h.branch, Tree: baseTree, Commit: baseCommit},
		ObjectFormat:     h.format,
		IncludeUntracked: set.IncludeUntracked,
		Submodules:       set.Submodules,
		Created:          time.Now().UTC().Truncate(time.Second),
	}
	for _, f := range set.Files {
		s.info.Files++
		s.info.Bytes += f.Size
		if f.Untracked {
			s.info.Untracked++
		}
	}
	js, err := json.MarshalIndent(s.info, "", "  ")
	if err != nil {
		return err
	}
	files[InfoFile] = string(js) + "\n"
	for name, content := range files {
		p := filepath.Join(gd, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("workspace: %w", err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return fmt.Errorf("workspace: %w", err)
		}
	}
	return nil
}

// guestConfig is the whole config of the shipped repository: nothing of the
// host's (remotes, credentials, hooks, aliases) goes in.
func guestConfig(format string) string {
	var b strings.Builder
	b.WriteString("[core]\n")
	if format == "sha256" {
		b.WriteString("\trepositoryformatversion = 1\n")
	} else {
		b.WriteString("\trepositoryformatversion = 0\n")
	}
	b.WriteString("\tfilemode = true\n\tbare = false\n\tlogallrefupdates = true\n\tsymlinks = true\n\tignorecase = false\n")
	// Inode, device, owner and ctime differ from the host's: compare size
	// and whole-second mtime only, or the first status hashes every file.
	b.WriteString("\tcheckStat = minimal\n\ttrustctime = false\n")
	b.WriteString("[gc]\n\tauto = 0\n")
	if format == "sha256" {
		b.WriteString("[extensions]\n\tobjectformat = sha256\n")
	}
	return b.String()
}

// hostExcludes gathers the host's non-versioned ignore patterns
// ($GIT_COMMON_DIR/info/exclude and core.excludesFile), so that the guest
// ignores (and export skips) what the host ignores.
func hostExcludes(ctx context.Context, h *hostRepo) string {
	const max = 1 << 20
	var b strings.Builder
	b.WriteString("# banger: the host's info/exclude and core.excludesFile patterns\n")
	read := func(p string) {
		data, err := os.ReadFile(p)
		if err != nil || len(data) > max {
			return
		}
		fmt.Fprintf(&b, "# from %s\n%s\n", p, bytes.TrimRight(data, "\n"))
	}
	read(filepath.Join(h.commonDir, "info", "exclude"))
	if p, err := (gitCmd{dir: h.root}).line(ctx, "config", "--path", "--get", "core.excludesFile"); err == nil && p != "" {
		read(p)
	} else if x := os.Getenv("XDG_CONFIG_HOME"); x != "" {
		read(filepath.Join(x, "git", "ignore"))
	} else if home, err := os.UserHomeDir(); err == nil {
		read(filepath.Join(home, ".config", "git", "ignore"))
	}
	return b.String()
}

func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o644)
}
