package image

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/progress"
)

// ImportOptions describes an image made of files the user already has.
type ImportOptions struct {
	Name   string
	Kernel string // bzImage or ELF vmlinux (with a PVH note)
	Initrd string // optional; kept as initrd.img
	Rootfs string // ext4 file system image
	// Modules is an optional directory in the image layout: .ko files and
	// a load-order file listing them in the order to load.
	Modules string
	Dest    string // the image directory to create; must not exist
	TmpDir  string // scratch on Dest's file system; default Dest's parent
	// Progress, if set, is told each phase: "check", "kernel", "rootfs",
	// "modules", "manifest", "done".
	Progress progress.Func
}

// Import makes an image directory from a kernel, a root file system and
// optionally an initrd and a modules directory. It validates the kernel
// (bzImage, from which vmlinux is derived, or an ELF vmlinux with a PVH
// note) and the root file system (ext4 superblock), copies the files in
// (sparse), writes the manifest last and renames the result to Dest;
// nothing is left behind on failure.
func Import(ctx context.Context, o ImportOptions) (m *Manifest, err error) {
	phase := "check"
	defer func() {
		if err != nil {
			err = fmt.Errorf("import image %s: %s: %w", o.Name, phase, err)
		}
	}()
	o.Progress.Phase(phase, o.Dest)
	if !ValidName(o.Name) {
		return nil, errdefs.InvalidArgument(fmt.Sprintf("image name %q: use letters, digits, '.', '_' and '-', starting with a letter or digit", o.Name))
	}
	if o.Kernel == "" || o.Rootfs == "" || o.Dest == "" {
		return nil, errdefs.InvalidArgument("kernel, root file system and destination are required")
	}
	if o.Dest, err = filepath.Abs(o.Dest); err != nil {
		return nil, err
	}
	if o.TmpDir == "" {
		o.TmpDir = filepath.Dir(o.Dest)
	}
	// Validate the inputs before creating anything: first that each path
	// names a file of the right kind (an error naming the field), then
	// their contents.
	for _, in := range []struct{ field, path string }{{"kernel", o.Kernel}, {"rootfs", o.Rootfs}, {"initrd", o.Initrd}, {"modules", o.Modules}} {
		if in.path == "" {
			continue
		}
		if !filepath.IsAbs(in.path) {
			return nil, errdefs.InvalidArgument(fmt.Sprintf("%s %q: want an absolute path on the daemon's host", in.field, in.path))
		}
		st, err := os.Stat(in.path)
		if err != nil {
			return nil, errdefs.InvalidArgument(fmt.Sprintf("%s: %v", in.field, err))
		}
		if dir := in.field == "modules"; dir != st.IsDir() || !dir && !st.Mode().IsRegular() {
			kind := "a regular file"
			if dir {
				kind = "a directory"
			}
			return nil, errdefs.InvalidArgument(fmt.Sprintf("%s %s is not %s", in.field, in.path, kind))
		}
	}
	format, err := DetectKernel(o.Kernel)
	if err != nil {
		return nil, err
	}
	if format == KernelELF {
		if err := checkVmlinuxFile(o.Kernel); err != nil {
			return nil, err
		}
	}
	if err := CheckExt4(o.Rootfs); err != nil {
		return nil, err
	}
	if o.Initrd != "" {
		if st, err := os.Stat(o.Initrd); err != nil {
			return nil, err
		} else if !st.Mode().IsRegular() || st.Size() == 0 {
			return nil, errdefs.InvalidArgument(fmt.Sprintf("initrd %s is not a non-empty file", o.Initrd))
		}
	}
	var loadOrder []string
	if o.Modules != "" {
		if loadOrder, err = checkModulesDir(o.Modules); err != nil {
			return nil, err
		}
	}
	if err := checkDest(o.Dest, o.TmpDir); err != nil {
		return nil, err
	}

	_, out, cleanup, err := scratch(o.TmpDir, ".import-"+o.Name+"-", o.Progress)
	if err != nil {
		return nil, err
	}
	defer cleanup(&err)
	man := &Manifest{Name: o.Name, Source: SourceImport, Modules: loadOrder}
	step := func(name, detail string) error {
		phase = name
		o.Progress.Phase(name, detail)
		return ctx.Err()
	}

	if err := step("kernel", string(format)); err != nil {
		return nil, err
	}
	switch format {
	case KernelBzImage:
		if err := copySparse(ctx, o.Kernel, filepath.Join(out, FileBzImage)); err != nil {
			return nil, err
		}
		if man.KernelVersion, err = KernelVersionFromBzImage(o.Kernel); err != nil {
			return nil, err
		}
		if err := ExtractVmlinux(ctx, o.Kernel, filepath.Join(out, FileVmlinux)); err != nil {
			return nil, err
		}
	case KernelELF:
		if man.KernelVersion, err = KernelVersionFromELF(o.Kernel); err != nil {
			return nil, err
		}
		if err := copySparse(ctx, o.Kernel, filepath.Join(out, FileVmlinux)); err != nil {
			return nil, err
		}
	}
	if o.Initrd != "" {
		if err := copySparse(ctx, o.Initrd, filepath.Join(out, FileInitrd)); err != nil {
			return nil, err
		}
	}

	if err := step("rootfs", o.Rootfs); err != nil {
		return nil, err
	}
	if err := copySparse(ctx, o.Rootfs, filepath.Join(out, FileRootfs)); err != nil {
		return nil, err
	}
	st, err := os.Stat(filepath.Join(out, FileRootfs))
	if err != nil {
		return nil, err
	}
	man.RootfsSize = st.Size()

	if len(loadOrder) > 0 {
		if err := step("modules", fmt.Sprintf("%d modules", len(loadOrder))); err != nil {
			return nil, err
		}
		dir := filepath.Join(out, DirModules)
		if err := os.Mkdir(dir, 0o755); err != nil {
			return nil, err
		}
		for _, f := range loadOrder {
			if err := copySparse(ctx, filepath.Join(o.Modules, f), filepath.Join(dir, f)); err != nil {
				return nil, err
			}
		}
		if err := writeLoadOrder(filepath.Join(dir, "load-order"), loadOrder); err != nil {
			return nil, err
		}
	}

	if err := step("manifest", "hashing files"); err != nil {
		return nil, err
	}
	if err := commitImage(ctx, out, o.Dest, man); err != nil {
		return nil, err
	}
	phase = "done"
	o.Progress.Phase("done", fmt.Sprintf("%s (digest %s)", o.Dest, man.ShortDigest()))
	return man, nil
}

// checkModulesDir validates a modules directory: a load-order file whose
// every line names a .ko file (an ELF object) in the directory.
func checkModulesDir(dir string) ([]string, error) {
	order, err := ReadLoadOrder(filepath.Join(dir, "load-order"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, errdefs.InvalidArgument(fmt.Sprintf("modules directory %s has no load-order file", dir))
	}
	if err != nil {
		return nil, err
	}
	for _, f := range order {
		if filepath.Base(f) != f || filepath.Ext(f) != ".ko" {
			return nil, errdefs.InvalidArgument(fmt.Sprintf("%s/load-order: %q is not a .ko file name", dir, f))
		}
		data := make([]byte, 4)
		fh, err := os.Open(filepath.Join(dir, f))
		if err != nil {
			return nil, errdefs.InvalidArgument(fmt.Sprintf("%s/load-order names %s: %v", dir, f, err))
		}
		_, err = fh.Read(data)
		fh.Close()
		if err != nil || string(data) != "\x7fELF" {
			return nil, errdefs.InvalidArgument(fmt.Sprintf("module %s/%s is not an uncompressed .ko (ELF)", dir, f))
		}
	}
	return order, nil
}
