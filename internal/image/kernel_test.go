package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/pierrec/lz4/v4"

	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/system"
)

// testCacheDir mirrors imagetest.CacheDir (imagetest imports this package,
// so internal tests cannot import it).
func testCacheDir() string {
	if d := os.Getenv("BANGER_TEST_CACHE"); d != "" {
		return d
	}
	return "/var/cache/banger-test"
}

var debianKernel struct {
	once sync.Once
	k    extractedKernel
	err  error
}

// testKernel returns Debian's cloud kernel, unpacked once per test binary
// from the .deb in the shared test cache (downloaded there if missing).
func testKernel(t *testing.T) extractedKernel {
	t.Helper()
	debianKernel.once.Do(func() {
		ctx := context.Background()
		kp, err := fetchKernelPackage(ctx, DefaultKernelPackage, filepath.Join(testCacheDir(), "build", "kernel"), nil)
		if err != nil {
			debianKernel.err = err
			return
		}
		dir, err := os.MkdirTemp("", "banger-kernel-test-")
		if err != nil {
			debianKernel.err = err
			return
		}
		debianKernel.k, debianKernel.err = unpackKernel(ctx, kp.Deb, dir)
	})
	if debianKernel.err != nil {
		t.Fatalf("Debian kernel: %v", debianKernel.err)
	}
	return debianKernel.k
}

func TestMain(m *testing.M) {
	code := m.Run()
	if debianKernel.k.BzImage != "" {
		os.RemoveAll(filepath.Dir(filepath.Dir(debianKernel.k.BzImage)))
	}
	os.Exit(code)
}

func TestExtractVmlinuxDebian(t *testing.T) {
	k := testKernel(t)
	out := filepath.Join(t.TempDir(), "vmlinux")
	if err := ExtractVmlinux(context.Background(), k.BzImage, out); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(data, []byte{0x7f, 'E', 'L', 'F'}) {
		t.Fatalf("vmlinux starts % x, want ELF magic", data[:4])
	}
	f, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC {
		t.Errorf("vmlinux is %v %v, want x86-64 executable", f.Machine, f.Type)
	}
	// Find the PVH note by hand, independently of hasPVHNote's caller.
	var entry uint32
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		buf := make([]byte, p.Filesz)
		if _, err := p.ReadAt(buf, 0); err != nil {
			t.Fatal(err)
		}
		for _, n := range parseNotes(buf, f.ByteOrder) {
			if n.name == "Xen" && n.typ == 18 && len(n.desc) >= 4 {
				entry = binary.LittleEndian.Uint32(n.desc)
			}
		}
	}
	if entry == 0 {
		t.Fatal("no Xen XEN_ELFNOTE_PHYS32_ENTRY (type 18) note in vmlinux")
	}
	t.Logf("vmlinux %d bytes, PVH entry %#x", len(data), entry)

	// The same bytes as lz4 -dc on the payload (the route ENVIRONMENT.md
	// measured).
	raw, err := os.ReadFile(k.BzImage)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(raw, magicLZ4Legacy)
	if i < 0 {
		t.Fatal("no LZ4 magic in Debian's bzImage")
	}
	ref, err := system.RunOpts(context.Background(), system.Opts{Stdin: bytes.NewReader(raw[i:])}, "lz4", "-dc")
	if err != nil && len(ref) == 0 {
		t.Fatalf("lz4 -dc: %v", err)
	}
	if sha256.Sum256(ref) != sha256.Sum256(data) {
		t.Errorf("vmlinux (%d bytes) differs from lz4 -dc output (%d bytes)", len(data), len(ref))
	}

	// The extracted kernel reports the same release as the bzImage.
	v, err := KernelVersionFromELF(out)
	if err != nil || v != k.Release {
		t.Errorf("KernelVersionFromELF = %q, %v; want %q", v, err, k.Release)
	}
}

func TestKernelVersionFromBzImageDebian(t *testing.T) {
	k := testKernel(t)
	v, err := KernelVersionFromBzImage(k.BzImage)
	if err != nil {
		t.Fatal(err)
	}
	if v != k.Release {
		t.Errorf("version %q, want %q (from the package's file name)", v, k.Release)
	}
	if !strings.HasSuffix(v, "-cloud-amd64") {
		t.Errorf("version %q is not a cloud kernel's", v)
	}
	if f, err := DetectKernel(k.BzImage); err != nil || f != KernelBzImage {
		t.Errorf("DetectKernel = %v, %v", f, err)
	}
}

// fakeBzImage returns a minimal file with a setup header whose
// kernel_version field points at version.
func fakeBzImage(version string, protocol uint16) []byte {
	b := make([]byte, 0x1000)
	b[hdrSetupSects] = 1
	copy(b[hdrMagic:], "HdrS")
	binary.LittleEndian.PutUint16(b[hdrVersion:], protocol)
	if version != "" {
		binary.LittleEndian.PutUint16(b[hdrKernelVersion:], 0x300-0x200)
		copy(b[0x300:], version+"\x00")
	}
	return b
}

func TestKernelVersionFromBzImage(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		data    []byte
		want    string
		wantErr bool
	}{
		{"release and build", fakeBzImage("6.1.0-56-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP", 0x20f), "6.1.0-56-cloud-amd64", false},
		{"release only", fakeBzImage("6.12.3", 0x20f), "6.12.3", false},
		{"no version field", fakeBzImage("", 0x20f), "", true},
		{"not a bzImage", bytes.Repeat([]byte{0xaa}, 0x1000), "", true},
		{"too short", []byte("MZ"), "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_"))
			if err := os.WriteFile(p, tt.data, 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := KernelVersionFromBzImage(p)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("got %q, %v; want %q (error %v)", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestDetectKernel(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if f, err := DetectKernel(write("bz", fakeBzImage("6.1", 0x20f))); err != nil || f != KernelBzImage {
		t.Errorf("bzImage: %v %v", f, err)
	}
	if f, err := DetectKernel(write("elf", append([]byte("\x7fELF"), make([]byte, 100)...))); err != nil || f != KernelELF {
		t.Errorf("elf: %v %v", f, err)
	}
	for _, name := range []string{"text", "empty"} {
		data := []byte("#!/bin/sh\necho not a kernel\n")
		if name == "empty" {
			data = nil
		}
		if _, err := DetectKernel(write(name, data)); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: err = %v, want invalid argument", name, err)
		}
	}
}

func TestDecompressLZ4Legacy(t *testing.T) {
	// Two blocks of one frame, then a second frame: what lz4 -l and the
	// kernel's size_append produce.
	var want []byte
	for i := range 9 << 20 {
		want = append(want, byte(i*7/1000))
	}
	want = append(want, []byte("tail of the kernel")...)
	var stream []byte
	stream = append(stream, magicLZ4Legacy...)
	put := func(block []byte) {
		dst := make([]byte, lz4.CompressBlockBound(len(block)))
		n, err := lz4.CompressBlock(block, dst, nil)
		if err != nil || n == 0 {
			t.Fatalf("compress: %d %v", n, err)
		}
		stream = binary.LittleEndian.AppendUint32(stream, uint32(n))
		stream = append(stream, dst[:n]...)
	}
	put(want[:8<<20])
	stream = append(stream, magicLZ4Legacy...)
	put(want[8<<20:])
	got, err := decompressLZ4Legacy(stream, len(want))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("round trip: got %d bytes, want %d", len(got), len(want))
	}
	if _, err := decompressLZ4Legacy(stream[:len(stream)-10], 0); err == nil {
		t.Error("truncated stream: no error")
	}
}
