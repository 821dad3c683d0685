package image

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/errdefs"
)

// assertEmptyDir fails unless dir has no entries (or does not exist).
func assertEmptyDir(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("left behind in %s: %s", dir, e.Name())
	}
}

func TestImportRejectsBadInputs(t *testing.T) {
	k := testKernel(t)
	in := t.TempDir()
	goodRootfs := makeExt4File(t, in)
	notKernel := filepath.Join(in, "not-a-kernel")
	if err := os.WriteFile(notKernel, []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	notExt4 := filepath.Join(in, "not-ext4.img")
	if err := os.WriteFile(notExt4, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	badModules := filepath.Join(in, "mods")
	if err := os.MkdirAll(badModules, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(badModules, "load-order"), []byte("../evil.ko\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// An ELF without the PVH note: the bzImage's own setup code is not, so
	// make one from a host binary.
	elfNoPVH, _ := filepath.Abs("/usr/bin/true")

	tests := []struct {
		name string
		o    ImportOptions
	}{
		{"not a kernel", ImportOptions{Kernel: notKernel, Rootfs: goodRootfs}},
		{"not ext4", ImportOptions{Kernel: k.BzImage, Rootfs: notExt4}},
		{"kernel is the rootfs", ImportOptions{Kernel: goodRootfs, Rootfs: goodRootfs}},
		{"ELF without PVH note", ImportOptions{Kernel: elfNoPVH, Rootfs: goodRootfs}},
		{"bad modules dir", ImportOptions{Kernel: k.BzImage, Rootfs: goodRootfs, Modules: badModules}},
		{"modules dir without load-order", ImportOptions{Kernel: k.BzImage, Rootfs: goodRootfs, Modules: in}},
		{"bad name", ImportOptions{Name: "../x", Kernel: k.BzImage, Rootfs: goodRootfs}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := t.TempDir()
			tt.o.Dest = filepath.Join(base, "images", "img")
			tt.o.TmpDir = filepath.Join(base, "tmp")
			if tt.o.Name == "" {
				tt.o.Name = "img"
			}
			m, err := Import(context.Background(), tt.o)
			if err == nil {
				t.Fatalf("imported: %+v", m)
			}
			if !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Errorf("err = %v, want invalid argument", err)
			}
			t.Log(err)
			if _, err := os.Lstat(tt.o.Dest); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("destination exists: %v", err)
			}
			assertEmptyDir(t, tt.o.TmpDir)
			assertEmptyDir(t, filepath.Dir(tt.o.Dest))
		})
	}
}

func TestImportBzImageAndELF(t *testing.T) {
	k := testKernel(t)
	in := t.TempDir()
	rootfs := makeExt4File(t, in)
	mods := filepath.Join(in, "modules")
	if _, err := installModules(context.Background(), "", k.Release, k.ModulesDir, []string{"virtio_blk"}, mods); err != nil {
		t.Fatal(err)
	}
	initrd := filepath.Join(in, "initrd.img")
	if err := os.WriteFile(initrd, []byte("070701 not really a cpio"), 0o644); err != nil {
		t.Fatal(err)
	}
	base := t.TempDir()
	var phases []string
	m, err := Import(context.Background(), ImportOptions{
		Name: "imported", Kernel: k.BzImage, Rootfs: rootfs, Modules: mods, Initrd: initrd,
		Dest:     filepath.Join(base, "img"),
		Progress: func(p api.Progress) { phases = append(phases, p.Phase) },
	})
	if err != nil {
		t.Fatal(err)
	}
	if m.KernelVersion != k.Release || m.Source != SourceImport || !slices.Equal(m.Modules, []string{"virtio_ring.ko", "virtio.ko", "virtio_blk.ko"}) {
		t.Errorf("manifest %+v", m)
	}
	for _, f := range []string{FileVmlinux, FileBzImage, FileRootfs, FileInitrd, FileLoadOrder, "modules/virtio_blk.ko"} {
		if !m.Has(f) {
			t.Errorf("no %s in manifest", f)
		}
	}
	if err := Verify(m.Dir); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(phases, []string{"check", "kernel", "rootfs", "modules", "manifest", "done"}) {
		t.Errorf("phases %v", phases)
	}
	assertOnly(t, base, "img")

	// The vmlinux of that image imports as an ELF kernel (no bzImage).
	m2, err := Import(context.Background(), ImportOptions{Name: "elf", Kernel: m.Path(FileVmlinux), Rootfs: rootfs, Dest: filepath.Join(base, "elf")})
	if err != nil {
		t.Fatal(err)
	}
	if m2.Has(FileBzImage) || m2.Has(FileLoadOrder) || m2.KernelVersion != k.Release || m2.Files[FileVmlinux] != m.Files[FileVmlinux] {
		t.Errorf("ELF import manifest %+v", m2)
	}
	// Importing onto an existing image fails and leaves it alone.
	if _, err := Import(context.Background(), ImportOptions{Name: "again", Kernel: k.BzImage, Rootfs: rootfs, Dest: m2.Dir}); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("import over an existing image: %v", err)
	}
	if err := Verify(m2.Dir); err != nil {
		t.Error(err)
	}
	assertOnly(t, base, "elf", "img")
}

func assertOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if !slices.Equal(got, names) {
		t.Errorf("%s holds %v, want %v", dir, got, names)
	}
}
