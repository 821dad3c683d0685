package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// NetConfig brings the guest's NIC up: sent by the host at boot (the guest
// kernel ignores ip=). Addresses are strings so the agent needs no
// knowledge of the host's network package.
type NetConfig struct {
	Interface    string   `json:"interface"`         // "eth0"
	MAC          string   `json:"mac,omitempty"`     // set when it differs (restored clones)
	Address      string   `json:"address"`           // CIDR, e.g. 172.30.0.5/24
	Gateway      string   `json:"gateway,omitempty"` // default route via
	DNS          []string `json:"dns,omitempty"`     // /etc/resolv.conf nameservers
	SearchDomain string   `json:"search,omitempty"`  // /etc/resolv.conf search
	Hosts        []string `json:"hosts,omitempty"`   // extra /etc/hosts lines
}

func (n *NetConfig) validate() error {
	if n.Interface == "" || len(n.Interface) > 15 || strings.ContainsAny(n.Interface, "/ ") {
		return fmt.Errorf("network: bad interface %q", n.Interface)
	}
	if _, _, err := net.ParseCIDR(n.Address); err != nil {
		return fmt.Errorf("network: bad address %q", n.Address)
	}
	if n.Gateway != "" && net.ParseIP(n.Gateway) == nil {
		return fmt.Errorf("network: bad gateway %q", n.Gateway)
	}
	for _, d := range n.DNS {
		if net.ParseIP(d) == nil {
			return fmt.Errorf("network: bad DNS server %q", d)
		}
	}
	if n.MAC != "" {
		if _, err := net.ParseMAC(n.MAC); err != nil {
			return fmt.Errorf("network: bad MAC %q", n.MAC)
		}
	}
	if strings.ContainsAny(n.SearchDomain, " \n") {
		return fmt.Errorf("network: bad search domain %q", n.SearchDomain)
	}
	return nil
}

// ConfigureNetwork sets the NIC's MAC, address and default route through
// netlink and writes /etc/resolv.conf.
func (m LinuxMachine) ConfigureNetwork(n NetConfig) error {
	if err := n.validate(); err != nil {
		return err
	}
	var link netlink.Link
	var err error
	// The NIC's driver was loaded by init; the link may take a moment.
	for deadline := time.Now().Add(5 * time.Second); ; {
		if link, err = netlink.LinkByName(n.Interface); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("network: %s: %w", n.Interface, err)
	}
	if n.MAC != "" {
		mac, _ := net.ParseMAC(n.MAC)
		if link.Attrs().HardwareAddr.String() != mac.String() {
			// virtio-net changes its MAC while up (IFF_LIVE_ADDR_CHANGE):
			// no down/up, whose ring refill costs tens of ms under TCG.
			if err := netlink.LinkSetHardwareAddr(link, mac); err != nil {
				netlink.LinkSetDown(link)
				if err := netlink.LinkSetHardwareAddr(link, mac); err != nil {
					return fmt.Errorf("network: set MAC: %w", err)
				}
			}
		}
	}
	addr, err := netlink.ParseAddr(n.Address)
	if err != nil {
		return err
	}
	// Replace whatever address a template left behind.
	if old, err := netlink.AddrList(link, netlink.FAMILY_V4); err == nil {
		for _, a := range old {
			if !a.Equal(*addr) {
				netlink.AddrDel(link, &a)
			}
		}
	}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("network: address %s: %w", n.Address, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("network: up: %w", err)
	}
	if n.Gateway != "" {
		gw := net.ParseIP(n.Gateway)
		if err := netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw}); err != nil {
			return fmt.Errorf("network: default route via %s: %w", n.Gateway, err)
		}
	}
	var rc strings.Builder
	for _, d := range n.DNS {
		fmt.Fprintf(&rc, "nameserver %s\n", d)
	}
	if n.SearchDomain != "" {
		fmt.Fprintf(&rc, "search %s\n", n.SearchDomain)
	}
	if err := writeEtc("/etc/resolv.conf", rc.String(), 0o644); err != nil {
		return err
	}
	if len(n.Hosts) > 0 {
		b, _ := os.ReadFile("/etc/hosts")
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		var keep []string
		for _, l := range lines {
			if !strings.HasSuffix(l, "# banger") {
				keep = append(keep, l)
			}
		}
		for _, h := range n.Hosts {
			if !strings.ContainsAny(h, "\n") {
				keep = append(keep, h+" # banger")
			}
		}
		if err := writeEtc("/etc/hosts", strings.Join(keep, "\n")+"\n", 0o644); err != nil {
			return err
		}
	}
	return nil
}

// SetAuthorizedKeys replaces root's authorized_keys.
func (LinuxMachine) SetAuthorizedKeys(keys []string) error {
	for _, k := range keys {
		if strings.ContainsAny(k, "\n\r") || len(k) > 16<<10 {
			return errors.New("authorized key: bad key line")
		}
	}
	if err := os.MkdirAll("/root/.ssh", 0o700); err != nil {
		return err
	}
	os.Chmod("/root/.ssh", 0o700)
	return writeEtc("/root/.ssh/authorized_keys", strings.Join(keys, "\n")+"\n", 0o600)
}

// writeEtc replaces a file's content: in place when it is a regular file
// of that mode (it is written while the guest is configured, before any
// command runs; and under emulation a new inode and a rename cost a clone
// ~10 ms each of first-time translation), else atomically through a
// temporary file (a dangling symlink, such as a resolv.conf pointing into
// /run, is replaced by a file).
func writeEtc(path, content string, mode os.FileMode) error {
	if st, err := os.Lstat(path); err == nil && st.Mode().IsRegular() && st.Mode().Perm() == mode {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
		if err == nil {
			_, err = f.WriteString(content)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err == nil {
				return nil
			}
		}
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".banger")
	if err := os.WriteFile(tmp, []byte(content), mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Mount is a filesystem the guest mounts at boot (a work disk).
type Mount struct {
	Device  string `json:"device"`            // e.g. /dev/vdb
	Path    string `json:"path"`              // absolute mount point, created if missing
	FSType  string `json:"fstype,omitempty"`  // default ext4
	Options string `json:"options,omitempty"` // mount data, e.g. "noatime"
	// Exclusive: fail when Path is a mount point already (a boot's mounts
	// take one as mounted; a workspace prepared into a running VM must
	// not be taken for what is there).
	Exclusive bool `json:"exclusive,omitempty"`
	// Fresh: the host read the disk's image and found an ext4 never
	// mounted (NeverMounted), so the guest need not read it again (~9 ms
	// under emulation). Without it the agent looks itself.
	Fresh bool `json:"fresh,omitempty"`
}

func (mt Mount) validate() error {
	if !strings.HasPrefix(mt.Device, "/dev/") || strings.Contains(mt.Device, "..") {
		return fmt.Errorf("mount: bad device %q", mt.Device)
	}
	if !filepath.IsAbs(mt.Path) || filepath.Clean(mt.Path) != mt.Path || mt.Path == "/" {
		return fmt.Errorf("mount: bad path %q", mt.Path)
	}
	return nil
}

// MountAll mounts each filesystem (waiting briefly for its device).
func (LinuxMachine) MountAll(ms []Mount) error {
	for _, mt := range ms {
		if err := mt.validate(); err != nil {
			return err
		}
		fstype := mt.FSType
		if fstype == "" {
			fstype = "ext4"
		}
		for deadline := time.Now().Add(5 * time.Second); ; {
			if _, err := os.Stat(mt.Device); err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err := os.MkdirAll(mt.Path, 0o755); err != nil {
			return fmt.Errorf("mount %s: %w", mt.Path, err)
		}
		if mounted(mt.Path) {
			if mt.Exclusive {
				return fmt.Errorf("mount %s: %s is a mount point already", mt.Device, mt.Path)
			}
			continue
		}
		fresh := fstype == "ext4" && (mt.Fresh || NeverMounted(mt.Device))
		if err := unix.Mount(mt.Device, mt.Path, fstype, unix.MS_NOATIME, mt.Options); err != nil {
			return fmt.Errorf("mount %s on %s: %w", mt.Device, mt.Path, err)
		}
		if fresh { // see watch.go: only a first mount matches the manifest
			if err := trackChanges(mt.Path); err != nil {
				fmt.Fprintf(os.Stderr, "banger-agent: %s: no change tracking (exports walk): %v\n", mt.Path, err)
			}
		}
		go warmWorkspace(mt.Path)
	}
	return nil
}

// mounted reports whether path is a mount point (per /proc/self/mountinfo).
func mounted(path string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && f[4] == path {
			return true
		}
	}
	return false
}
