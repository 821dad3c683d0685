// Package auto decides which hypervisor backend banger uses on this host
// (`backend = auto` in the config) and says why, for doctor and logs.
//
// Firecracker is picked when it can run: /dev/kvm is standard hardware
// KVM (not missing, not PVM-only as on banger's development machines), a
// firecracker binary is in PATH, its version is one the backend supports
// (when Host.FirecrackerVersion probes it) and the guest kernel is an ELF
// vmlinux (when Host.Kernel names it). Otherwise QEMU, with KVM or TCG.
package auto

import (
	"context"
	"fmt"
	"time"

	"github.com/banger-sh/banger/internal/vmm/firecracker"
	"github.com/banger-sh/banger/internal/vmm/qemu"
)

// Choice is the backend to use and the reason, in one sentence.
type Choice struct {
	Backend string // "qemu" or "firecracker"; "" when none can run
	Accel   string // "kvm" or "tcg"
	Reason  string
	// NotFirecracker says why Firecracker is not used ("" when it is).
	NotFirecracker string
}

// Host is what the choice looks at; Root is "/" on a real host.
type Host struct {
	Root     string
	LookPath func(string) (string, error)
	// FirecrackerVersion, when set, reads the version of the firecracker
	// binary at path ("1.16.1"); nil: the binary is only looked up.
	FirecrackerVersion func(ctx context.Context, path string) (string, error)
	// Kernel, when set, is the guest kernel VMs will boot: Firecracker is
	// only picked when it is an ELF vmlinux.
	Kernel string
}

// Firecracker reports whether the Firecracker backend can run on h, and
// why (not).
func Firecracker(h Host) (bool, string) {
	if ok, why := firecracker.HardwareKVM(h.Root); !ok {
		return false, "firecracker needs hardware KVM, and " + why
	}
	path, err := h.LookPath(firecracker.DefaultBinary)
	if err != nil {
		return false, "no firecracker binary in PATH"
	}
	what := path
	if h.FirecrackerVersion != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		v, err := h.FirecrackerVersion(ctx, path)
		if err != nil {
			return false, fmt.Sprintf("%s does not tell its version: %v", path, err)
		}
		if major, minor, ok := firecracker.ParseVersion(v); !ok || major < firecracker.MinMajor || major == firecracker.MinMajor && minor < firecracker.MinMinor {
			return false, fmt.Sprintf("%s is Firecracker %s; banger needs %d.%d or newer", path, v, firecracker.MinMajor, firecracker.MinMinor)
		}
		what = fmt.Sprintf("%s (Firecracker %s)", path, v)
	}
	if h.Kernel != "" {
		if err := firecracker.CheckKernel(h.Kernel); err != nil {
			return false, fmt.Sprintf("the guest kernel %s is not an ELF vmlinux (firecracker boots no bzImage)", h.Kernel)
		}
	}
	return true, what + " on hardware KVM"
}

// Choose picks a backend for the preference pref ("auto", "qemu",
// "firecracker").
func Choose(pref string, h Host) Choice {
	acc := qemu.DetectAccelAt(h.Root)
	fcOK, fcWhy := Firecracker(h)
	_, qErr := h.LookPath("qemu-system-x86_64")
	notFC := ""
	if !fcOK {
		notFC = fcWhy
	}
	switch pref {
	case "firecracker":
		if fcOK {
			return Choice{"firecracker", "kvm", "backend = firecracker in the config: " + fcWhy, ""}
		}
		return Choice{"", "", "backend = firecracker in the config, but " + fcWhy, notFC}
	case "qemu":
		if qErr != nil {
			return Choice{"", "", "backend = qemu in the config, but qemu-system-x86_64 is not installed", notFC}
		}
		return Choice{"qemu", acc.Accel, "backend = qemu in the config; " + acc.Reason, notFC}
	}
	if fcOK {
		return Choice{"firecracker", "kvm", "firecracker can run (fastest boot): " + fcWhy, ""}
	}
	if qErr != nil {
		return Choice{"", "", fmt.Sprintf("%s, and qemu-system-x86_64 is not installed", fcWhy), notFC}
	}
	return Choice{"qemu", acc.Accel, fmt.Sprintf("not firecracker: %s; QEMU: %s", fcWhy, acc.Reason), notFC}
}
