// Package auto decides which hypervisor backend banger uses on this host
// (`backend = auto` in the config) and says why, for doctor and logs.
package auto

import (
	"fmt"

	"github.com/banger-sh/banger/internal/vmm/qemu"
)

// Choice is the backend to use and the reason, in one sentence.
type Choice struct {
	Backend string // "qemu" or "firecracker"; "" when none can run
	Accel   string // "kvm" or "tcg"
	Reason  string
}

// Host is what the choice looks at; Root is "/" on a real host.
type Host struct {
	Root     string
	LookPath func(string) (string, error)
}

// Choose picks a backend for the preference pref ("auto", "qemu",
// "firecracker").
func Choose(pref string, h Host) Choice {
	acc := qemu.DetectAccelAt(h.Root)
	_, fcErr := h.LookPath("firecracker")
	_, qErr := h.LookPath("qemu-system-x86_64")
	fcOK := fcErr == nil && acc.Accel == qemu.AccelKVM
	fcWhy := "no firecracker binary in PATH"
	if fcErr == nil {
		fcWhy = "firecracker needs hardware KVM and " + acc.Reason
	}
	switch pref {
	case "firecracker":
		if fcOK {
			return Choice{"firecracker", "kvm", "backend = firecracker in the config"}
		}
		return Choice{"", "", "backend = firecracker in the config, but " + fcWhy}
	case "qemu":
		if qErr != nil {
			return Choice{"", "", "backend = qemu in the config, but qemu-system-x86_64 is not installed"}
		}
		return Choice{"qemu", acc.Accel, "backend = qemu in the config; " + acc.Reason}
	}
	if fcOK {
		return Choice{"firecracker", "kvm", "firecracker and hardware KVM are available (fastest boot)"}
	}
	if qErr != nil {
		return Choice{"", "", fmt.Sprintf("%s, and qemu-system-x86_64 is not installed", fcWhy)}
	}
	return Choice{"qemu", acc.Accel, fmt.Sprintf("%s; QEMU: %s", fcWhy, acc.Reason)}
}
