package workspace

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/banger-sh/banger/internal/version"
)

// The work-disk cache keeps, per work tree, the last work disk built (with
// its pack and what BuildDisk reported), so that shipping a tree that has
// not changed since costs a List and a few stats instead of staging, ten
// git commands and mkfs (~0.2 s on this repository, seconds on a large
// one). It lives in the user's cache directory (the CLI's, as the
// repository's owner) and is only a shortcut: the daemon copies the disk
// from the descriptor as always.
//
// An entry is used only when everything the disk is made of is unchanged:
// each shipped file's index entry (mode, object id, stage), its lstat
// identity (device, inode, size, mode, mtime and ctime in ns, the link
// target), the files' list, HEAD and the ref it names, the stat of the
// packed refs, shallow file, git configuration, attribute and ignore files
// (core.excludesFile's too), GIT_* variables, the slot size and banger's
// version. No git runs for the lookup. A file modified in place changes its mtime and ctime;
// one restored with an old mtime still changes its ctime. Like git's own
// racy-clean rule, a disk is not recorded when any file was modified within
// the second before the listing (an edit in the same clock tick would leave
// the stat unchanged), nor when any file's stat changed between the listing
// and the end of the build.
const (
	cacheFormat = "1"
	// maxCachedBytes: larger trees are not kept (the image holds a copy of
	// every file).
	maxCachedBytes = 256 << 20
	// maxCachedTrees: work trees kept, most recently used first.
	maxCachedTrees = 8
	racyWindow     = time.Second
)

// diskCache is the cache directory of one work tree.
type diskCache struct {
	dir string
}

func openDiskCache(root, tree string) *diskCache {
	sum := sha256.Sum256([]byte(tree))
	return &diskCache{dir: filepath.Join(root, hex.EncodeToString(sum[:12]))}
}

// cacheEntry is what a cached disk was built as (key.json).
type cacheEntry struct {
	Key  string `json:"key"`
	Info Info   `json:"info"`
	Pack bool   `json:"pack"`
	// Excludes is core.excludesFile as git resolved it ("" when unset),
	// ExcludesStat its stat (excludesStat).
	Excludes     string `json:"excludes,omitempty"`
	ExcludesStat string `json:"excludes_stat,omitempty"`
	Created      string `json:"created"`
}

func (c *diskCache) paths(key string) (disk, pack, meta string) {
	b := filepath.Join(c.dir, key)
	return b + ".ext4", b + ".pack", b + ".json"
}

// cacheKey digests everything a work disk of set (of size bytes) is made of,
// without running git: HEAD and the ref it names are read, the rest is
// stat. stats gives each file's stat (set's own, or as seen again later).
func cacheKey(set *FileSet, size int64, stats []fileStat) string {
	d := sha256.New()
	put := func(parts ...any) {
		for _, p := range parts {
			fmt.Fprint(d, p)
			d.Write([]byte{0})
		}
		d.Write([]byte{'\n'})
	}
	put("banger work disk", cacheFormat, version.Version, version.Commit, size)
	put(set.Root, set.gitDir, set.commonDir, set.IncludeUntracked, strings.Join(set.Submodules, "\x00"), strings.Join(set.Skipped, "\x00"))
	head, _ := os.ReadFile(filepath.Join(set.gitDir, "HEAD"))
	put("HEAD", string(head))
	if ref, ok := strings.CutPrefix(strings.TrimSpace(string(head)), "ref: "); ok && !strings.Contains(ref, "..") {
		b, _ := os.ReadFile(filepath.Join(set.commonDir, filepath.FromSlash(ref)))
		put(ref, string(b))
	}
	statPaths(put, gitFiles(set)...)
	env := os.Environ()
	sort.Strings(env)
	for _, kv := range env {
		if strings.HasPrefix(kv, "GIT_") || strings.HasPrefix(kv, "XDG_CONFIG_HOME=") || strings.HasPrefix(kv, "HOME=") {
			put(kv)
		}
	}
	for i, f := range set.Files {
		st := stats[i]
		put(f.Path, f.index, uint32(f.Mode), f.Size, f.Link, f.Untracked, f.Submodule, st.dev, st.ino, st.mtime, st.ctime)
	}
	return hex.EncodeToString(d.Sum(nil))
}

// gitFiles are the files besides the tree's that can change what the
// host's git makes of it: refs, history cut-offs, configuration (filters,
// attributes, line endings, the object format), ignore patterns.
func gitFiles(set *FileSet) []string {
	paths := []string{
		filepath.Join(set.commonDir, "packed-refs"), filepath.Join(set.commonDir, "reftable", "tables.list"),
		filepath.Join(set.commonDir, "shallow"), filepath.Join(set.commonDir, "info", "grafts"),
		filepath.Join(set.commonDir, "config"), filepath.Join(set.gitDir, "config.worktree"),
		filepath.Join(set.commonDir, "info", "attributes"), filepath.Join(set.commonDir, "info", "exclude"),
		"/etc/gitconfig",
	}
	if home, err := os.UserHomeDir(); err == nil {
		paths = append(paths, filepath.Join(home, ".gitconfig"))
		for _, f := range []string{"config", "attributes", "ignore"} {
			paths = append(paths, filepath.Join(home, ".config", "git", f))
		}
	}
	if x := os.Getenv("XDG_CONFIG_HOME"); x != "" {
		for _, f := range []string{"config", "attributes", "ignore"} {
			paths = append(paths, filepath.Join(x, "git", f))
		}
	}
	return paths
}

// statPaths puts each path's stat (or its absence).
func statPaths(put func(...any), paths ...string) {
	for _, p := range paths {
		if fi, err := os.Stat(p); err == nil {
			st := statOf(fi)
			put(p, fi.Size(), st.dev, st.ino, st.mtime, st.ctime)
		} else {
			put(p, "-")
		}
	}
}

// excludesStat digests core.excludesFile's stat (the file the host's git
// configuration names; its name is known only to git config).
func excludesStat(path string) string {
	d := sha256.New()
	statPaths(func(parts ...any) { fmt.Fprintln(d, parts...) }, path)
	return hex.EncodeToString(d.Sum(nil))
}

func listedStats(set *FileSet) []fileStat {
	st := make([]fileStat, len(set.Files))
	for i, f := range set.Files {
		st[i] = f.stat
	}
	return st
}

// lookup opens the cached disk and pack of key, if there are.
func (c *diskCache) lookup(key string) (*cacheEntry, *os.File, *os.File) {
	diskPath, packPath, metaPath := c.paths(key)
	b, err := os.ReadFile(metaPath)
	if err != nil {
		return nil, nil, nil
	}
	var e cacheEntry
	if json.Unmarshal(b, &e) != nil || e.Key != key || (e.Excludes != "" && excludesStat(e.Excludes) != e.ExcludesStat) {
		return nil, nil, nil
	}
	disk, err := os.Open(diskPath)
	if err != nil {
		return nil, nil, nil
	}
	var pack *os.File
	if e.Pack {
		if pack, err = os.Open(packPath); err != nil {
			disk.Close()
			return nil, nil, nil
		}
	}
	now := time.Now()
	os.Chtimes(metaPath, now, now) // most recently used
	os.Chtimes(c.dir, now, now)
	return &e, disk, pack
}

// cacheRecorded is told how each recording ended, beforeRecord is called
// just before one (tests).
var (
	cacheRecorded = func(error) {}
	beforeRecord  = func() {}
)

// pending is a disk being built into the cache directory, recorded once
// the build's staging is gone (its hard links changed the files' ctime)
// and the caller is done with the files.
type pending struct {
	c           *diskCache
	disk, pack  string
	listed      time.Time
	stagingGone chan struct{}
	once        sync.Once

	mu        sync.Mutex // held by record and abandon
	abandoned bool
}

// background is the work a ship leaves running after it returns (removing
// the build's staging, recording the disk in the cache): a process must
// Drain it before it exits, or a disk being recorded stays behind as a
// new-* file until a later ship's sweep.
var background struct {
	wg      sync.WaitGroup
	mu      sync.Mutex
	pending map[*pending]bool
}

// Drain waits up to d for the background work of earlier ships, then
// removes the disks still waiting to be recorded (the next ship of their
// tree builds again). It reports whether everything finished.
func Drain(d time.Duration) bool {
	done := make(chan struct{})
	go func() { background.wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
	}
	background.mu.Lock()
	ps := make([]*pending, 0, len(background.pending))
	for p := range background.pending {
		ps = append(ps, p)
	}
	background.mu.Unlock()
	for _, p := range ps {
		p.abandon()
	}
	return false
}

// abandon removes a disk that will not be recorded (record, if it runs
// after this, finds it abandoned).
func (p *pending) abandon() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.abandoned = true
	os.Remove(p.disk)
	os.Remove(p.pack)
	os.Remove(p.c.dir) // if nothing else is in it
}

func (c *diskCache) begin(listed time.Time) (*pending, error) {
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return nil, err
	}
	c.sweep()
	f, err := os.CreateTemp(c.dir, "new-*.ext4")
	if err != nil {
		return nil, err
	}
	f.Close()
	return &pending{c: c, disk: f.Name(), pack: strings.TrimSuffix(f.Name(), ".ext4") + ".pack", listed: listed,
		stagingGone: make(chan struct{})}, nil
}

func (p *pending) cleaned() { p.once.Do(func() { close(p.stagingGone) }) }

// finish records the disk (in the background, when the staging is gone)
// if ok, or removes it.
func (p *pending) finish(ctx context.Context, ok bool, set *FileSet, size int64, info *DiskInfo, hasPack bool) {
	if !ok {
		os.Remove(p.disk)
		os.Remove(p.pack)
		os.Remove(p.c.dir)
		return
	}
	background.mu.Lock()
	if background.pending == nil {
		background.pending = map[*pending]bool{}
	}
	background.pending[p] = true
	background.mu.Unlock()
	background.wg.Add(1)
	go func() {
		defer func() {
			background.mu.Lock()
			delete(background.pending, p)
			background.mu.Unlock()
			background.wg.Done()
		}()
		select {
		case <-p.stagingGone:
		case <-time.After(time.Minute):
			os.Remove(p.disk)
			os.Remove(p.pack)
			return
		}
		beforeRecord()
		err := p.record(context.WithoutCancel(ctx), set, size, info, hasPack)
		if err != nil {
			os.Remove(p.disk)
			os.Remove(p.pack)
			os.Remove(p.c.dir) // if nothing else is in it
		}
		cacheRecorded(err)
	}()
}

// record stores the built disk under its key if no shipped file changed
// since the listing and none is racy.
func (p *pending) record(ctx context.Context, set *FileSet, size int64, info *DiskInfo, hasPack bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.abandoned {
		return errors.New("abandoned: the process is exiting")
	}
	stats := make([]fileStat, len(set.Files))
	limit := p.listed.Add(-racyWindow).UnixNano()
	for i, f := range set.Files {
		fi, err := os.Lstat(filepath.Join(set.Root, filepath.FromSlash(f.Path)))
		if err != nil {
			return err
		}
		st := statOf(fi)
		if st.ino != f.stat.ino || st.dev != f.stat.dev || st.mtime != f.stat.mtime || fi.Mode() != f.Mode ||
			(fi.Mode().IsRegular() && fi.Size() != f.Size) {
			return fmt.Errorf("%s changed during the build", f.Path)
		}
		if st.mtime >= limit {
			return fmt.Errorf("%s is racy (changed within %s of the listing)", f.Path, racyWindow)
		}
		stats[i] = st
	}
	key := cacheKey(set, size, stats)
	diskPath, packPath, metaPath := p.c.paths(key)
	e := cacheEntry{Key: key, Info: info.Info, Pack: hasPack, Created: time.Now().UTC().Format(time.RFC3339)}
	if x, err := (gitCmd{dir: set.Root}).line(ctx, "config", "--path", "--get", "core.excludesFile"); err == nil && x != "" {
		e.Excludes, e.ExcludesStat = x, excludesStat(x)
	}
	b, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if err := os.Rename(p.disk, diskPath); err != nil {
		return err
	}
	if hasPack {
		if err := os.Rename(p.pack, packPath); err != nil {
			return err
		}
	} else {
		os.Remove(p.pack)
	}
	tmp := metaPath + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, metaPath); err != nil {
		return err
	}
	// One entry per work tree: the others go.
	if ents, err := os.ReadDir(p.c.dir); err == nil {
		for _, e := range ents {
			if n := e.Name(); !strings.HasPrefix(n, key) && !strings.HasPrefix(n, "new-") {
				os.Remove(filepath.Join(p.c.dir, n))
			}
		}
	}
	pruneTrees(filepath.Dir(p.c.dir), maxCachedTrees)
	return nil
}

// sweep removes what a process that died while building left behind.
func (c *diskCache) sweep() {
	ents, err := os.ReadDir(c.dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), "new-") {
			continue
		}
		if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > 10*time.Minute {
			os.Remove(filepath.Join(c.dir, e.Name()))
		}
	}
}

// pruneTrees keeps the keep most recently used work trees' caches.
func pruneTrees(root string, keep int) {
	ents, err := os.ReadDir(root)
	if err != nil {
		return
	}
	type tree struct {
		name string
		used time.Time
	}
	var ts []tree
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		if fi, err := e.Info(); err == nil {
			ts = append(ts, tree{e.Name(), fi.ModTime()})
		}
	}
	if len(ts) <= keep {
		return
	}
	sort.Slice(ts, func(i, j int) bool { return ts[i].used.After(ts[j].used) })
	for _, t := range ts[keep:] {
		os.RemoveAll(filepath.Join(root, t.name))
	}
}
