// Package disk makes and inspects copy-on-write root disks.
//
// Strategies (strategy.go; Choose picks the first the backend and host
// allow, in this order):
//   - qcow2 overlay over a read-only base (raw or qcow2), made with
//     qemu-img, when the backend takes qcow2 (QEMU): creating one never
//     copies the base (about 10 ms and 200 KiB whatever the base's size),
//     and any number of VMs can run at once on overlays of one base;
//   - reflink copy (FICLONE) of a raw base, on btrfs and xfs: a raw file
//     sharing the base's extents, for raw-only backends (Firecracker);
//   - dm-snapshot: detected, not implemented (no device-mapper here);
//   - sparse copy of the base's data extents: the last resort.
//
// The base must not change while disks made from it exist, and must never
// be booted read-write itself.
//
// Growing: an overlay may be given a virtual size larger than its base;
// the guest then sees a larger block device, but the filesystem on it is
// not resized (the guest must run resize2fs, or the image builder must
// leave room). An overlay smaller than its base is refused.
package disk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/system"
)

// Formats of disk images.
const (
	FormatRaw   = "raw"
	FormatQCOW2 = "qcow2"
)

// maxInfoJSON bounds qemu-img info's output (a long backing chain is the
// only way it grows; ours are one level deep).
const maxInfoJSON = 1 << 20

// DiskInfo describes an image file.
type DiskInfo struct {
	VirtualSize int64  // bytes the guest sees
	ActualSize  int64  // bytes allocated on the host
	Format      string // "raw", "qcow2", ...
	// Backing is the absolute path of the backing file ("" for none) and
	// BackingFormat its format.
	Backing       string
	BackingFormat string
}

// CreateOverlay creates dest, a qcow2 image whose unwritten blocks read
// from base (of format baseFormat, "raw" or "qcow2"). The base is recorded
// by absolute path, so dest may move but base may not. sizeBytes 0 gives
// the base's virtual size; a larger size grows the device (not the
// filesystem on it). dest must not exist; on error nothing is left at
// dest.
func CreateOverlay(ctx context.Context, base, baseFormat, dest string, sizeBytes int64) error {
	if baseFormat != FormatRaw && baseFormat != FormatQCOW2 {
		return fmt.Errorf("create overlay: base format %q, want raw or qcow2: %w", baseFormat, errdefs.ErrInvalidArgument)
	}
	if sizeBytes < 0 {
		return fmt.Errorf("create overlay: negative size %d: %w", sizeBytes, errdefs.ErrInvalidArgument)
	}
	absBase, err := filepath.Abs(base)
	if err != nil {
		return fmt.Errorf("create overlay: %w", err)
	}
	fi, err := os.Stat(absBase)
	if err != nil {
		return fmt.Errorf("create overlay: base: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("create overlay: base %s is not a regular file: %w", absBase, errdefs.ErrInvalidArgument)
	}
	if _, err := os.Lstat(dest); err == nil {
		return fmt.Errorf("create overlay: %s: %w", dest, errdefs.ErrAlreadyExists)
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("create overlay: %w", err)
	}
	if sizeBytes > 0 {
		bi, err := Info(ctx, absBase)
		if err != nil {
			return fmt.Errorf("create overlay: %w", err)
		}
		if sizeBytes < bi.VirtualSize {
			return fmt.Errorf("create overlay: size %d is smaller than the base's %d bytes: %w", sizeBytes, bi.VirtualSize, errdefs.ErrInvalidArgument)
		}
	}
	argv := []string{"qemu-img", "create", "-q", "-f", FormatQCOW2, "-b", absBase, "-F", baseFormat, dest}
	if sizeBytes > 0 {
		argv = append(argv, strconv.FormatInt(sizeBytes, 10))
	}
	if _, err := system.Run(ctx, argv...); err != nil {
		_ = os.Remove(dest)
		return fmt.Errorf("create overlay: %w", err)
	}
	return nil
}

// Info inspects an image with `qemu-img info`. It works on images in use
// by a running VM (--force-share).
func Info(ctx context.Context, path string) (DiskInfo, error) {
	out := &boundedBuffer{max: maxInfoJSON}
	if _, err := system.RunOpts(ctx, system.Opts{Stdout: out}, "qemu-img", "info", "--output=json", "--force-share", path); err != nil {
		return DiskInfo{}, fmt.Errorf("disk info: %w", err)
	}
	return parseInfo(out.buf)
}

func parseInfo(b []byte) (DiskInfo, error) {
	var j struct {
		VirtualSize         *int64 `json:"virtual-size"`
		ActualSize          int64  `json:"actual-size"`
		Format              string `json:"format"`
		BackingFilename     string `json:"backing-filename"`
		FullBackingFilename string `json:"full-backing-filename"`
		BackingFormat       string `json:"backing-filename-format"`
	}
	if err := json.Unmarshal(b, &j); err != nil {
		return DiskInfo{}, fmt.Errorf("disk info: parse qemu-img output: %w", err)
	}
	if j.VirtualSize == nil || j.Format == "" {
		return DiskInfo{}, fmt.Errorf("disk info: qemu-img output lacks virtual-size or format: %.200q", b)
	}
	backing := j.FullBackingFilename
	if backing == "" {
		backing = j.BackingFilename
	}
	return DiskInfo{
		VirtualSize:   *j.VirtualSize,
		ActualSize:    j.ActualSize,
		Format:        j.Format,
		Backing:       backing,
		BackingFormat: j.BackingFormat,
	}, nil
}

// boundedBuffer fails writes past max bytes (so a runaway program cannot
// fill memory).
type boundedBuffer struct {
	max int
	buf []byte
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	if len(b.buf)+len(p) > b.max {
		return 0, fmt.Errorf("output longer than %d bytes", b.max)
	}
	b.buf = append(b.buf, p...)
	return len(p), nil
}
