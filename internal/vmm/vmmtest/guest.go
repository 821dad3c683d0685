package vmmtest

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/banger-sh/banger/internal/system"
)

// CacheDirEnv names the directory holding test downloads (outside the
// repo, shared with imagetest); default DefaultCacheDir. BusyboxGuest
// takes Debian's cloud kernel package from there (or from the image
// builder's cache under build/kernel), and fetches it with apt-get
// download when neither has it; it unpacks it under vmmtest/.
const (
	CacheDirEnv     = "BANGER_TEST_CACHE"
	DefaultCacheDir = "/var/cache/banger-test"
)

// ReadyLine is what the busybox guest writes, about once a second, on the
// agent port.
const ReadyLine = "banger-test ready root=banger-test-root"

// guestModules are loaded, in order, by the busybox guest's /init.
var guestModules = []string{
	"virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "virtio_console", "virtio-rng",
}

// busyboxInit is /init of the busybox guest. It loads the virtio modules,
// mounts /dev/vda read-only to prove it is the root disk, waits for the
// "banger.agent" port and writes ReadyLine to it once a second (a write
// blocks until a host client is connected), for ever.
const busyboxInit = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in %s; do insmod /lib/modules/$m.ko || echo "banger-test: insmod $m failed"; done
root=$(mount -o ro /dev/vda /mnt && cat /mnt/id)
# The port appears shortly after virtio_console loads (the host announces
# it): look until it is there.
port=
while [ -z "$port" ]; do
	for p in /sys/class/virtio-ports/*; do
		[ "$(cat $p/name 2>/dev/null)" = banger.agent ] && port=/dev/${p##*/}
	done
	[ -n "$port" ] || sleep 0.05
done
echo "banger-test: port=$port root=$root uptime=$(cat /proc/uptime)"
while :; do
	echo "banger-test ready root=$root" > $port
	sleep 1
done
`

// BusyboxGuest builds a small bootable guest: Debian's cloud kernel (its
// ELF vmlinux when lz4 can extract it, else the bzImage), an initramfs of
// static busybox + virtio modules, and a 16 MiB ext4 root base. Its Ready
// reads ReadyLine. It skips t when busybox-static is missing or the kernel
// package can be neither found nor downloaded.
func BusyboxGuest(t testing.TB) Env {
	t.Helper()
	cache := os.Getenv(CacheDirEnv)
	if cache == "" {
		cache = DefaultCacheDir
	}
	busybox := "/bin/busybox"
	if err := checkStatic(busybox); err != nil {
		t.Skipf("busybox: %v (apt-get install busybox-static)", err)
	}
	ctx := context.Background()
	deb, err := kernelDeb(ctx, cache)
	if err != nil {
		t.Skipf("no Debian cloud kernel package: %v", err)
	}
	pkg, err := extractDeb(ctx, deb, filepath.Join(cache, "vmmtest"))
	if err != nil {
		t.Fatal(err)
	}
	bz, _ := filepath.Glob(filepath.Join(pkg, "boot", "vmlinuz-*"))
	if len(bz) != 1 {
		t.Fatalf("%s: want one boot/vmlinuz-*, found %v", pkg, bz)
	}
	kernel := bz[0]
	if vml, err := extractVmlinux(ctx, bz[0], filepath.Join(pkg, "vmlinux")); err == nil {
		kernel = vml
	} else {
		t.Logf("booting the bzImage (ELF vmlinux not extracted: %v)", err)
	}

	dir := t.TempDir()
	initrd := filepath.Join(dir, "initrd.img")
	if err := buildInitramfs(ctx, filepath.Join(dir, "stage"), busybox, pkg, initrd); err != nil {
		t.Fatal(err)
	}
	rootDir := filepath.Join(dir, "rootfs")
	if err := os.MkdirAll(rootDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootDir, "id"), []byte("banger-test-root\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "root.ext4")
	if _, err := system.Run(ctx, "mkfs.ext4", "-q", "-F", "-L", "bgroot", "-d", rootDir, root, "16M"); err != nil {
		t.Fatal(err)
	}
	return Env{
		Kernel:         kernel,
		Initrd:         initrd,
		RootBase:       root,
		RootBaseFormat: "raw",
		Ready:          ReadReady,
	}
}

// ReadReady waits for ReadyLine on conn (bounded by ctx).
func ReadReady(ctx context.Context, conn net.Conn) error {
	stop := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	r := bufio.NewReader(io.LimitReader(conn, 64<<10))
	for {
		line, err := r.ReadString('\n')
		if strings.TrimSpace(line) == ReadyLine {
			return nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("%w (last line %q)", ctx.Err(), line)
			}
			return fmt.Errorf("reading agent port: %w (last line %q)", err, line)
		}
	}
}

// checkStatic fails unless path is an ELF executable without an
// interpreter (a static binary that runs in an empty initramfs).
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked", path)
		}
	}
	return nil
}

// kernelDeb finds linux-image-6.*-cloud-amd64 .deb in cache (where
// apt-get download puts it) or in the image builder's cache
// (cache/build/kernel), or downloads it into cache with apt-get.
func kernelDeb(ctx context.Context, cache string) (string, error) {
	for _, pat := range []string{
		filepath.Join(cache, "linux-image-6.*-cloud-amd64_*.deb"),
		filepath.Join(cache, "build", "kernel", "linux-image-6.*-cloud-amd64_*.deb"),
	} {
		if debs, _ := filepath.Glob(pat); len(debs) > 0 {
			sort.Strings(debs)
			return debs[len(debs)-1], nil
		}
	}
	out, err := system.Run(ctx, "apt-cache", "depends", "linux-image-cloud-amd64")
	if err != nil {
		return "", err
	}
	var pkg string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "Depends:" && strings.HasPrefix(f[1], "linux-image-6.") {
			pkg = f[1]
		}
	}
	if pkg == "" {
		return "", fmt.Errorf("apt-cache depends linux-image-cloud-amd64 names no linux-image-6.* (run apt-get update)")
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return "", err
	}
	if _, err := system.RunOpts(ctx, system.Opts{Dir: cache}, "apt-get", "download", pkg); err != nil {
		return "", err
	}
	debs, _ := filepath.Glob(filepath.Join(cache, pkg+"_*.deb"))
	if len(debs) == 0 {
		return "", fmt.Errorf("apt-get download %s left no .deb in %s", pkg, cache)
	}
	return debs[0], nil
}

// extractDeb unpacks a .deb into dir/<name>, once.
func extractDeb(ctx context.Context, deb, dir string) (string, error) {
	out := filepath.Join(dir, strings.TrimSuffix(filepath.Base(deb), ".deb"))
	if _, err := os.Stat(filepath.Join(out, "boot")); err == nil {
		return out, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(dir, ".extract")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	if _, err := system.Run(ctx, "dpkg-deb", "-x", deb, tmp); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, out); err != nil {
		if _, serr := os.Stat(filepath.Join(out, "boot")); serr == nil {
			return out, nil // another test process won the race
		}
		return "", err
	}
	return out, nil
}

// extractVmlinux extracts the LZ4-compressed ELF from a bzImage into out,
// once. The LZ4 legacy stream (magic 02 21 4c 18) is followed by other
// bytes, on which lz4 exits non-zero after writing the whole ELF: success
// is judged by the output being a complete ELF.
func extractVmlinux(ctx context.Context, bzImage, out string) (string, error) {
	if f, err := elf.Open(out); err == nil {
		f.Close()
		return out, nil
	}
	if _, err := system.LookPath("lz4"); err != nil {
		return "", err
	}
	b, err := os.ReadFile(bzImage)
	if err != nil {
		return "", err
	}
	i := bytes.Index(b, []byte{0x02, 0x21, 0x4c, 0x18})
	if i < 0 {
		return "", fmt.Errorf("%s: no LZ4 stream", bzImage)
	}
	tmp := out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return "", err
	}
	_, lzErr := system.RunOpts(ctx, system.Opts{Stdin: bytes.NewReader(b[i:]), Stdout: f}, "lz4", "-dc")
	f.Close()
	ef, err := elf.Open(tmp)
	if err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("lz4 output is not an ELF (%v): %v", lzErr, err)
	}
	_, serr := ef.Section(".text").Data()
	ef.Close()
	if serr != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("lz4 output is truncated: %v", serr)
	}
	return out, os.Rename(tmp, out)
}

// buildInitramfs writes an uncompressed newc cpio with busybox, /init and
// the virtio modules of the kernel package at pkg.
func buildInitramfs(ctx context.Context, stage, busybox, pkg, out string) error {
	for _, d := range []string{"bin", "dev", "proc", "sys", "mnt", "lib/modules"} {
		if err := os.MkdirAll(filepath.Join(stage, d), 0o755); err != nil {
			return err
		}
	}
	if err := copyFile(busybox, filepath.Join(stage, "bin", "busybox"), 0o755); err != nil {
		return err
	}
	found := map[string]string{}
	err := filepath.WalkDir(filepath.Join(pkg, "lib", "modules"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if name, ok := strings.CutSuffix(d.Name(), ".ko"); ok {
			found[name] = p
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, m := range guestModules {
		p, ok := found[m]
		if !ok {
			return fmt.Errorf("module %s.ko not in %s (compressed modules are not supported here)", m, pkg)
		}
		if err := copyFile(p, filepath.Join(stage, "lib", "modules", m+".ko"), 0o644); err != nil {
			return err
		}
	}
	init := fmt.Sprintf(busyboxInit, strings.Join(guestModules, " "))
	if err := os.WriteFile(filepath.Join(stage, "init"), []byte(init), 0o755); err != nil {
		return err
	}
	var list bytes.Buffer
	err = filepath.WalkDir(stage, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(stage, p)
		list.WriteString(rel + "\n")
		return nil
	})
	if err != nil {
		return err
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := system.RunOpts(ctx, system.Opts{Dir: stage, Stdin: &list, Stdout: f}, "cpio", "--quiet", "-o", "-H", "newc"); err != nil {
		return err
	}
	return f.Close()
}

func copyFile(src, dst string, mode os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, mode)
}
