package disk

import (
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/system"
)

func needQemuImg(t *testing.T) {
	t.Helper()
	if _, err := system.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed (apt-get install qemu-utils)")
	}
}

// makeBase writes a raw base of size bytes with some non-zero content.
func makeBase(t *testing.T, dir string, size int64) string {
	t.Helper()
	p := filepath.Join(dir, "base.raw")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte(strings.Repeat("banger-base", 1000)), 4096); err != nil {
		t.Fatal(err)
	}
	return p
}

func sum(t *testing.T, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

func TestCreateOverlay(t *testing.T) {
	needQemuImg(t)
	ctx := context.Background()
	dir := t.TempDir()
	const size = 128 << 20
	base := makeBase(t, dir, size)
	before := sum(t, base)

	dest := filepath.Join(dir, "vm.qcow2")
	start := time.Now()
	// A relative base path is recorded as absolute.
	rel, err := filepath.Rel(mustGetwd(t), base)
	if err != nil {
		t.Fatal(err)
	}
	if err := CreateOverlay(ctx, rel, FormatRaw, dest, 0); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	t.Logf("overlay of a %d MiB base created in %v", size>>20, took)
	if took > 2*time.Second {
		t.Errorf("overlay creation took %v; it must not copy the base", took)
	}
	fi, err := os.Stat(dest)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() > 1<<20 {
		t.Errorf("overlay is %d bytes; want well under 1 MiB", fi.Size())
	}
	info, err := Info(ctx, dest)
	if err != nil {
		t.Fatal(err)
	}
	want := DiskInfo{VirtualSize: size, ActualSize: info.ActualSize, Format: "qcow2", Backing: base, BackingFormat: "raw"}
	if info != want {
		t.Errorf("Info = %+v, want %+v", info, want)
	}
	if info.ActualSize <= 0 || info.ActualSize > 1<<20 {
		t.Errorf("actual size %d", info.ActualSize)
	}

	// dest exists: refused, and the existing file is untouched.
	err = CreateOverlay(ctx, base, FormatRaw, dest, 0)
	if !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("second create: %v, want ErrAlreadyExists", err)
	}

	// Writes through the overlay leave the base unchanged.
	if _, err := system.LookPath("qemu-io"); err != nil {
		t.Log("qemu-io not installed: write-through check skipped")
	} else {
		out, err := system.Run(ctx, "qemu-io", "-f", "qcow2", "-c", "write -P 0xab 0 1M", dest)
		if err != nil {
			t.Fatalf("qemu-io write: %v", err)
		}
		t.Logf("qemu-io: %s", strings.TrimSpace(string(out)))
		out, err = system.Run(ctx, "qemu-io", "-f", "qcow2", "-c", "read -P 0xab 0 1M", dest)
		if err != nil || strings.Contains(string(out), "failed") {
			t.Fatalf("read back through overlay: %v %s", err, out)
		}
		if after := sum(t, base); after != before {
			t.Error("base changed after a write to the overlay")
		}
		info2, err := Info(ctx, dest)
		if err != nil {
			t.Fatal(err)
		}
		if info2.ActualSize <= info.ActualSize {
			t.Errorf("overlay did not grow after a write: %d -> %d", info.ActualSize, info2.ActualSize)
		}
	}
}

func TestCreateOverlaySizes(t *testing.T) {
	needQemuImg(t)
	ctx := context.Background()
	dir := t.TempDir()
	base := makeBase(t, dir, 64<<20)

	big := filepath.Join(dir, "big.qcow2")
	if err := CreateOverlay(ctx, base, FormatRaw, big, 1<<30); err != nil {
		t.Fatal(err)
	}
	info, err := Info(ctx, big)
	if err != nil {
		t.Fatal(err)
	}
	if info.VirtualSize != 1<<30 {
		t.Errorf("grown overlay: virtual size %d, want %d", info.VirtualSize, 1<<30)
	}

	small := filepath.Join(dir, "small.qcow2")
	err = CreateOverlay(ctx, base, FormatRaw, small, 1<<20)
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("shrinking overlay: %v, want ErrInvalidArgument", err)
	}
	if _, err := os.Stat(small); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("refused overlay left a file: %v", err)
	}

	// An overlay of an overlay (qcow2 base), as warm-start clones use.
	clone := filepath.Join(dir, "clone.qcow2")
	if err := CreateOverlay(ctx, big, FormatQCOW2, clone, 0); err != nil {
		t.Fatal(err)
	}
	ci, err := Info(ctx, clone)
	if err != nil {
		t.Fatal(err)
	}
	if ci.Backing != big || ci.BackingFormat != "qcow2" || ci.VirtualSize != 1<<30 {
		t.Errorf("clone info %+v", ci)
	}
}

func TestCreateOverlayErrors(t *testing.T) {
	needQemuImg(t)
	ctx := context.Background()
	dir := t.TempDir()
	base := makeBase(t, dir, 1<<20)
	cases := []struct {
		name, base, format string
		size               int64
		want               error
	}{
		{"bad format", base, "vmdk", 0, errdefs.ErrInvalidArgument},
		{"negative size", base, FormatRaw, -1, errdefs.ErrInvalidArgument},
		{"missing base", filepath.Join(dir, "nope"), FormatRaw, 0, os.ErrNotExist},
		{"base is a dir", dir, FormatRaw, 0, errdefs.ErrInvalidArgument},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dest := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "_")+".qcow2")
			err := CreateOverlay(ctx, c.base, c.format, dest, c.size)
			if !errors.Is(err, c.want) {
				t.Errorf("got %v, want %v", err, c.want)
			}
			if _, err := os.Stat(dest); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("failed create left %s", dest)
			}
		})
	}
	// A base that is not what it claims: qemu-img's error (argv, exit
	// code, stderr) comes through and dest is not left behind.
	junk := filepath.Join(dir, "junk.qcow2")
	if err := os.WriteFile(junk, []byte("not a qcow2 image"), 0o644); err != nil {
		t.Fatal(err)
	}
	dest := filepath.Join(dir, "overjunk.qcow2")
	err := CreateOverlay(ctx, junk, FormatQCOW2, dest, 0)
	if err == nil || system.ExitCode(err) <= 0 || !strings.Contains(err.Error(), "qemu-img") {
		t.Errorf("overlay of junk: %v", err)
	}
	if _, serr := os.Stat(dest); !errors.Is(serr, os.ErrNotExist) {
		t.Errorf("failed create left %s", dest)
	}
}

func TestInfoMissing(t *testing.T) {
	needQemuImg(t)
	_, err := Info(context.Background(), filepath.Join(t.TempDir(), "missing"))
	if err == nil || system.ExitCode(err) != 1 {
		t.Errorf("Info(missing) = %v", err)
	}
}

func TestParseInfo(t *testing.T) {
	in := `{"virtual-size": 2147483648, "filename": "vm.qcow2", "cluster-size": 65536,
	 "format": "qcow2", "actual-size": 200704, "full-backing-filename": "/b/base.ext4",
	 "backing-filename": "/b/base.ext4", "backing-filename-format": "raw", "dirty-flag": false}`
	got, err := parseInfo([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := DiskInfo{VirtualSize: 2 << 30, ActualSize: 200704, Format: "qcow2", Backing: "/b/base.ext4", BackingFormat: "raw"}
	if got != want {
		t.Errorf("got %+v want %+v", got, want)
	}
	for _, bad := range []string{``, `{}`, `{"format":"raw"}`, `[1]`, `{"virtual-size":"x"}`} {
		if _, err := parseInfo([]byte(bad)); err == nil {
			t.Errorf("parseInfo(%q) succeeded", bad)
		}
	}
	b := &boundedBuffer{max: 4}
	if _, err := b.Write([]byte("12345")); err == nil {
		t.Error("bounded buffer accepted too much")
	}
}

func mustGetwd(t *testing.T) string {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return wd
}

func TestDataExtents(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sparse")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const size = 64 << 20
	f.Truncate(size)
	f.WriteAt([]byte("a"), 1<<20)
	f.WriteAt([]byte("b"), 40<<20)
	var got [][2]int64
	if err := DataExtents(f, size, func(off, end int64) error {
		got = append(got, [2]int64{off, end})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Two extents (a filesystem may round them to its blocks), in order,
	// each holding its byte, none in between.
	if len(got) != 2 || got[0][0] > 1<<20 || got[0][1] <= 1<<20 || got[0][1] > 40<<20 || got[1][0] > 40<<20 || got[1][1] <= 40<<20 {
		t.Fatalf("extents %v", got)
	}
	empty := filepath.Join(t.TempDir(), "hole")
	g, _ := os.Create(empty)
	defer g.Close()
	g.Truncate(size)
	n := 0
	DataExtents(g, size, func(int64, int64) error { n++; return nil })
	if n != 0 {
		t.Fatalf("an all-hole file has %d extents", n)
	}
}
