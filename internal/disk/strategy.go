package disk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/system"
)

// Image is a disk image file and its format. The format is always what
// banger recorded (the file name's extension, see Ext), never guessed
// from the file's bytes: a guest writes its raw root's first sector, and
// a raw file that looks like qcow2 could name a host file as its backing.
type Image struct {
	Path   string
	Format string // FormatRaw or FormatQCOW2
}

// Strategy makes copy-on-write disks: a writable disk whose unwritten
// blocks are those of a read-only base, made without copying the base's
// data where the host allows. The VM manager and the template store use
// the one Choose picks for the backend and the host.
type Strategy interface {
	// Name is the strategy's name in logs and doctor: StrategyQCOW2,
	// StrategyReflink, StrategyDMSnapshot, StrategySparseCopy.
	Name() string
	// Format is the format of the disks Create makes.
	Format() string
	// Create makes dest (which must not exist), a disk of Format whose
	// contents are base's. sizeBytes 0 gives base's virtual size; a larger
	// size grows the device (not the filesystem on it); a smaller one is
	// refused. On error nothing is left at dest. The base must not change
	// while a disk made from it exists (an overlay reads it for ever).
	Create(ctx context.Context, base Image, dest string, sizeBytes int64) error
}

// Strategy names.
const (
	StrategyQCOW2      = "qcow2-overlay"
	StrategyReflink    = "reflink"
	StrategyDMSnapshot = "dm-snapshot"
	StrategySparseCopy = "sparse-copy"
)

// Ext is the file name extension banger gives a disk of format.
func Ext(format string) string {
	if format == FormatQCOW2 {
		return ".qcow2"
	}
	return ".img"
}

// Existing returns the disk at stem+Ext(f) for the first format f (qcow2,
// then raw) whose file exists: how a disk made earlier, by whichever
// strategy was chosen then, is found again.
func Existing(stem string) (Image, bool) {
	for _, f := range []string{FormatQCOW2, FormatRaw} {
		if _, err := os.Lstat(stem + Ext(f)); err == nil {
			return Image{Path: stem + Ext(f), Format: f}, true
		}
	}
	return Image{}, false
}

// ReadsBase reports whether img, made by a strategy, reads its base for
// as long as it exists (a qcow2 overlay) rather than being a copy
// independent of it (reflink and sparse copies): only then must the base
// be kept.
func ReadsBase(img Image) bool { return img.Format == FormatQCOW2 }

// Make creates the disk stem+Ext(s.Format()) from base with s.
func Make(ctx context.Context, s Strategy, base Image, stem string, sizeBytes int64) (Image, error) {
	img := Image{Path: stem + Ext(s.Format()), Format: s.Format()}
	if err := s.Create(ctx, base, img.Path, sizeBytes); err != nil {
		return Image{}, err
	}
	return img, nil
}

// Candidate is one strategy and whether it can be used here.
type Candidate struct {
	Strategy Strategy
	OK       bool
	Reason   string // why (not)
}

// Host is what the choice looks at (tests replace parts of it).
type Host struct {
	// LookPath finds a program (system.LookPath).
	LookPath func(string) (string, error)
	// DeviceMapper is the device-mapper control node
	// (/dev/mapper/control).
	DeviceMapper string
}

// RealHost is this machine.
func RealHost() Host {
	return Host{LookPath: system.LookPath, DeviceMapper: "/dev/mapper/control"}
}

// Plan lists the strategies in order of preference with whether each can
// be used for a backend that accepts backendFormats (vmm.Backend.
// RootFormats) and disks in dir: a qcow2 overlay when the backend takes
// qcow2 (no copy at all, any filesystem; needs qemu-img); else a reflink
// copy where dir's filesystem shares extents (btrfs, xfs); else a
// dm-snapshot where device-mapper exists; else a sparse copy (copies the
// base's data, not its holes).
func Plan(backendFormats []string, dir string, h Host) []Candidate {
	raw := slices.Contains(backendFormats, FormatRaw)
	var out []Candidate
	q := Candidate{Strategy: qcow2Overlay{}}
	switch _, err := h.LookPath("qemu-img"); {
	case !slices.Contains(backendFormats, FormatQCOW2):
		q.Reason = "the backend does not take qcow2 disks"
	case err != nil:
		q.Reason = "qemu-img is not installed"
	default:
		q.OK, q.Reason = true, "the backend takes qcow2: an overlay copies nothing"
	}
	out = append(out, q)
	r := Candidate{Strategy: reflinkCopy{}}
	if !raw {
		r.Reason = "the backend does not take raw disks"
	} else if err := probeReflink(dir); err != nil {
		r.Reason = fmt.Sprintf("%s cannot share extents (reflink needs btrfs or xfs): %v", dir, err)
	} else {
		r.OK, r.Reason = true, dir+" shares extents: a reflink copy copies no data"
	}
	out = append(out, r)
	d := Candidate{Strategy: dmSnapshot{}}
	if _, err := os.Stat(h.DeviceMapper); err != nil {
		d.Reason = "no device-mapper (" + h.DeviceMapper + " is missing)"
	} else {
		d.Reason = "device-mapper exists, but dm-snapshot disks are not implemented in this build"
	}
	out = append(out, d)
	c := Candidate{Strategy: sparseCopy{}}
	if raw {
		c.OK, c.Reason = true, "copies the base's data extents (the last resort)"
	} else {
		c.Reason = "the backend does not take raw disks"
	}
	return append(out, c)
}

// Choose returns the first usable strategy of Plan, and an error when
// none is (a backend that takes neither qcow2 nor raw, or no backend).
func Choose(backendFormats []string, dir string, h Host) (Strategy, error) {
	var why []error
	for _, c := range Plan(backendFormats, dir, h) {
		if c.OK {
			return c.Strategy, nil
		}
		why = append(why, fmt.Errorf("%s: %s", c.Strategy.Name(), c.Reason))
	}
	return nil, errdefs.Unavailable(fmt.Sprintf("no copy-on-write disk strategy for root formats %v: %v", backendFormats, errors.Join(why...)))
}

// probeReflink clones a small file in dir (FICLONE) and removes both.
// dir is created if missing.
func probeReflink(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	src, err := os.CreateTemp(dir, ".reflink-probe-")
	if err != nil {
		return err
	}
	defer os.Remove(src.Name())
	defer src.Close()
	if _, err := src.Write(make([]byte, 4096)); err != nil {
		return err
	}
	dst, err := os.CreateTemp(dir, ".reflink-probe-")
	if err != nil {
		return err
	}
	defer os.Remove(dst.Name())
	defer dst.Close()
	return unix.IoctlFileClone(int(dst.Fd()), int(src.Fd()))
}

// qcow2Overlay: a qcow2 file that reads unwritten blocks from its base.
type qcow2Overlay struct{}

func (qcow2Overlay) Name() string   { return StrategyQCOW2 }
func (qcow2Overlay) Format() string { return FormatQCOW2 }
func (qcow2Overlay) Create(ctx context.Context, base Image, dest string, size int64) error {
	return CreateOverlay(ctx, base.Path, base.Format, dest, size)
}

// reflinkCopy: a raw file sharing every extent with its raw base
// (FICLONE); written blocks are unshared by the filesystem.
type reflinkCopy struct{}

func (reflinkCopy) Name() string   { return StrategyReflink }
func (reflinkCopy) Format() string { return FormatRaw }
func (reflinkCopy) Create(ctx context.Context, base Image, dest string, size int64) error {
	return rawCopy(base, dest, size, func(in, out *os.File, n int64) error {
		err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd()))
		if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
			// The base is on another filesystem than dest (or one
			// without reflinks): copy its data instead.
			if err := out.Truncate(n); err != nil {
				return err
			}
			return CopyData(in, out, n)
		}
		if err != nil {
			return fmt.Errorf("reflink: %w", err)
		}
		return nil
	})
}

// sparseCopy: a raw copy of the base's data extents (holes stay holes).
type sparseCopy struct{}

func (sparseCopy) Name() string   { return StrategySparseCopy }
func (sparseCopy) Format() string { return FormatRaw }
func (sparseCopy) Create(ctx context.Context, base Image, dest string, size int64) error {
	return rawCopy(base, dest, size, func(in, out *os.File, n int64) error {
		if err := out.Truncate(n); err != nil {
			return err
		}
		return CopyData(in, out, n)
	})
}

// dmSnapshot would be a device-mapper snapshot of a loop device over the
// base (what the seed did). It is detected (Plan reports whether
// device-mapper exists) but not implemented: this build's hosts have no
// device-mapper to test it on, so Plan never offers it.
type dmSnapshot struct{}

func (dmSnapshot) Name() string   { return StrategyDMSnapshot }
func (dmSnapshot) Format() string { return FormatRaw }
func (dmSnapshot) Create(context.Context, Image, string, int64) error {
	return errdefs.Unavailable("dm-snapshot disks are not implemented")
}

// rawCopy checks base and dest, opens both, runs fill (which makes out
// hold in's n bytes), grows out to size and syncs; on error dest is
// removed.
func rawCopy(base Image, dest string, size int64, fill func(in, out *os.File, n int64) error) (err error) {
	if base.Format != FormatRaw {
		return fmt.Errorf("copy disk: base %s is %s; a raw copy needs a raw base: %w", base.Path, base.Format, errdefs.ErrInvalidArgument)
	}
	if size < 0 {
		return fmt.Errorf("copy disk: negative size %d: %w", size, errdefs.ErrInvalidArgument)
	}
	in, err := os.Open(base.Path)
	if err != nil {
		return fmt.Errorf("copy disk: base: %w", err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return fmt.Errorf("copy disk: %w", err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("copy disk: base %s is not a regular file: %w", base.Path, errdefs.ErrInvalidArgument)
	}
	if size > 0 && size < st.Size() {
		return fmt.Errorf("copy disk: size %d is smaller than the base's %d bytes: %w", size, st.Size(), errdefs.ErrInvalidArgument)
	}
	out, err := os.OpenFile(dest, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("copy disk: %s: %w", dest, errdefs.ErrAlreadyExists)
	}
	if err != nil {
		return fmt.Errorf("copy disk: %w", err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("copy disk: %w", cerr)
		}
		if err != nil {
			os.Remove(dest)
		}
	}()
	if err := fill(in, out, st.Size()); err != nil {
		return fmt.Errorf("copy disk %s: %w", filepath.Base(dest), err)
	}
	if size > st.Size() {
		if err := out.Truncate(size); err != nil {
			return fmt.Errorf("copy disk: grow to %s bytes: %w", strconv.FormatInt(size, 10), err)
		}
	}
	return out.Sync()
}

// Detach makes img independent of its base so that the base can go,
// with newBase as the base from now on: a qcow2 overlay is rebased onto
// newBase (what it read from the old base is copied into it: qemu-img
// rebase, safe mode); raw copies depend on nothing and are left alone.
// img must not be in use by a running VM.
func Detach(ctx context.Context, img Image, newBase Image) error {
	if img.Format != FormatQCOW2 {
		return nil
	}
	if newBase.Format == "" {
		newBase.Format = FormatRaw
	}
	abs, err := filepath.Abs(newBase.Path)
	if err != nil {
		return err
	}
	if _, err := system.Run(ctx, "qemu-img", "rebase", "-q", "-f", FormatQCOW2, "-b", abs, "-F", newBase.Format, img.Path); err != nil {
		return fmt.Errorf("detach %s from its base: %w", img.Path, err)
	}
	return nil
}
