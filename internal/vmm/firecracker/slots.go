package firecracker

import (
	"errors"
	"fmt"
	"hash/fnv"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/banger-sh/banger/internal/network"
	"github.com/banger-sh/banger/internal/vmm"
)

// Firecracker has no NIC without a host tap, but banger gives a
// warm-start template (and a clone it hands no network) a NIC slot with
// no host side (vmm.NIC with an empty Tap). For such a slot the backend
// makes a placeholder tap of its own: persistent, down, on no bridge, so
// no packet goes anywhere. Its name is derived from the runtime dir
// (slotTapPrefix + 8 hex digits of its hash + the NIC index), so Kill
// finds and removes it from the Handle alone. The "bgfs" prefix is not
// banger's network taps' ("bgt" + digits): the network manager never takes
// these for its own.
const slotTapPrefix = "bgfs"

// slotTapStem is the name prefix of the placeholder taps of the VM whose
// runtime dir is dir.
func slotTapStem(dir string) string {
	h := fnv.New32a()
	h.Write([]byte(filepath.Clean(dir)))
	return fmt.Sprintf("%s%08x", slotTapPrefix, h.Sum32())
}

func slotTapName(dir string, i int) string { return fmt.Sprintf("%s%d", slotTapStem(dir), i) }

// fillSlotTaps creates a placeholder tap for every NIC of spec without
// one and returns the NICs with their taps filled in. On error it removes
// the taps it made.
func fillSlotTaps(spec vmm.Spec) ([]vmm.NIC, error) {
	nics := append([]vmm.NIC(nil), spec.NICs...)
	for i := range nics {
		if nics[i].Tap != "" {
			continue
		}
		name := slotTapName(spec.RuntimeDir, i)
		if len(name) > 15 {
			deleteSlotTaps(spec.RuntimeDir)
			return nil, fmt.Errorf("too many NICs for placeholder taps (%s)", name)
		}
		// A placeholder left by a VM that died with the daemon: reuse the
		// name (no running VM has this runtime dir: Start checked).
		if l, err := netlink.LinkByName(name); err == nil {
			_ = netlink.LinkDel(l)
		}
		t := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: name},
			Mode:      netlink.TUNTAP_MODE_TAP,
			Flags:     netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_TUN_EXCL,
		}
		if err := netlink.LinkAdd(t); err != nil {
			deleteSlotTaps(spec.RuntimeDir)
			return nil, fmt.Errorf("placeholder tap %s for NIC %d (no host tap given): %w", name, i, err)
		}
		nics[i].Tap = name
	}
	return nics, nil
}

// deleteSlotTaps removes the placeholder taps of the VM whose runtime dir
// is dir (none is not an error).
func deleteSlotTaps(dir string) error {
	links, err := network.ListLinks()
	if err != nil {
		return err
	}
	stem := slotTapStem(dir)
	var errs []error
	for _, l := range links {
		if n := l.Attrs().Name; strings.HasPrefix(n, stem) && l.Type() == "tuntap" {
			if err := netlink.LinkDel(l); err != nil {
				errs = append(errs, fmt.Errorf("delete placeholder tap %s: %w", n, err))
			}
		}
	}
	return errors.Join(errs...)
}

// hasSlots reports whether spec has a NIC without a host tap.
func hasSlots(spec vmm.Spec) bool {
	for _, n := range spec.NICs {
		if n.Tap == "" {
			return true
		}
	}
	return false
}
