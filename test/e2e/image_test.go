package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/image/imagetest"
)

func TestImageShowAndRmRefusedWhileUsed(t *testing.T) {
	h, vm := sharedVM(t)
	var im api.Image
	if err := json.Unmarshal([]byte(h.must(t, "image", "show", "--json", "default")), &im); err != nil {
		t.Fatal(err)
	}
	if im.KernelVersion == "" || im.Digest == "" || len(im.Files) < 3 || im.Files["rootfs.ext4"].SHA256 == "" {
		t.Fatalf("image show: %+v", im)
	}
	found := false
	for _, v := range im.VMs {
		found = found || v == vm
	}
	if !found {
		t.Fatalf("image show does not list vm %s: %v", vm, im.VMs)
	}
	r, code := h.run(t, nil, "image", "rm", "default")
	if code != 4 || !strings.Contains(r.stderr, vm) {
		t.Fatalf("image rm of a used image: exit %d, stderr %q (want 4, naming %s)", code, r.stderr, vm)
	}
	if out := h.must(t, "image", "ls"); !strings.Contains(out, "default") {
		t.Fatalf("image ls after refused rm: %s", out)
	}
}

func TestImageImportRejectsBadInputLeavingNothing(t *testing.T) {
	h := env(t)
	dir := t.TempDir()
	junk := filepath.Join(dir, "junk")
	os.WriteFile(junk, []byte("not a kernel, not ext4"), 0o644)
	img := imagetest.TestImage(t)
	for _, args := range [][]string{
		{"image", "import", "bad1", "--kernel", junk, "--rootfs", filepath.Join(img, "rootfs.ext4")},
		{"image", "import", "bad2", "--kernel", filepath.Join(img, "vmlinux"), "--rootfs", junk},
		{"image", "import", "bad3", "--kernel", filepath.Join(dir, "missing"), "--rootfs", junk},
		{"image", "import", "default", "--kernel", filepath.Join(img, "vmlinux"), "--rootfs", filepath.Join(img, "rootfs.ext4")},
	} {
		if r, code := h.run(t, nil, args...); code == 0 || r.stderr == "" {
			t.Errorf("%v: exit %d stderr %q", args, code, r.stderr)
		}
	}
	out := h.must(t, "image", "ls", "--json")
	var list []api.Image
	json.Unmarshal([]byte(out), &list)
	if len(list) != 1 || list[0].Name != "default" {
		t.Fatalf("images after bad imports: %s", out)
	}
	ents, _ := os.ReadDir(filepath.Join(h.home, "cache", "images"))
	if len(ents) != 1 {
		t.Fatalf("image dirs after bad imports: %d", len(ents))
	}
	tmp, _ := os.ReadDir(filepath.Join(h.home, "cache", "tmp"))
	if len(tmp) != 0 {
		t.Fatalf("scratch left in cache/tmp: %d entries", len(tmp))
	}
}

// TestFirstUseBuildsDefaultImage runs `vm run` under a fresh home with no
// image: banger must build the default image first, say so, and run the
// command. The debootstrap/kernel caches are shared with the test image's
// so this costs a cached build, not a cold one.
func TestFirstUseBuildsDefaultImage(t *testing.T) {
	base := env(t)
	home, err := os.MkdirTemp("", "bgfirst")
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{home: home, bin: base.bin}
	defer func() {
		if err := h.teardown(); err != nil {
			t.Error(err)
		}
	}()
	if err := h.isolate(); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(home, "cache"), 0o755)
	if err := os.Symlink(filepath.Join(imagetest.CacheDir(), "build"), filepath.Join(home, "cache", "build")); err != nil {
		t.Fatal(err)
	}
	r, code := h.run(t, nil, "vm", "run", "--rm", "--", "cat", "/etc/os-release")
	if code != 0 || !strings.Contains(r.stdout, "Debian") {
		t.Fatalf("exit %d\nstdout %s\nstderr %s", code, r.stdout, r.stderr)
	}
	if !strings.Contains(r.stderr, `image "default" not found: building it first`) {
		t.Errorf("did not say it builds the image first:\n%s", r.stderr)
	}
	if out := h.must(t, "image", "ls"); !strings.Contains(out, "default") {
		t.Errorf("default image not registered: %s", out)
	}
	h.assertNoLeftovers(t)
}
