package image

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/system"
)

// makeExt4File makes a small real ext4 image (mkfs.ext4 -d from a tiny tree).
func makeExt4File(t *testing.T, dir string) string {
	t.Helper()
	tree := filepath.Join(dir, "tree")
	if err := os.MkdirAll(filepath.Join(tree, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "etc", "hostname"), []byte("t\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "root.ext4")
	if _, err := system.Run(context.Background(), "mkfs.ext4", "-q", "-F", "-d", tree, p, "8M"); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCheckExt4(t *testing.T) {
	dir := t.TempDir()
	if err := CheckExt4(makeExt4File(t, dir)); err != nil {
		t.Errorf("real ext4: %v", err)
	}
	// Just the magic at 1080 is enough for the check.
	magicOnly := make([]byte, 4096)
	magicOnly[1080], magicOnly[1081] = 0x53, 0xef
	bad := map[string][]byte{
		"zeros":    make([]byte, 8192),
		"short":    make([]byte, 1000),
		"empty":    nil,
		"swapped":  append(make([]byte, 1080), 0xef, 0x53, 0, 0),
		"textfile": []byte(strings.Repeat("not a file system\n", 200)),
	}
	for name, data := range bad {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := CheckExt4(p); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: err = %v, want invalid argument", name, err)
		}
	}
	p := filepath.Join(dir, "magic")
	if err := os.WriteFile(p, magicOnly, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := CheckExt4(p); err != nil {
		t.Errorf("magic only: %v", err)
	}
	if err := CheckExt4(dir); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("directory: err = %v", err)
	}
}

// fakeImage writes an image directory with small stand-in files.
func fakeImage(t *testing.T, dir string) {
	t.Helper()
	files := map[string]string{
		FileVmlinux:          "\x7fELF fake kernel",
		FileBzImage:          "fake bzImage",
		FileRootfs:           "fake rootfs",
		"modules/virtio.ko":  "\x7fELF virtio",
		"modules/virtio2.ko": "\x7fELF virtio2",
		FileLoadOrder:        "virtio.ko\nvirtio2.ko\n",
	}
	for name, data := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// A sparse rootfs: holes must hash as zeros.
	f, err := os.OpenFile(filepath.Join(dir, FileRootfs), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("data after a hole"), 5<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(16 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

func TestManifestRoundTripAndVerify(t *testing.T) {
	dir := t.TempDir()
	fakeImage(t, dir)
	m := &Manifest{Name: "rt", Source: SourceBuild, Suite: "bookworm", Packages: []string{"git"}, KernelVersion: "6.1.0-1-cloud-amd64", Modules: []string{"virtio.ko", "virtio2.ko"}}
	if err := writeManifest(dir, m); err != nil {
		t.Fatal(err)
	}
	got, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.Digest != m.Digest || len(got.Files) != 6 || got.Name != "rt" || got.KernelVersion != m.KernelVersion || !slices.Equal(got.Modules, m.Modules) || got.Dir != dir {
		t.Errorf("round trip: got %+v\nwant %+v", got, m)
	}
	// The rootfs digest is sha256sum's, holes included.
	out, err := system.Run(context.Background(), "sha256sum", filepath.Join(dir, FileRootfs))
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.Fields(string(out))[0]; got.Files[FileRootfs].SHA256 != want {
		t.Errorf("rootfs sha256 %s, sha256sum says %s", got.Files[FileRootfs].SHA256, want)
	}
	if err := Verify(dir); err != nil {
		t.Fatalf("Verify of an intact image: %v", err)
	}

	// One changed byte (same size) is caught by Verify, not by Load.
	f, err := os.OpenFile(filepath.Join(dir, FileRootfs), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{'D'}, 5<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := Load(dir); err != nil {
		t.Errorf("Load after a same-size change: %v", err)
	}
	err = Verify(dir)
	if !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), FileRootfs) {
		t.Errorf("Verify after a changed byte: %v", err)
	}

	// A size change is caught by Load.
	if err := os.WriteFile(filepath.Join(dir, FileVmlinux), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), FileVmlinux) {
		t.Errorf("Load after a size change: %v", err)
	}
}

func TestLoadRejectsBadManifests(t *testing.T) {
	dir := t.TempDir()
	fakeImage(t, dir)
	if err := writeManifest(dir, &Manifest{Name: "m", Source: SourceBuild, KernelVersion: "6.1"}); err != nil {
		t.Fatal(err)
	}
	good, err := os.ReadFile(filepath.Join(dir, FileManifest))
	if err != nil {
		t.Fatal(err)
	}
	edit := func(f func(m map[string]any)) []byte {
		var m map[string]any
		if err := json.Unmarshal(good, &m); err != nil {
			t.Fatal(err)
		}
		f(m)
		b, _ := json.Marshal(m)
		return b
	}
	files := func(m map[string]any) map[string]any { return m["files"].(map[string]any) }
	cases := map[string][]byte{
		"not json":       []byte("{"),
		"future format":  edit(func(m map[string]any) { m["format_version"] = 99 }),
		"no name":        edit(func(m map[string]any) { m["name"] = "" }),
		"wrong digest":   edit(func(m map[string]any) { m["digest"] = strings.Repeat("0", 64) }),
		"no rootfs":      edit(func(m map[string]any) { delete(files(m), FileRootfs) }),
		"escaping name":  edit(func(m map[string]any) { files(m)["../etc/passwd"] = files(m)[FileRootfs] }),
		"file digest":    edit(func(m map[string]any) { files(m)[FileVmlinux].(map[string]any)["sha256"] = "abc" }),
		"missing module": edit(func(m map[string]any) { files(m)["modules/gone.ko"] = files(m)["modules/virtio.ko"] }),
	}
	for name, data := range cases {
		if err := os.WriteFile(filepath.Join(dir, FileManifest), data, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(dir); err == nil {
			t.Errorf("%s: Load accepted it", name)
		}
	}
	if _, err := Load(t.TempDir()); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("empty dir: %v, want not found", err)
	}
}

// modulesDepFixture is modules.dep of Debian's 6.1 cloud kernel, cut to the
// lines that matter (and reordered as depmod does: not sorted).
const modulesDepFixture = `kernel/fs/fuse/virtiofs.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko kernel/fs/fuse/fuse.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_mmio.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/char/virtio_console.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/net/vmw_vsock/vsock.ko:
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/net/vmw_vsock/vsock.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko
kernel/drivers/scsi/virtio_scsi.ko: kernel/drivers/scsi/scsi_mod.ko kernel/drivers/scsi/scsi_common.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/scsi/scsi_mod.ko: kernel/drivers/scsi/scsi_common.ko
kernel/drivers/scsi/scsi_common.ko:
kernel/fs/fuse/fuse.ko:
kernel/drivers/zst/thing.ko.zst: kernel/drivers/virtio/virtio.ko
`

const modulesBuiltinFixture = `kernel/fs/ext4/ext4.ko
kernel/fs/jbd2/jbd2.ko
kernel/crypto/crc32c_generic.ko
`

func fixtureIndex(t *testing.T) *moduleIndex {
	t.Helper()
	var idx moduleIndex
	if err := parseModulesDep(strings.NewReader(modulesDepFixture), &idx); err != nil {
		t.Fatal(err)
	}
	if err := parseModulesBuiltin(strings.NewReader(modulesBuiltinFixture), &idx); err != nil {
		t.Fatal(err)
	}
	return &idx
}

func TestResolveLoadOrder(t *testing.T) {
	idx := fixtureIndex(t)
	tests := []struct {
		name        string
		wanted      []string
		want        []string
		wantBuiltin []string
	}{
		{
			name:   "guest modules",
			wanted: guestModules,
			want: []string{"virtio_ring", "virtio", "virtio_mmio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
				"virtio_blk", "virtio_console", "virtio_rng", "failover", "net_failover", "virtio_net",
				"vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"},
		},
		{
			name:   "dependencies first when asked last",
			wanted: []string{"virtio_net", "virtio_scsi"},
			want:   []string{"virtio_ring", "virtio", "failover", "net_failover", "virtio_net", "scsi_common", "scsi_mod", "virtio_scsi"},
		},
		{
			name:        "built-in modules are skipped",
			wanted:      []string{"ext4", "virtio_blk", "jbd2"},
			want:        []string{"virtio_ring", "virtio", "virtio_blk"},
			wantBuiltin: []string{"ext4", "jbd2"},
		},
		{
			name:   "dash and underscore are one name; compressed files",
			wanted: []string{"virtio-rng", "thing"},
			want:   []string{"virtio_ring", "virtio", "virtio_rng", "thing"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, builtin, err := resolveLoadOrder(idx, tt.wanted)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) || !slices.Equal(builtin, tt.wantBuiltin) {
				t.Errorf("got %v (builtin %v)\nwant %v (builtin %v)", got, builtin, tt.want, tt.wantBuiltin)
			}
		})
	}
	if _, _, err := resolveLoadOrder(idx, []string{"virtio_gpu"}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("unknown module: %v", err)
	}
	if p := idx.path["virtio_rng"]; p != "kernel/drivers/char/hw_random/virtio-rng.ko" {
		t.Errorf("path of virtio_rng = %q", p)
	}
	if _, _, err := resolveLoadOrder(&moduleIndex{
		path: map[string]string{"a": "a.ko", "b": "b.ko"},
		deps: map[string][]string{"a": {"b"}, "b": {"a"}},
	}, []string{"a"}); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Errorf("cycle: %v", err)
	}
	var idx2 moduleIndex
	if err := parseModulesDep(strings.NewReader("no colon here\n"), &idx2); err == nil {
		t.Error("bad modules.dep accepted")
	}
}

func TestInstallModulesDebian(t *testing.T) {
	k := testKernel(t)
	out := filepath.Join(t.TempDir(), "modules")
	order, err := installModules(context.Background(), "", k.Release, k.ModulesDir, guestModules, out)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"virtio_ring.ko", "virtio.ko", "virtio_mmio.ko", "virtio_pci_modern_dev.ko", "virtio_pci_legacy_dev.ko", "virtio_pci.ko",
		"virtio_blk.ko", "virtio_console.ko", "virtio-rng.ko", "failover.ko", "net_failover.ko", "virtio_net.ko",
		"vsock.ko", "vmw_vsock_virtio_transport_common.ko", "vmw_vsock_virtio_transport.ko"}
	if !slices.Equal(order, want) {
		t.Errorf("load order\n got %v\nwant %v", order, want)
	}
	onDisk, err := ReadLoadOrder(filepath.Join(out, "load-order"))
	if err != nil || !slices.Equal(onDisk, order) {
		t.Errorf("load-order file %v, %v", onDisk, err)
	}
	entries, _ := os.ReadDir(out)
	if len(entries) != len(want)+1 {
		t.Errorf("%d files in modules dir, want %d", len(entries), len(want)+1)
	}
}

func TestPickMirror(t *testing.T) {
	deb822 := `Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main

Types: deb-src
URIs: http://src.example/debian
Suites: trixie
`
	list := `# comment
deb-src http://src.example/debian trixie main
deb [arch=amd64 signed-by=/k.gpg] http://list.example/debian trixie main contrib
deb http://security.example/debian-security trixie-security main
`
	var sources []aptSource
	sources = append(sources, parseDeb822Sources(strings.NewReader(deb822))...)
	sources = append(sources, parseSourcesList(strings.NewReader(list))...)
	if len(sources) != 4 {
		t.Fatalf("parsed %+v", sources)
	}
	for suite, want := range map[string]string{
		"bookworm": "http://mirror.example/debian",
		"trixie":   "http://list.example/debian",
		"sid":      "http://mirror.example/debian",
	} {
		if got := pickMirror(sources, suite); got != want {
			t.Errorf("%s: %s, want %s", suite, got, want)
		}
	}
	if got := pickMirror(nil, "bookworm"); got != DefaultMirror {
		t.Errorf("no sources: %s", got)
	}
	if got := pickMirror(parseDeb822Sources(strings.NewReader("Types: deb\nEnabled: no\nURIs: http://off.example/debian\nSuites: bookworm\n")), "bookworm"); got != DefaultMirror {
		t.Errorf("disabled source used: %s", got)
	}
}

func TestPrepareTree(t *testing.T) {
	root := t.TempDir()
	mk := func(p, data string) {
		p = filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"usr/bin", "usr/sbin", "usr/lib"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("usr/bin", filepath.Join(root, "bin")); err != nil {
		t.Fatal(err)
	}
	mk("etc/ssh/ssh_host_ed25519_key", "secret")
	mk("etc/ssh/ssh_host_ed25519_key.pub", "pub")
	mk("etc/ssh/sshd_config", "config")
	mk("usr/share/doc/git/README", "docs")
	mk("usr/share/doc/git/copyright", "c")
	mk("usr/share/man/man1/git.1.gz", "man")
	mk("usr/share/locale/de/LC_MESSAGES/git.mo", "de")
	mk("usr/share/locale/locale.alias", "alias")
	mk("var/cache/apt/archives/git.deb", "deb")
	mk("var/cache/apt/pkgcache.bin", "bin")
	mk("var/lib/apt/lists/x_Packages", "lists")
	mk("debootstrap/debootstrap.log", "log")
	mk("etc/real-resolv.conf", "host's")
	if err := os.Symlink("real-resolv.conf", filepath.Join(root, "etc/resolv.conf")); err != nil {
		t.Fatal(err)
	}
	mk("etc/hostname", "buildhost\n")
	mk("run/adduser", "")

	if err := prepareTree(root, "banger"); err != nil {
		t.Fatal(err)
	}
	gone := []string{"etc/ssh/ssh_host_ed25519_key", "etc/ssh/ssh_host_ed25519_key.pub", "usr/share/doc/git/README", "usr/share/man/man1",
		"usr/share/locale/de", "var/cache/apt/archives/git.deb", "var/cache/apt/pkgcache.bin", "var/lib/apt/lists/x_Packages", "debootstrap", "run/adduser"}
	for _, p := range gone {
		if _, err := os.Lstat(filepath.Join(root, p)); err == nil {
			t.Errorf("%s still there", p)
		}
	}
	kept := []string{"etc/ssh/sshd_config", "usr/share/doc/git/copyright", "usr/share/locale/locale.alias", "var/lib/apt/lists/partial", "var/cache/apt/archives/partial", "root/.ssh", "etc/fstab", "etc/hosts", "etc/machine-id", "run/sshd"}
	for _, p := range kept {
		if _, err := os.Lstat(filepath.Join(root, p)); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(root, "etc/real-resolv.conf")); string(b) != "host's" {
		t.Errorf("resolv.conf written through its symlink: %q", b)
	}
	if st, err := os.Lstat(filepath.Join(root, "etc/resolv.conf")); err != nil || !st.Mode().IsRegular() {
		t.Errorf("resolv.conf is not a regular file: %v %v", st, err)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "etc/hostname")); string(b) != "banger\n" {
		t.Errorf("hostname %q", b)
	}
	for p, want := range map[string]os.FileMode{"root": 0o700, "root/.ssh": 0o700, "tmp": 0o777 | os.ModeSticky, "run/lock": 0o777 | os.ModeSticky} {
		st, err := os.Stat(filepath.Join(root, p))
		if err != nil || st.Mode().Perm()|st.Mode()&os.ModeSticky != want {
			t.Errorf("%s: mode %v, want %v (%v)", p, st.Mode(), want, err)
		}
	}
	for _, l := range []string{"sbin", "lib"} {
		if target, err := os.Readlink(filepath.Join(root, l)); err != nil || target != "usr/"+l {
			t.Errorf("/%s -> %q, %v", l, target, err)
		}
	}
}

func TestMakeExt4TooSmall(t *testing.T) {
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	if err := os.MkdirAll(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	f, _ := os.Create(filepath.Join(tree, "big"))
	f.Write(make([]byte, 70<<20))
	f.Close()
	out := filepath.Join(dir, "r.ext4")
	err := makeExt4(context.Background(), tree, out, 64<<20, "t", nil)
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("err = %v, want invalid argument", err)
	}
	if _, err := os.Stat(out); err == nil {
		t.Error("image file created anyway")
	}
	if err := makeExt4(context.Background(), tree, out, 256<<20, "t", nil); err != nil {
		t.Fatal(err)
	}
	if err := CheckExt4(out); err != nil {
		t.Fatal(err)
	}
}
