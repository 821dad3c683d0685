package workspace

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/system"
)

// DiskOptions tunes BuildDisk.
type DiskOptions struct {
	// Dest is the image file to write (replaced atomically). Required.
	Dest string
	// TmpDir holds the staging directory. Hard links need it on the
	// repository's filesystem (files that cannot be linked are copied);
	// "" means <git-common-dir>/banger/tmp, which is.
	TmpDir string
	// Size of the image in bytes; 0 picks content × 1.5 + 64 MiB (at
	// least 64 MiB), rounded up to a MiB.
	Size int64
	// KeepStaging leaves the staged tree (files + .git) in place and
	// reports it in DiskInfo.Staging; the caller removes it (tests).
	KeepStaging bool
	// Pack, when set, receives a copy of the shipped .git's pack (the
	// base's objects): the daemon indexes it to build exports with host git
	// (HostExport).
	Pack string

	// cleaned, for the work-disk cache (diskcache.go), is called once the
	// staging directory has been removed (in the background).
	cleaned func()
}

// DiskInfo describes a built work disk.
type DiskInfo struct {
	Info
	Path    string `json:"path"`
	Size    int64  `json:"size"`              // image size in bytes
	Linked  int    `json:"linked"`            // files staged as hard links
	Copied  int    `json:"copied"`            // files staged as copies
	Staging string `json:"staging,omitempty"` // with KeepStaging: the staged tree
	// Time spent staging files, preparing .git, and in mkfs.ext4.
	StageTime time.Duration `json:"stage_ns"`
	GitTime   time.Duration `json:"git_ns"`
	MkfsTime  time.Duration `json:"mkfs_ns"`
}

// DiskLabel is the ext4 label of work disks (the guest may mount by label).
const DiskLabel = "banger-work"

// DefaultPath is where the guest mounts the work disk (or extracts the
// tar stream) unless told otherwise: `mount -t ext4 -o noatime /dev/vdb
// /root/repo`. ExportCommand takes the same path.
const DefaultPath = "/root/repo"

const (
	mib         = 1 << 20
	minDiskSize = 64 * mib
	blockSize   = 4096
)

// BuildDisk builds an ext4 image holding set's files and a prepared .git at
// its root, without mounting anything: the guest mounts it at the workspace
// path (root-owned root directory and .git, so that root's git accepts it).
func BuildDisk(ctx context.Context, repo string, set *FileSet, o DiskOptions) (*DiskInfo, error) {
	if o.Dest == "" {
		return nil, errors.New("workspace: BuildDisk: no destination")
	}
	if _, err := system.LookPath("mkfs.ext4"); err != nil {
		return nil, fmt.Errorf("workspace: %w (install e2fsprogs)", err)
	}
	s, err := prepare(ctx, repo, set, o.TmpDir)
	if err != nil {
		if o.cleaned != nil {
			o.cleaned()
		}
		return nil, err
	}
	s.cleaned = o.cleaned
	keep := false
	defer func() {
		if !keep {
			s.close()
		}
	}()
	if o.Pack != "" {
		src, err := s.shippedPack()
		if err != nil {
			return nil, err
		}
		os.Remove(o.Pack)
		if err := os.Link(src, o.Pack); err != nil {
			if err := copyFile(src, o.Pack); err != nil {
				return nil, fmt.Errorf("workspace: copy the pack: %w", err)
			}
		}
	}
	t0 := time.Now()
	used, inodes, err := treeUsage(s.tree)
	if err != nil {
		return nil, fmt.Errorf("workspace: %w", err)
	}
	size := o.Size
	if size == 0 {
		size = used + used/2 + 64*mib
	} else if size < used+used/8+8*mib {
		return nil, errdefs.InvalidArgument(fmt.Sprintf("work disk size %d bytes is too small for %d bytes of files and metadata", size, used))
	}
	size = (size + mib - 1) / mib * mib
	if size < minDiskSize {
		size = minDiskSize
	}
	// Enough inodes for what is shipped and as many again for the guest's
	// work, and no fewer than mke2fs would give.
	nInodes := inodes*2 + 16384
	if byRatio := size / 16384; int64(nInodes) < byRatio {
		nInodes = int(byRatio)
	}
	dest, err := filepath.Abs(o.Dest)
	if err != nil {
		return nil, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(dest), "."+filepath.Base(dest)+".tmp-")
	if err != nil {
		return nil, fmt.Errorf("workspace: %w", err)
	}
	tmpName := tmp.Name()
	tmp.Close()
	defer os.Remove(tmpName) // after a successful rename this is a no-op
	if err := os.Truncate(tmpName, size); err != nil {
		return nil, fmt.Errorf("workspace: %w", err)
	}
	if _, err := system.Run(ctx, "mkfs.ext4", "-q", "-F",
		"-d", s.tree,
		"-L", DiskLabel,
		"-b", strconv.Itoa(blockSize),
		"-N", strconv.Itoa(nInodes),
		"-m", "0",
		// Checksumming every block and inode costs ~40% of mkfs time here
		// (0.58 -> 0.36 s for Go's src); a scratch work disk can do
		// without.
		"-O", "^metadata_csum",
		"-E", "root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1,nodiscard",
		tmpName); err != nil {
		return nil, fmt.Errorf("workspace: build work disk: %w", err)
	}
	if os.Geteuid() != 0 {
		// mkfs copies owners: make .git root's, or root's git in the
		// guest refuses the repository ("dubious ownership").
		if _, err := system.Run(ctx, "debugfs", "-w",
			"-R", "set_inode_field /.git uid 0", tmpName); err != nil {
			return nil, fmt.Errorf("workspace: chown .git in the work disk: %w", err)
		}
		if _, err := system.Run(ctx, "debugfs", "-w",
			"-R", "set_inode_field /.git gid 0", tmpName); err != nil {
			return nil, fmt.Errorf("workspace: chown .git in the work disk: %w", err)
		}
	}
	if err := os.Rename(tmpName, dest); err != nil {
		return nil, fmt.Errorf("workspace: %w", err)
	}
	info := &DiskInfo{
		Info: s.info, Path: dest, Size: size, Linked: s.linked, Copied: s.copied,
		StageTime: s.tStage, GitTime: s.tGit, MkfsTime: time.Since(t0),
	}
	if o.KeepStaging {
		keep = true
		info.Staging = s.tree
	}
	return info, nil
}

// treeUsage returns the bytes dir's files take in 4 KiB blocks (plus a
// block per directory and symlink) and its number of entries.
func treeUsage(dir string) (int64, int, error) {
	var used int64
	n := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		n++
		if !d.Type().IsRegular() {
			used += blockSize
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		used += (fi.Size() + blockSize - 1) / blockSize * blockSize
		return nil
	})
	return used, n, err
}
