package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-sh/banger/internal/image/imagetest"
)

// tmpfsDir mounts a tmpfs of size MiB on dir (created), unmounted at the
// end of the test.
func tmpfsDir(t *testing.T, dir string, mib int) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%dm,mode=755", mib)); err != nil {
		t.Fatalf("mount tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
}

func resizeTmpfs(t *testing.T, dir string, mib int) {
	t.Helper()
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_REMOUNT, fmt.Sprintf("size=%dm,mode=755", mib)); err != nil {
		t.Fatalf("resize tmpfs %s: %v", dir, err)
	}
}

// fill writes a file in dir until the file system has at most leave
// bytes free; the returned function removes it.
func fill(t *testing.T, dir string, leave int64) func() {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := bytes.Repeat([]byte{1}, 1<<20)
	for {
		var st unix.Statfs_t
		unix.Statfs(dir, &st)
		free := int64(st.Bavail) * st.Bsize
		if free <= leave {
			break
		}
		n := int64(len(buf))
		if free-leave < n {
			n = free - leave
		}
		if _, err := f.Write(buf[:n]); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				break
			}
			t.Fatal(err)
		}
	}
	return func() { os.Remove(p) }
}

// TestDiskFull runs an image import, a create, a template build and an
// export with the cache or state dir (a tmpfs of the test's home) full:
// each fails naming the directory and leaves nothing (leak checker), and
// works once space is freed.
func TestDiskFull(t *testing.T) {
	base := env(t)
	home, err := os.MkdirTemp("", "bgfull")
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{home: home, bin: base.bin}
	t.Cleanup(func() { os.RemoveAll(home) }) // after the tmpfs cleanups unmount
	state, cache := filepath.Join(home, "state"), filepath.Join(home, "cache")
	tmpfsDir(t, cache, 64)
	tmpfsDir(t, state, 192)
	defer func() {
		if err := h.teardown(); err != nil {
			t.Error(err)
		}
	}()
	if err := h.isolate(); err != nil {
		t.Fatal(err)
	}
	h.must(t, "daemon", "start")
	expectFull := func(what, dir string, r result, code int) {
		t.Helper()
		if code == 0 {
			t.Fatalf("%s on a full %s succeeded", what, dir)
		}
		if code != 5 || !strings.Contains(r.stderr, "no space left in "+dir+" (") {
			t.Errorf("%s on a full disk: exit %d, want 5 (unavailable) and an error that names %s:\n%s", what, code, dir, r.stderr)
		}
		t.Logf("%s, %s full: exit %d: %s", what, filepath.Base(dir), code, strings.TrimSpace(r.stderr))
	}

	// 1. Image import (the cheap image build: the files copied into the cache).
	start := time.Now()
	before, err := h.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	img := imagetest.TestImage(t)
	imp := []string{"image", "import", "default", "--kernel", filepath.Join(img, "vmlinux"), "--rootfs", filepath.Join(img, "rootfs.ext4"), "--modules", filepath.Join(img, "modules")}
	r, code := h.run(t, nil, imp...)
	expectFull("image import", cache, r, code)
	h.checkLeaks(t, before, nil)
	if ents, _ := os.ReadDir(filepath.Join(cache, "images")); len(ents) > 0 {
		t.Errorf("half image left in %s: %d entries", filepath.Join(cache, "images"), len(ents))
	}
	resizeTmpfs(t, cache, 700)
	h.must(t, imp...)
	t.Logf("import: %.1f s", time.Since(start).Seconds())
	if h.baseline, err = h.snapshot(); err != nil {
		t.Fatal(err)
	}

	// 2. Create with the state dir full.
	start = time.Now()
	repo := fixtureRepo(t)
	free := fill(t, state, 0)
	r, code = h.run(t, nil, append(append([]string{"vm", "create"}, cheapVM...), "full")...)
	expectFull("vm create", state, r, code)
	free()
	h.checkLeaks(t, h.baseline, nil)
	h.must(t, append(append([]string{"vm", "create"}, cheapVM...), "--workspace", repo, "full")...)
	t.Logf("create: %.1f s", time.Since(start).Seconds())

	// 3. Export with the state dir (its spool) full: the tree untouched.
	start = time.Now()
	execOut(t, h, "full", "sh", "-c", guestEdits+"\nseq 1 200000 > big.txt")
	tree := hostTreeDigest(t, repo)
	free = fill(t, state, 64<<10)
	r, code = h.run(t, nil, "workspace", "export", "full", "--apply")
	expectFull("workspace export --apply", state, r, code)
	free()
	if hostTreeDigest(t, repo) != tree {
		t.Errorf("export on a full disk changed the working tree")
	}
	if left, _ := filepath.Glob(filepath.Join(state, "spool", "*")); len(left) > 0 {
		t.Errorf("spool files left: %v", left)
	}
	h.must(t, "workspace", "export", "full", "--apply")
	if b, err := os.ReadFile(filepath.Join(repo, "big.txt")); err != nil || !bytes.HasSuffix(b, []byte("200000\n")) {
		t.Errorf("export after space freed: big.txt not applied (%v)", err)
	}
	h.must(t, "vm", "delete", "--force", "full")
	t.Logf("export: %.1f s", time.Since(start).Seconds())

	// 4. Template build with the cache dir full.
	start = time.Now()
	before, err = h.snapshot()
	if err != nil {
		t.Fatal(err)
	}
	warm := []string{"image", "warm", "default", "--vcpu", "1", "--mem", "256"}
	free = fill(t, cache, 256<<10)
	r, code = h.run(t, nil, warm...)
	expectFull("image warm", cache, r, code)
	free()
	h.checkLeaks(t, before, nil)
	if ents, _ := os.ReadDir(filepath.Join(cache, "templates")); len(ents) > 0 {
		t.Errorf("half template left in %s: %v", filepath.Join(cache, "templates"), ents)
	}
	h.must(t, warm...)
	t.Logf("template build: %.1f s", time.Since(start).Seconds())
}
