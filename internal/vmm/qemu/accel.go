package qemu

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Accelerators QEMU can use.
const (
	AccelKVM = "kvm"
	AccelTCG = "tcg"
)

// Causes of an accelerator choice, for programs (doctor picks its advice
// by Cause, never by matching Reason).
const (
	CauseKVM      = "kvm"        // /dev/kvm usable: KVM
	CauseNoKVM    = "no-kvm"     // no /dev/kvm: TCG
	CauseNoAccess = "kvm-access" // /dev/kvm not readable+writable: TCG
	CausePVM      = "pvm"        // /dev/kvm is PVM-only: TCG
	CauseForced   = "forced"     // set by configuration (WithAccel)
)

// AccelChoice is the accelerator banger would use on this host, and why.
type AccelChoice struct {
	Accel  string // AccelKVM or AccelTCG
	Reason string // one sentence for people (doctor, logs)
	Cause  string // Cause*: the same, for programs
}

// DetectAccel probes the running host. See DetectAccelAt.
func DetectAccel() AccelChoice { return DetectAccelAt("/") }

// DetectAccelAt decides between KVM and TCG by looking at the files under
// root ("/" on a real host; a fake tree in tests): KVM only when
// root/dev/kvm exists, is readable and writable, and is a standard KVM.
// A PVM hypervisor (root/sys/module/kvm_pvm present) also provides
// /dev/kvm, but only PVM-enabled guest kernels run under it: a standard
// kernel hangs early in boot, so TCG is chosen there.
func DetectAccelAt(root string) AccelChoice {
	kvm := filepath.Join(root, "dev", "kvm")
	if _, err := os.Stat(kvm); err != nil {
		return AccelChoice{AccelTCG, "no /dev/kvm (no hardware virtualisation exposed to this host): using software emulation (TCG), which is several times slower", CauseNoKVM}
	}
	if err := syscall.Access(kvm, 0x2|0x4); err != nil { // W_OK|R_OK
		return AccelChoice{AccelTCG, fmt.Sprintf("/dev/kvm is not readable and writable by this user (%v): using software emulation (TCG); add the user to the kvm group or run as root for KVM", err), CauseNoAccess}
	}
	if _, err := os.Stat(filepath.Join(root, "sys", "module", "kvm_pvm")); err == nil {
		return AccelChoice{AccelTCG, "/dev/kvm is provided by PVM (module kvm_pvm), which runs only PVM-enabled guest kernels; a standard guest kernel hangs under it, so software emulation (TCG) is used", CausePVM}
	}
	vendor := "kvm"
	for _, m := range []string{"kvm_intel", "kvm_amd"} {
		if _, err := os.Stat(filepath.Join(root, "sys", "module", m)); err == nil {
			vendor = m
			break
		}
	}
	return AccelChoice{AccelKVM, fmt.Sprintf("/dev/kvm is usable (%s): using hardware virtualisation (KVM)", vendor), CauseKVM}
}

// HostTSCkHz returns the host's TSC frequency in kHz, or 0 when unknown.
// See HostTSCkHzAt.
func HostTSCkHz() int64 { return HostTSCkHzAt("/") }

// HostTSCkHzAt reads the TSC frequency from the tree under root:
// root/sys/devices/system/cpu/cpu0/tsc_freq_khz when the kernel exports it
// (some do), else the first "cpu MHz" of root/proc/cpuinfo × 1000 (the TSC
// rate on hosts whose TSC is invariant, which is what a TCG guest needs
// to skip its PIT calibration). 0 means unknown.
func HostTSCkHzAt(root string) int64 {
	if b, err := os.ReadFile(filepath.Join(root, "sys", "devices", "system", "cpu", "cpu0", "tsc_freq_khz")); err == nil {
		if v, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && v > 0 {
			return v
		}
	}
	b, err := readBounded(filepath.Join(root, "proc", "cpuinfo"), 4<<20)
	if err != nil {
		return 0
	}
	return parseCPUInfoMHz(b)
}

// parseCPUInfoMHz returns the first "cpu MHz" value × 1000, or 0.
func parseCPUInfoMHz(b []byte) int64 {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(k) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || mhz <= 0 || mhz > 100000 {
			return 0
		}
		return int64(math.Round(mhz * 1000))
	}
	return 0
}

func readBounded(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, max)
	}
	return b, nil
}
