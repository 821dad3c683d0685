package disk

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/system"
)

func fakeHost(qemuImg bool, dm string) Host {
	return Host{
		LookPath: func(name string) (string, error) {
			if name == "qemu-img" && qemuImg {
				return "/usr/bin/qemu-img", nil
			}
			return "", os.ErrNotExist
		},
		DeviceMapper: dm,
	}
}

// TestChoose: the picker follows the backend's formats and the host. The
// test directory is on a filesystem without reflinks here (ext4, tmpfs);
// TestReflink covers the reflink choice on xfs.
func TestChoose(t *testing.T) {
	dir := t.TempDir()
	if probeReflink(dir) == nil {
		t.Skipf("%s shares extents: this table expects a filesystem without reflinks", dir)
	}
	dm := filepath.Join(dir, "control")
	os.WriteFile(dm, nil, 0o644)
	for _, tc := range []struct {
		name    string
		formats []string
		host    Host
		want    string // "" = error
	}{
		{"qemu-like", []string{"qcow2", "raw"}, fakeHost(true, "/nonexistent"), StrategyQCOW2},
		{"qemu-like, no qemu-img", []string{"qcow2", "raw"}, fakeHost(false, "/nonexistent"), StrategySparseCopy},
		{"raw only (firecracker)", []string{"raw"}, fakeHost(true, "/nonexistent"), StrategySparseCopy},
		{"raw only, device-mapper present: never the unimplemented dm-snapshot", []string{"raw"}, fakeHost(true, dm), StrategySparseCopy},
		{"qcow2 only, no qemu-img", []string{"qcow2"}, fakeHost(false, "/nonexistent"), ""},
		{"no formats (no backend)", nil, fakeHost(true, "/nonexistent"), ""},
	} {
		s, err := Choose(tc.formats, dir, tc.host)
		switch {
		case tc.want == "" && err == nil:
			t.Errorf("%s: chose %s, want an error", tc.name, s.Name())
		case tc.want == "" && !errors.Is(err, errdefs.ErrUnavailable):
			t.Errorf("%s: err %v, want unavailable", tc.name, err)
		case tc.want != "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && s.Name() != tc.want:
			t.Errorf("%s: chose %s, want %s", tc.name, s.Name(), tc.want)
		}
	}
	plan := Plan([]string{"raw"}, dir, fakeHost(true, dm))
	if len(plan) != 4 || plan[2].Strategy.Name() != StrategyDMSnapshot || plan[2].OK || !strings.Contains(plan[2].Reason, "not implemented") {
		t.Errorf("dm-snapshot candidate with device-mapper present: %+v", plan[2])
	}
	plan = Plan([]string{"raw"}, dir, fakeHost(true, "/nonexistent"))
	if plan[2].OK || !strings.Contains(plan[2].Reason, "no device-mapper") {
		t.Errorf("dm-snapshot candidate without device-mapper: %+v", plan[2])
	}
	if plan[1].OK || !strings.Contains(plan[1].Reason, "reflink") {
		t.Errorf("reflink candidate on %s: %+v", dir, plan[1])
	}
	// The probe leaves nothing behind.
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("probe left files: %v", ents)
	}
}

func allocatedBytes(t *testing.T, p string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// checkRawStrategy: same bytes as the base, holes stay holes, writes do
// not reach the base, growing works, bad input is refused and leaves
// nothing.
func checkRawStrategy(t *testing.T, s Strategy, dir string) {
	ctx := context.Background()
	const size = 64 << 20
	base := Image{Path: makeBase(t, dir, size), Format: FormatRaw}
	baseSum := sum(t, base.Path)
	img, err := Make(ctx, s, base, filepath.Join(dir, "root"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if img.Format != FormatRaw || img.Path != filepath.Join(dir, "root.img") {
		t.Fatalf("Make = %+v", img)
	}
	if got, ok := Existing(filepath.Join(dir, "root")); !ok || got != img {
		t.Fatalf("Existing = %+v %v, want %+v", got, ok, img)
	}
	if sum(t, img.Path) != baseSum {
		t.Fatal("copy differs from its base")
	}
	if st, _ := os.Stat(img.Path); st.Size() != size {
		t.Fatalf("copy is %d bytes, want %d", st.Size(), size)
	}
	if a := allocatedBytes(t, img.Path); a > 1<<20 {
		t.Errorf("copy allocates %d bytes: holes were filled", a)
	}
	f, err := os.OpenFile(img.Path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("guest write"), 4096)
	f.Close()
	if sum(t, base.Path) != baseSum {
		t.Fatal("a write to the copy changed the base")
	}
	grown := filepath.Join(dir, "grown.img")
	if err := s.Create(ctx, base, grown, 2*size); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(grown); st.Size() != 2*size {
		t.Fatalf("grown copy is %d bytes", st.Size())
	}
	for name, tc := range map[string]struct {
		base Image
		dest string
		size int64
		want error
	}{
		"smaller":    {base, filepath.Join(dir, "small.img"), size / 2, errdefs.ErrInvalidArgument},
		"negative":   {base, filepath.Join(dir, "neg.img"), -1, errdefs.ErrInvalidArgument},
		"qcow2 base": {Image{base.Path, FormatQCOW2}, filepath.Join(dir, "q.img"), 0, errdefs.ErrInvalidArgument},
		"exists":     {base, img.Path, 0, errdefs.ErrAlreadyExists},
		"no base":    {Image{filepath.Join(dir, "nope"), FormatRaw}, filepath.Join(dir, "nobase.img"), 0, os.ErrNotExist},
		"dir base":   {Image{dir, FormatRaw}, filepath.Join(dir, "dirbase.img"), 0, errdefs.ErrInvalidArgument},
	} {
		err := s.Create(ctx, tc.base, tc.dest, tc.size)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: err %v, want %v", name, err, tc.want)
		}
		if tc.dest != img.Path {
			if _, serr := os.Lstat(tc.dest); serr == nil {
				t.Errorf("%s: left %s behind", name, tc.dest)
			}
		}
	}
	if err := Detach(ctx, img, base); err != nil {
		t.Errorf("Detach of a raw copy: %v", err)
	}
}

func TestSparseCopy(t *testing.T) {
	checkRawStrategy(t, sparseCopy{}, t.TempDir())
}

// TestReflink makes an xfs filesystem in a loop-mounted file (needs root
// and mkfs.xfs): the picker chooses reflink there for a raw-only backend,
// and a reflink copy of a 64 MiB base with 10 KB of data uses no new
// blocks of the filesystem.
func TestReflink(t *testing.T) {
	if testing.Short() {
		t.Skip("mounts a loop filesystem")
	}
	if os.Geteuid() != 0 {
		t.Skip("loop mounts need root")
	}
	if _, err := system.LookPath("mkfs.xfs"); err != nil {
		t.Skip("mkfs.xfs not installed (apt-get install xfsprogs)")
	}
	ctx := context.Background()
	tmp := t.TempDir()
	fsImg := filepath.Join(tmp, "xfs.img")
	if err := os.WriteFile(fsImg, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(fsImg, 512<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := system.Run(ctx, "mkfs.xfs", "-q", "-m", "reflink=1", fsImg); err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(tmp, "mnt")
	os.Mkdir(mnt, 0o755)
	if _, err := system.Run(ctx, "mount", "-o", "loop", fsImg, mnt); err != nil {
		t.Skipf("cannot loop-mount here: %v", err)
	}
	t.Cleanup(func() {
		if _, err := system.Run(context.Background(), "umount", mnt); err != nil {
			t.Errorf("umount: %v", err)
		}
	})
	dir := filepath.Join(mnt, "vms")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	s, err := Choose([]string{FormatRaw}, dir, fakeHost(true, "/nonexistent"))
	if err != nil || s.Name() != StrategyReflink {
		t.Fatalf("Choose on xfs = %v, %v; want reflink", s, err)
	}
	if s, _ := Choose([]string{FormatQCOW2, FormatRaw}, dir, fakeHost(true, "/nonexistent")); s.Name() != StrategyQCOW2 {
		t.Errorf("a backend taking qcow2 gets %s on xfs, want the overlay", s.Name())
	}
	checkRawStrategy(t, s, dir)

	// Extents are shared: a copy of a base with 16 MiB of data costs
	// (almost) no free space.
	base := filepath.Join(dir, "big.raw")
	if err := os.WriteFile(base, []byte(strings.Repeat("x", 16<<20)), 0o644); err != nil {
		t.Fatal(err)
	}
	syscall.Sync()
	free := func() int64 {
		var st syscall.Statfs_t
		if err := syscall.Statfs(dir, &st); err != nil {
			t.Fatal(err)
		}
		return int64(st.Bfree) * st.Bsize
	}
	before := free()
	if err := s.Create(ctx, Image{base, FormatRaw}, filepath.Join(dir, "big.img"), 0); err != nil {
		t.Fatal(err)
	}
	syscall.Sync()
	if used := before - free(); used > 1<<20 {
		t.Errorf("reflink copy of 16 MiB used %d bytes of the filesystem", used)
	}
}

// TestDetachQCOW2: an overlay over base A, detached onto base B, reads
// what it read through A and is backed by B.
func TestDetachQCOW2(t *testing.T) {
	needQemuImg(t)
	ctx := context.Background()
	dir := t.TempDir()
	a := makeBase(t, dir, 8<<20)
	b := filepath.Join(dir, "b.raw")
	if err := os.WriteFile(b, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Truncate(b, 8<<20)
	img, err := Make(ctx, qcow2Overlay{}, Image{a, FormatRaw}, filepath.Join(dir, "root"), 0)
	if err != nil {
		t.Fatal(err)
	}
	if img.Path != filepath.Join(dir, "root.qcow2") || img.Format != FormatQCOW2 {
		t.Fatalf("Make = %+v", img)
	}
	if got, ok := Existing(filepath.Join(dir, "root")); !ok || got != img {
		t.Fatalf("Existing = %+v %v", got, ok)
	}
	if err := Detach(ctx, img, Image{Path: b}); err != nil {
		t.Fatal(err)
	}
	info, err := Info(ctx, img.Path)
	if err != nil {
		t.Fatal(err)
	}
	if info.Backing != b || info.BackingFormat != FormatRaw {
		t.Errorf("after Detach: backing %q (%s), want %s (raw)", info.Backing, info.BackingFormat, b)
	}
	if _, err := system.Run(ctx, "qemu-img", "compare", "-q", "-f", "qcow2", "-F", "raw", img.Path, a); err != nil {
		t.Errorf("detached overlay differs from its old base: %v", err)
	}
	if err := Detach(ctx, img, Image{Path: filepath.Join(dir, "missing.raw")}); err == nil {
		t.Error("Detach onto a missing base succeeded")
	}
}

func TestExistingNone(t *testing.T) {
	if img, ok := Existing(filepath.Join(t.TempDir(), "root")); ok {
		t.Errorf("Existing in an empty dir = %+v", img)
	}
}
