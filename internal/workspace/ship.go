package workspace

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/banger-sh/banger/api"
)

// ShipOptions describe a workspace shipped to a new VM.
type ShipOptions struct {
	IncludeUntracked bool
	Path             string // in the guest; default DefaultPath
	TmpDir           string // where the work disk is built (removed after the upload)
	// CacheDir, if set, keeps the last work disk of each work tree for
	// the next ship of the same, unchanged tree (diskcache.go).
	CacheDir string
}

// Ship lists repo's files, builds a work disk of them (as the caller, the
// repository's owner) and hands it to upload as an open file — the daemon
// copies it from the descriptor and never opens a path a client names.
// It returns the workspace of a create or run request, and the submodules
// that were shipped as plain files.
func Ship(ctx context.Context, repo string, o ShipOptions, upload func(*os.File) (string, error)) (*api.WorkspaceSpec, []string, error) {
	set, err := List(ctx, repo, ListOptions{IncludeUntracked: o.IncludeUntracked})
	if err != nil {
		return nil, nil, err
	}
	ws, err := ShipSet(ctx, set, o, upload)
	return ws, set.Submodules, err
}

// FitsSlot reports whether a work disk of set fits the warm work-disk
// slot (api.WorkSlotBytes): such a disk can go into a warm clone, or into
// a running VM's empty slot.
func FitsSlot(set *FileSet) bool { return set.TotalSize*3/2+(64<<20) <= api.WorkSlotBytes }

// ShipSet is Ship of a listed file set (o.IncludeUntracked is the list's).
// With o.CacheDir, a tree unchanged since its last ship reuses that work
// disk (diskcache.go).
func ShipSet(ctx context.Context, set *FileSet, o ShipOptions, upload func(*os.File) (string, error)) (*api.WorkspaceSpec, error) {
	if o.Path == "" {
		o.Path = DefaultPath
	}
	// A disk of exactly the warm slot's size can go into a warm clone; a
	// tree too big for it gets its own size (and a cold boot). The image
	// is sparse: unused space costs nothing.
	var size int64
	if FitsSlot(set) {
		size = api.WorkSlotBytes
	}
	withPack := len(set.Submodules) == 0
	var pend *pending
	if o.CacheDir != "" && set.TotalSize <= maxCachedBytes && !set.listed.IsZero() && set.gitDir != "" {
		var err error
		c := openDiskCache(o.CacheDir, set.Root)
		key := cacheKey(set, size, listedStats(set))
		if e, disk, pack := c.lookup(key); e != nil && e.Pack == withPack {
			defer disk.Close()
			if pack != nil {
				defer pack.Close()
			}
			return shipFiles(o, set, e.Info, disk, pack, upload)
		}
		if pend, err = c.begin(set.listed); err != nil {
			pend = nil // no cache this time
		}
	}
	var dest, pack string
	if pend != nil {
		dest, pack = pend.disk, pend.pack
	} else {
		if err := os.MkdirAll(o.TmpDir, 0o755); err != nil {
			return nil, err
		}
		f, err := os.CreateTemp(o.TmpDir, "work-*.ext4")
		if err != nil {
			return nil, err
		}
		f.Close()
		dest, pack = f.Name(), f.Name()+".pack"
		defer os.Remove(dest)
		defer os.Remove(pack)
	}
	do := DiskOptions{Dest: dest, Size: size, Pack: pack}
	if pend != nil {
		do.cleaned = pend.cleaned
	}
	info, err := BuildDisk(ctx, set.Root, set, do)
	ok := false
	if pend != nil {
		defer func() { pend.finish(ctx, ok, set, size, info, withPack) }()
	}
	if err != nil {
		return nil, err
	}
	disk, err := os.Open(info.Path)
	if err != nil {
		return nil, err
	}
	defer disk.Close()
	var pf *os.File
	if withPack {
		if pf, err = os.Open(pack); err == nil {
			defer pf.Close()
		}
	}
	ws, err := shipFiles(o, set, info.Info, disk, pf, upload)
	ok = err == nil
	return ws, err
}

// shipFiles uploads a work disk and its pack (nil: none; exports then run
// git in the guest) and returns the workspace of a request.
func shipFiles(o ShipOptions, set *FileSet, info Info, disk, pack *os.File, upload func(*os.File) (string, error)) (*api.WorkspaceSpec, error) {
	tok, err := upload(disk)
	if err != nil {
		return nil, fmt.Errorf("hand the work disk to bangerd: %w", err)
	}
	// The base's objects, so that the daemon builds exports with its own
	// git (HostExport). Without them the export runs git in the guest.
	var packTok string
	if pack != nil {
		if packTok, err = upload(pack); err != nil {
			return nil, fmt.Errorf("hand the workspace objects to bangerd: %w", err)
		}
	}
	return &api.WorkspaceSpec{Upload: tok, Pack: packTok, ObjectFormat: info.ObjectFormat, Path: o.Path, Repo: set.Root,
		Base: api.Base{Head: info.Base.Head, Tree: info.Base.Tree, Commit: info.Base.Commit}}, nil
}

// CheckoutCommit checks commit out of repo into a temporary worktree under
// tmpDir (detached, the repository's objects shared) and returns its path
// and how to remove it.
func CheckoutCommit(ctx context.Context, repo, commit, tmpDir string) (string, func(), error) {
	root, err := Root(ctx, repo)
	if err != nil {
		return "", nil, err
	}
	if err := os.MkdirAll(tmpDir, 0o755); err != nil {
		return "", nil, err
	}
	dir, err := os.MkdirTemp(tmpDir, "replay-")
	if err != nil {
		return "", nil, err
	}
	os.Remove(dir) // git worktree add makes it
	g := gitCmd{dir: root}
	if _, err := g.run(ctx, "worktree", "add", "--quiet", "--detach", dir, commit+"^{commit}"); err != nil {
		return "", nil, fmt.Errorf("check out %.12s: %w", commit, err)
	}
	return dir, func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := g.run(ctx, "worktree", "remove", "--force", dir); err != nil {
			os.RemoveAll(dir)
			g.run(ctx, "worktree", "prune")
		}
	}, nil
}
