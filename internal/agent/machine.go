package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Machine holds the privileged, whole-guest operations of the agent, so that
// tests can run the protocol in-process with a fake.
type Machine interface {
	SetHostname(name string) error
	SetTime(t time.Time) error
	SeedRandom(seed []byte) error
	SetMachineID(id string) error
	ConfigureNetwork(n NetConfig) error
	SetAuthorizedKeys(keys []string) error
	MountAll(ms []Mount) error
	// PrepareShutdown stops every other process, syncs and remounts /
	// read-only. PowerOff then turns the machine off and does not return
	// on success.
	PrepareShutdown(ctx context.Context) error
	PowerOff() error
}

// LinuxMachine is the real Machine of a guest where the agent is PID 1 (or
// at least root).
type LinuxMachine struct {
	// Logf, if set, receives progress lines.
	Logf func(format string, args ...any)
}

var _ Machine = LinuxMachine{}

var hostnameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$`)

// SetHostname sets the kernel hostname and, where it can, /etc/hostname.
func (m LinuxMachine) SetHostname(name string) error {
	if len(name) > 64 || !hostnameRE.MatchString(name) {
		return fmt.Errorf("invalid hostname %q", name)
	}
	if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("sethostname: %w", err)
	}
	if _, err := os.Stat("/etc"); err == nil {
		if err := os.WriteFile("/etc/hostname", []byte(name+"\n"), 0o644); err != nil && !errors.Is(err, unix.EROFS) {
			return fmt.Errorf("write /etc/hostname: %w", err)
		}
	}
	return nil
}

// SetTime sets CLOCK_REALTIME.
func (LinuxMachine) SetTime(t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return fmt.Errorf("set clock: %w", err)
	}
	return nil
}

// SeedRandom mixes seed into the kernel pool and forces a CRNG reseed.
func (LinuxMachine) SeedRandom(seed []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("seed random: %w", err)
	}
	defer f.Close()
	if _, err := f.Write(seed); err != nil {
		return fmt.Errorf("seed random: %w", err)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ioErr error
	if err := rc.Control(func(fd uintptr) {
		ioErr = unix.IoctlSetInt(int(fd), unix.RNDRESEEDCRNG, 0)
	}); err != nil {
		return err
	}
	if ioErr != nil {
		return fmt.Errorf("seed random: RNDRESEEDCRNG: %w", ioErr)
	}
	return nil
}

var machineIDRE = regexp.MustCompile(`^[0-9a-f]{32}$`)

// SetMachineID writes /etc/machine-id.
func (LinuxMachine) SetMachineID(id string) error {
	if !machineIDRE.MatchString(id) {
		return fmt.Errorf("invalid machine id %q: want 32 lowercase hex digits", id)
	}
	if err := os.WriteFile("/etc/machine-id", []byte(id+"\n"), 0o444); err != nil {
		return fmt.Errorf("write machine id: %w", err)
	}
	return nil
}

// PrepareShutdown sends SIGTERM to every process, waits up to 2 s for them
// to go (the reaper collects them), sends SIGKILL to the rest, syncs and
// remounts / read-only.
func (m LinuxMachine) PrepareShutdown(ctx context.Context) error {
	if os.Getpid() == 1 {
		unix.Kill(-1, unix.SIGTERM)
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) && othersAlive() {
			time.Sleep(20 * time.Millisecond)
		}
		unix.Kill(-1, unix.SIGKILL)
		for i := 0; i < 50 && othersAlive(); i++ {
			time.Sleep(10 * time.Millisecond)
		}
	}
	unix.Sync()
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		// rootfs (initramfs) cannot be read-only; a disk root that stays
		// writable is worth a log line, not a refusal to power off.
		m.logf("remount / read-only: %v", err)
	}
	unix.Sync()
	return nil
}

// PowerOff powers the machine off.
func (LinuxMachine) PowerOff() error {
	unix.Sync()
	return unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}

func (m LinuxMachine) logf(format string, args ...any) {
	if m.Logf != nil {
		m.Logf(format, args...)
	}
}

// othersAlive reports whether a user-space process other than this one
// exists (kernel threads have no cmdline).
func othersAlive() bool {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return false
	}
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && len(b) > 0 {
			return true
		}
	}
	return false
}

// readInfo describes this guest.
func readInfo() Info {
	i := Info{Version: Version}
	i.Hostname, _ = os.Hostname()
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		i.Kernel = string(bytes.TrimRight(u.Release[:], "\x00"))
	}
	if b, err := os.ReadFile("/proc/uptime"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 0 {
			i.UptimeSeconds, _ = strconv.ParseFloat(f[0], 64)
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil {
		i.BootID = strings.TrimSpace(string(b))
	}
	return i
}
