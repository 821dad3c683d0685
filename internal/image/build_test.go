package image_test

import (
	"context"
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-sh/banger/internal/image"
	"github.com/banger-sh/banger/internal/image/imagetest"
	"github.com/banger-sh/banger/internal/system"
)

// wantLoadOrder is the load order for Debian's 6.1 cloud kernel, where all
// of these are modules (ENVIRONMENT.md).
var wantLoadOrder = []string{
	"virtio_ring.ko", "virtio.ko", "virtio_mmio.ko",
	"virtio_pci_modern_dev.ko", "virtio_pci_legacy_dev.ko", "virtio_pci.ko",
	"virtio_blk.ko", "virtio_console.ko", "virtio-rng.ko",
	"failover.ko", "net_failover.ko", "virtio_net.ko",
	"vsock.ko", "vmw_vsock_virtio_transport_common.ko", "vmw_vsock_virtio_transport.ko",
}

// TestBuildImage builds (or reuses) the shared test image and checks what
// it holds. Slow the first time on a machine (debootstrap).
func TestBuildImage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a Debian image with debootstrap")
	}
	dir := imagetest.TestImage(t)
	m, err := image.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := image.Verify(dir); err != nil {
		t.Fatal(err)
	}
	t.Logf("image %s: kernel %s (%s %s), digest %s", dir, m.KernelVersion, m.KernelPackage, m.KernelPackageVersion, m.ShortDigest())
	for _, f := range []string{image.FileVmlinux, image.FileBzImage, image.FileRootfs, image.FileLoadOrder} {
		if !m.Has(f) {
			t.Errorf("manifest lacks %s", f)
		}
	}
	if m.Source != image.SourceBuild || m.Suite != image.DefaultSuite || !strings.HasSuffix(m.KernelVersion, "-cloud-amd64") {
		t.Errorf("manifest: source %q suite %q kernel %q", m.Source, m.Suite, m.KernelVersion)
	}
	order, err := image.ReadLoadOrder(m.Path(image.FileLoadOrder))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(order, wantLoadOrder) {
		t.Errorf("load order\n got %v\nwant %v", order, wantLoadOrder)
	}
	for _, f := range order {
		if !m.Has(image.DirModules + "/" + f) {
			t.Errorf("module %s is in load-order but not in the manifest", f)
		}
	}
	if v, err := image.KernelVersionFromBzImage(m.Path(image.FileBzImage)); err != nil || v != m.KernelVersion {
		t.Errorf("bzImage version %q, %v; manifest %q", v, err, m.KernelVersion)
	}
	if f, err := image.DetectKernel(m.Path(image.FileVmlinux)); err != nil || f != image.KernelELF {
		t.Errorf("vmlinux: %v, %v", f, err)
	}
	rootfs := m.Path(image.FileRootfs)
	if err := image.CheckExt4(rootfs); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(rootfs)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != image.DefaultSizeBytes {
		t.Errorf("rootfs is %d bytes, want %d", st.Size(), int64(image.DefaultSizeBytes))
	}
	// The file system must be clean (it is a read-only base).
	if _, err := system.Run(context.Background(), "e2fsck", "-fn", rootfs); err != nil {
		t.Errorf("e2fsck: %v", err)
	}

	// Look inside without mounting.
	ctx := context.Background()
	stat := func(path string) (string, bool) {
		out, err := system.Run(ctx, "debugfs", "-R", "stat "+path, rootfs)
		s := string(out)
		return s, err == nil && strings.Contains(s, "Inode:")
	}
	for _, p := range []string{"/usr/bin/git", "/usr/sbin/ip", "/usr/sbin/sshd", "/usr/bin/ssh-keygen", "/etc/ssl/certs/ca-certificates.crt", "/usr/bin/sh", "/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/root/.ssh", "/run/sshd", "/usr/lib/x86_64-linux-gnu/libc.so.6"} {
		if _, ok := stat(p); !ok {
			t.Errorf("%s missing from rootfs", p)
		}
	}
	for _, p := range []string{"/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_rsa_key", "/usr/share/man/man1", "/debootstrap", "/run/adduser"} {
		if _, ok := stat(p); ok {
			t.Errorf("%s should not be in rootfs", p)
		}
	}
	if s, ok := stat("/root/.ssh"); !ok || !strings.Contains(s, "Mode:  0700") || !strings.Contains(s, "User:     0") {
		t.Errorf("/root/.ssh not root-owned 0700:\n%s", s)
	}
	ls, err := system.Run(ctx, "debugfs", "-R", "ls -l /", rootfs)
	if err != nil {
		t.Fatal(err)
	}
	for _, link := range []string{"bin", "sbin", "lib"} {
		found := false
		for _, l := range strings.Split(string(ls), "\n") {
			f := strings.Fields(l)
			if len(f) > 0 && f[len(f)-1] == link && strings.HasPrefix(f[1], "120") {
				found = true
			}
		}
		if !found {
			t.Errorf("/%s is not a symlink (merged /usr):\n%s", link, ls)
		}
	}
	var disk int64
	if err := filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil {
			disk += fi.Sys().(*syscall.Stat_t).Blocks * 512
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("image on disk %d MiB; rootfs apparent %d MiB", disk>>20, st.Size()>>20)
}

// bootInit is /init of a busybox initrd that does what the agent will:
// load the image's modules in load-order, mount /dev/vda, and use the root
// file system (git, sshd host keys, sshd config).
const bootInit = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs dev /dev
for m in $(cat /mods/load-order); do insmod /mods/$m || echo "INSMOD-FAIL $m"; done
echo "MODULES $(wc -l < /proc/modules)"
mount -t ext4 /dev/vda /newroot || echo MOUNT-FAIL
mount -t proc proc /newroot/proc
chroot /newroot /usr/bin/git --version
chroot /newroot /usr/bin/sh -c 'cd /tmp && git init -q r && cd r && echo hi >f && git add f && git -c user.email=a@b -c user.name=n commit -qm m && git --no-pager log --format=GIT-COMMIT-%s'
chroot /newroot /usr/bin/ssh-keygen -A >/dev/null && chroot /newroot /usr/sbin/sshd -t && echo SSHD-CONFIG-OK
echo "HOSTNAME $(cat /newroot/etc/hostname)"
umount /newroot/proc; mount -o remount,ro /newroot; sync
echo BANGER-BOOT-OK
poweroff -f
`

// TestBootImage boots the test image's vmlinux with its modules under
// QEMU (TCG) with a busybox initrd standing in for the agent. It needs
// qemu-system-x86_64 and busybox-static; the agent's own boots are in
// internal/vmm's conformance suite.
func TestBootImage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds an image and boots it")
	}
	for _, p := range []string{"qemu-system-x86_64", "qemu-img", "busybox", "cpio"} {
		if _, err := system.LookPath(p); err != nil {
			t.Skipf("cannot boot: %v", err)
		}
	}
	dir := imagetest.TestImage(t)
	m, err := image.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	work := t.TempDir()
	ird := filepath.Join(work, "ird")
	for _, d := range []string{"bin", "mods", "proc", "sys", "dev", "newroot"} {
		if err := os.MkdirAll(filepath.Join(ird, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	busybox, _ := system.LookPath("busybox")
	if f, err := elf.Open(busybox); err != nil {
		t.Fatal(err)
	} else {
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Skipf("%s is dynamically linked: install busybox-static", busybox)
			}
		}
		f.Close()
	}
	if _, err := system.Run(ctx, "cp", busybox, filepath.Join(ird, "bin", "busybox")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ird, "init"), []byte(bootInit), 0o755); err != nil {
		t.Fatal(err)
	}
	order, err := image.ReadLoadOrder(m.Path(image.FileLoadOrder))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range append(order, "load-order") {
		data, err := os.ReadFile(m.Path(image.DirModules + "/" + f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(ird, "mods", f), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var list strings.Builder
	if err := filepath.Walk(ird, func(p string, _ os.FileInfo, err error) error {
		if err == nil && p != ird {
			rel, _ := filepath.Rel(ird, p)
			list.WriteString(rel + "\n")
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	initrd := filepath.Join(work, "initrd.cpio")
	cpio, err := system.RunOpts(ctx, system.Opts{Dir: ird, Stdin: strings.NewReader(list.String())}, "cpio", "-o", "-H", "newc", "--quiet")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(initrd, cpio, 0o644); err != nil {
		t.Fatal(err)
	}
	overlay := filepath.Join(work, "root.qcow2")
	if _, err := system.Run(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-b", m.Path(image.FileRootfs), "-F", "raw", overlay); err != nil {
		t.Fatal(err)
	}
	console := filepath.Join(work, "console.log")
	start := time.Now()
	_, err = system.Run(ctx, "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-M", "microvm,pit=on,rtc=on",
		"-m", "512", "-smp", "1", "-nodefaults", "-no-user-config", "-nographic", "-serial", "file:"+console,
		"-kernel", m.Path(image.FileVmlinux), "-initrd", initrd,
		"-append", "console=ttyS0 quiet pci=off rdinit=/init tsc_early_khz="+tscKHz(t),
		"-drive", "id=root,file="+overlay+",format=qcow2,if=none,cache=writeback",
		"-device", "virtio-blk-device,drive=root", "-no-reboot")
	out, _ := os.ReadFile(console)
	if err != nil {
		t.Fatalf("qemu: %v\nconsole:\n%s", err, out)
	}
	t.Logf("booted and powered off in %s", time.Since(start).Round(100*time.Millisecond))
	s := string(out)
	for _, want := range []string{"BANGER-BOOT-OK", "git version", "GIT-COMMIT-m", "SSHD-CONFIG-OK", "HOSTNAME banger", fmt.Sprintf("MODULES %d", len(order))} {
		if !strings.Contains(s, want) {
			t.Errorf("console lacks %q", want)
		}
	}
	for _, bad := range []string{"INSMOD-FAIL", "MOUNT-FAIL"} {
		if strings.Contains(s, bad) {
			t.Errorf("console has %q", bad)
		}
	}
	if t.Failed() {
		t.Logf("console:\n%s", s)
	}
	// The base stayed untouched under its overlay.
	if err := image.Verify(dir); err != nil {
		t.Error(err)
	}
}

// tscKHz is the host's TSC frequency for tsc_early_khz (ENVIRONMENT.md:
// without it a busy host's TCG guest can hang calibrating against the PIT).
func tscKHz(t *testing.T) string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "cpu MHz" {
			mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return strconv.Itoa(int(mhz * 1000))
			}
		}
	}
	t.Fatal("no cpu MHz in /proc/cpuinfo")
	return ""
}
