package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-sh/banger/internal/initrd"
)

// RunInit is the agent as PID 1 of the initramfs. It mounts the kernel
// filesystems, loads the modules listed in /lib/modules/banger/load-order,
// mounts root= (if given) and switches to it, prepares the real root, then
// serves the host for ever. On a fatal error it logs to the console and
// powers the machine off, so that the VMM exits instead of hanging.
func RunInit() {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if err := runInit(log); err != nil {
		log.Error("banger-agent: fatal", "err", err)
		time.Sleep(500 * time.Millisecond)
		LinuxMachine{}.PowerOff()
		select {}
	}
}

func runInit(log *slog.Logger) error {
	start := time.Now()
	os.Setenv("PATH", defaultPath)
	if err := mountEarly(); err != nil {
		return err
	}
	cmdline, _ := os.ReadFile("/proc/cmdline")
	cfg := ParseCmdline(string(cmdline))
	level := slog.LevelInfo
	if cfg.Debug {
		level = slog.LevelDebug
	}
	log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	loadModules(log, "/"+initrd.ModulesDir)
	if cfg.Root != "" {
		if err := switchRoot(log, cfg); err != nil {
			return err
		}
	}
	mountLate(log)
	setBootHostname(log, cfg.Hostname)
	if err := loopbackUp(); err != nil {
		log.Warn("bring up lo", "err", err)
	}
	log.Debug("init done", "took", time.Since(start))

	opts := ServeOptions{
		Machine: LinuxMachine{Logf: func(f string, a ...any) { log.Warn(fmt.Sprintf(f, a...)) }},
		Reaper:  NewInitReaper(),
		Logger:  log,
	}
	powerOffOnSignal(log, opts.Machine)
	return serveTransport(context.Background(), cfg, opts)
}

// powerOffOnSignal turns the signals that ask init to shut down (SIGTERM,
// SIGPWR, SIGINT — ctrl-alt-del — and SIGUSR2, busybox's poweroff) into a
// clean power-off. Unhandled, Go would exit on SIGTERM, and PID 1 exiting
// is a kernel panic.
func powerOffOnSignal(log *slog.Logger, m Machine) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGPWR, syscall.SIGINT, syscall.SIGUSR2, syscall.SIGHUP)
	go func() {
		for sig := range ch {
			if sig == syscall.SIGHUP {
				continue // a terminal going away is no reason to stop
			}
			log.Info("banger-agent: power off", "signal", sig.String())
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := m.PrepareShutdown(ctx); err != nil {
				log.Warn("prepare shutdown", "err", err)
			}
			cancel()
			if err := m.PowerOff(); err != nil {
				log.Error("power off", "err", err)
			}
		}
	}()
}

// RunService serves the host from an agent that is not PID 1 (started by
// another init): no mounts, no module loading; transport from /proc/cmdline.
func RunService() error {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	cmdline, _ := os.ReadFile("/proc/cmdline")
	cfg := ParseCmdline(string(cmdline))
	opts := ServeOptions{Machine: LinuxMachine{}, Reaper: ChildWaiter{}, Logger: log}
	return serveTransport(context.Background(), cfg, opts)
}

func serveTransport(ctx context.Context, cfg BootConfig, opts ServeOptions) error {
	switch cfg.Transport {
	case TransportVsock:
		return ServeVsock(ctx, cfg.VsockPort, opts)
	case TransportVirtioSerial, "":
		dev, err := FindVirtioPort(cfg.PortName, 10*time.Second)
		if err != nil {
			return err
		}
		opts.Logger.Debug("serving", "port", dev)
		return ServeVirtioSerial(ctx, dev, opts)
	default:
		return fmt.Errorf("unknown banger.transport=%q", cfg.Transport)
	}
}

type mountSpec struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
	mode                   fs.FileMode
}

func mount(m mountSpec) error {
	if err := os.MkdirAll(m.target, m.mode); err != nil {
		return fmt.Errorf("mkdir %s: %w", m.target, err)
	}
	if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil {
		if errors.Is(err, unix.EBUSY) {
			return nil // already mounted
		}
		return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
	}
	return nil
}

func mountEarly() error {
	const nodev = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	for _, m := range []mountSpec{
		{"proc", "/proc", "proc", nodev, "", 0o555},
		{"sysfs", "/sys", "sysfs", nodev, "", 0o555},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755", 0o755},
	} {
		if err := mount(m); err != nil {
			return err
		}
	}
	return nil
}

// mountLate completes the mounts a program expects, in whatever root we
// ended up in. Failures are logged: a guest with no /dev/shm still serves.
func mountLate(log *slog.Logger) {
	const nodev = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	for _, m := range []mountSpec{
		// Normally moved here from the initramfs; mounted if that failed.
		{"proc", "/proc", "proc", nodev, "", 0o555},
		{"sysfs", "/sys", "sysfs", nodev, "", 0o555},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755", 0o755},

		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "gid=5,mode=620,ptmxmode=666", 0o755},
		{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777", 0o1777},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755", 0o755},
		{"cgroup2", "/sys/fs/cgroup", "cgroup2", nodev, "", 0o555},
	} {
		if isMountpoint(m.target) {
			continue
		}
		if err := mount(m); err != nil {
			log.Warn("mount", "err", err)
		}
	}
	for name, target := range map[string]string{
		"/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0",
		"/dev/stdout": "/proc/self/fd/1", "/dev/stderr": "/proc/self/fd/2",
	} {
		os.Symlink(target, name)
	}
}

// loadModules loads the modules named in dir/load-order, in order.
// Already-loaded (or built-in) modules are skipped; a failure is logged and
// the rest still load.
func loadModules(log *slog.Logger, dir string) {
	b, err := os.ReadFile(filepath.Join(dir, initrd.LoadOrderFile))
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			log.Warn("read module load order", "err", err)
		}
		return
	}
	for _, name := range initrd.ParseLoadOrder(b) {
		if err := loadModule(filepath.Join(dir, name)); err != nil {
			log.Warn("load module", "module", name, "err", err)
		}
	}
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	flags := 0
	for _, ext := range []string{".ko.xz", ".ko.zst", ".ko.gz"} {
		if strings.HasSuffix(path, ext) {
			// In-kernel decompression (CONFIG_MODULE_DECOMPRESS); the
			// Debian 6.1 cloud kernel ships plain .ko files.
			flags |= unix.MODULE_INIT_COMPRESSED_FILE
		}
	}
	err = unix.FinitModule(int(f.Fd()), "", flags)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	return err
}

// switchRoot mounts the root device on /newroot and makes it /, moving the
// kernel filesystems along and freeing the initramfs.
func switchRoot(log *slog.Logger, cfg BootConfig) error {
	if err := waitForDevice(cfg.Root, cfg.RootWait); err != nil {
		return err
	}
	flags := uintptr(0)
	if cfg.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	if err := os.MkdirAll("/newroot", 0o755); err != nil {
		return err
	}
	if err := unix.Mount(cfg.Root, "/newroot", cfg.RootFSType, flags, cfg.RootFlags); err != nil {
		return fmt.Errorf("mount root %s (%s): %w", cfg.Root, cfg.RootFSType, err)
	}
	for _, m := range []string{"/dev", "/proc", "/sys"} {
		target := "/newroot" + m
		if err := os.MkdirAll(target, 0o755); err != nil && !cfg.ReadOnly {
			log.Warn("mkdir in root", "dir", target, "err", err)
		}
		if err := unix.Mount(m, target, "", unix.MS_MOVE, ""); err != nil {
			log.Warn("move mount", "mount", m, "err", err)
			unix.Unmount(m, unix.MNT_DETACH)
		}
	}
	freeInitramfs(log)
	if err := unix.Chdir("/newroot"); err != nil {
		return err
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("move root: %w", err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("chroot: %w", err)
	}
	return unix.Chdir("/")
}

func waitForDevice(dev string, wait time.Duration) error {
	if !strings.HasPrefix(dev, "/dev/") {
		return fmt.Errorf("root=%s: only /dev/ paths are supported", dev)
	}
	deadline := time.Now().Add(wait)
	for {
		if _, err := os.Stat(dev); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("root device %s did not appear in %v", dev, wait)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// freeInitramfs deletes the initramfs files (the agent binary, modules) so
// their memory returns to the guest; mounts (/newroot) are left alone.
func freeInitramfs(log *slog.Logger) {
	var root unix.Stat_t
	if err := unix.Lstat("/", &root); err != nil {
		return
	}
	var walk func(dir string)
	walk = func(dir string) {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return
		}
		for _, e := range ents {
			p := filepath.Join(dir, e.Name())
			var st unix.Stat_t
			if unix.Lstat(p, &st) != nil || st.Dev != root.Dev {
				continue // another filesystem
			}
			if e.IsDir() {
				walk(p)
				unix.Rmdir(p) // fails (kept) for mount points
				continue
			}
			if err := os.Remove(p); err != nil {
				log.Debug("free initramfs", "path", p, "err", err)
			}
		}
	}
	walk("/")
}

func setBootHostname(log *slog.Logger, name string) {
	if name == "" {
		if b, err := os.ReadFile("/etc/hostname"); err == nil {
			name = strings.TrimSpace(string(b))
		}
	}
	if name == "" {
		name = "banger"
	}
	if err := unix.Sethostname([]byte(name)); err != nil {
		log.Warn("set hostname", "err", err)
	}
}

// loopbackUp sets IFF_UP on lo.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// isMountpoint reports whether p is on another filesystem than its parent.
func isMountpoint(p string) bool {
	var a, b unix.Stat_t
	if unix.Lstat(p, &a) != nil || unix.Lstat(filepath.Dir(p), &b) != nil {
		return false
	}
	return a.Dev != b.Dev
}
