// Package doctor checks that this host can run banger and says how to fix
// what is missing: one line per check, PASS / WARN / FAIL, each with a
// one-line fix. The last line says which hypervisor backend `auto` picks
// and why.
package doctor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/banger-sh/banger/internal/config"
	"github.com/banger-sh/banger/internal/network"
	"github.com/banger-sh/banger/internal/paths"
	"github.com/banger-sh/banger/internal/store"
	"github.com/banger-sh/banger/internal/system"
	"github.com/banger-sh/banger/internal/vmm/auto"
	"github.com/banger-sh/banger/internal/vmm/firecracker"
	"github.com/banger-sh/banger/internal/vmm/qemu"
)

// Status of one check.
type Status string

const (
	Pass Status = "PASS"
	Warn Status = "WARN"
	Fail Status = "FAIL"
)

// Check is one line of the report.
type Check struct {
	Name   string `json:"name"`
	Status Status `json:"status"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
	// Program is set on the checks of registered programs; Format shows
	// the ones that pass as a single line.
	Program *system.Program `json:"program,omitempty"`
}

// Report is the whole answer.
type Report struct {
	Checks  []Check `json:"checks"`
	Backend string  `json:"backend"` // "" when none can run
	Accel   string  `json:"accel"`
	Why     string  `json:"backend_reason"`
	// NotFirecracker says why the Firecracker backend is not used ("" when
	// it is).
	NotFirecracker string `json:"not_firecracker,omitempty"`
}

// Failed reports whether any check failed.
func (r Report) Failed() bool {
	for _, c := range r.Checks {
		if c.Status == Fail {
			return true
		}
	}
	return r.Backend == ""
}

// Env is the host as doctor sees it; tests substitute every part.
type Env struct {
	Root      string // "/" on a real host; a fake tree in tests
	LookPath  func(string) (string, error)
	Layout    paths.Layout
	Config    config.Config
	DaemonPID func() int // pid of our running daemon, 0 if none
	// FreeBytes reports free space of the filesystem holding dir.
	FreeBytes func(dir string) (uint64, error)
	// PortFree reports whether UDP port on 127.0.0.1 can be bound.
	PortFree func(port int) bool
	// SubnetConflicts lists host routes overlapping the VM subnet (nil:
	// not checked).
	SubnetConflicts func(subnet netip.Prefix, bridge string) ([]string, error)
	// FirecrackerVersion reads a firecracker binary's version (nil: the
	// binary is only looked up).
	FirecrackerVersion func(ctx context.Context, path string) (string, error)
	// ForwardDrops lists the forward chains of other nftables tables than
	// banger's (ownTable) that drop by policy (nil: not checked).
	ForwardDrops func(ownTable string) ([]network.ForwardDrop, error)
}

// HostEnv is the real host.
func HostEnv(l paths.Layout, c config.Config, daemonPID func() int) Env {
	return Env{
		Root: "/", LookPath: lookPath, Layout: l, Config: c, DaemonPID: daemonPID,
		FreeBytes: freeBytes, PortFree: udpPortFree, SubnetConflicts: network.SubnetConflicts,
		FirecrackerVersion: firecracker.Version,
		ForwardDrops:       func(own string) ([]network.ForwardDrop, error) { return network.ForwardDrops(0, own) },
	}
}

func lookPath(name string) (string, error) {
	for _, dir := range append(filepath.SplitList(os.Getenv("PATH")), "/usr/sbin", "/sbin") {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found", name)
}

func freeBytes(dir string) (uint64, error) {
	for {
		var st syscall.Statfs_t
		err := syscall.Statfs(dir, &st)
		if err == nil {
			return st.Bavail * uint64(st.Bsize), nil
		}
		if !errors.Is(err, os.ErrNotExist) || dir == "/" {
			return 0, err
		}
		dir = filepath.Dir(dir)
	}
}

func udpPortFree(port int) bool {
	c, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// Run performs every check.
func Run(ctx context.Context, e Env) Report {
	var r Report
	add := func(c Check) { r.Checks = append(r.Checks, c) }

	add(kvmCheck(e))
	for _, c := range programChecks(e) {
		add(c)
	}
	if st, err := os.Stat(filepath.Join(e.Root, "dev", "net", "tun")); err == nil && st.Mode()&os.ModeCharDevice != 0 {
		add(Check{Name: "tun", Status: Pass, Detail: "/dev/net/tun present"})
	} else {
		add(Check{Name: "tun", Status: Warn, Detail: "/dev/net/tun missing: VMs get no network", Fix: "modprobe tun"})
	}
	add(dnsCheck(e))
	add(subnetCheck(e))
	if e.ForwardDrops != nil {
		add(forwardCheck(e))
	}
	add(resolverCheck(e))
	add(stateDirCheck(e))
	add(storeCheck(ctx, e))
	add(diskCheck("disk-state", e.Layout.State, e))
	add(diskCheck("disk-cache", e.Layout.Cache, e))

	ch := auto.Choose(e.Config.Backend, auto.Host{Root: e.Root, LookPath: e.LookPath, FirecrackerVersion: e.FirecrackerVersion})
	r.Backend, r.Accel, r.Why, r.NotFirecracker = ch.Backend, ch.Accel, ch.Reason, ch.NotFirecracker
	return r
}

// programChecks checks every program in banger's registry (what bangerd,
// banger and the image builder run; building banger and its tests' tools
// too): a missing one FAILs naming its Debian package, but for those only
// a build from source needs, which WARN.
func programChecks(e Env) []Check {
	var out []Check
	for _, p := range system.Programs() {
		if p.Self() {
			continue
		}
		p := p
		c := Check{Name: p.Name, Program: &p}
		look := e.LookPath
		if p.File() {
			look = func(name string) (string, error) {
				_, err := os.Stat(filepath.Join(e.Root, name))
				return name, err
			}
		}
		if path, err := look(p.Name); err == nil {
			c.Status, c.Detail = Pass, path
		} else {
			c.Status, c.Detail = Fail, "not installed: "+p.Need
			switch {
			case p.Optional():
				c.Status, c.Detail = Warn, "not installed (optional): "+p.Need
				c.Fix = "not in Debian: install a release binary into PATH (see README, Backends)"
				out = append(out, c)
				continue
			case !p.In(system.ScopeRun, system.ScopeBuild):
				c.Status, c.Detail = Warn, "not installed: only building banger from source and its tests need it ("+p.Need+")"
			}
			c.Fix = "apt-get install " + p.Package
			if p.Package == "" {
				c.Fix = "scripts/setup-host installs it"
			}
		}
		out = append(out, c)
	}
	return out
}

func kvmCheck(e Env) Check {
	acc := qemu.DetectAccelAt(e.Root)
	c := Check{Name: "kvm", Detail: acc.Reason}
	switch acc.Cause {
	case qemu.CauseKVM:
		c.Status = Pass
	case qemu.CausePVM:
		c.Status, c.Fix = Warn, "nothing to do: VMs run under software emulation (slower); for KVM use a host with standard nested virtualisation"
	case qemu.CauseNoAccess:
		c.Status, c.Fix = Warn, "run as root or add the user to the kvm group"
	default:
		c.Status, c.Fix = Warn, "enable virtualisation (VT-x/AMD-V) and load kvm_intel or kvm_amd; until then VMs run under software emulation"
	}
	return c
}

func dnsCheck(e Env) Check {
	port := e.Config.Network.DNSPort
	c := Check{Name: "dns-port"}
	switch {
	case e.PortFree(port):
		c.Status, c.Detail = Pass, fmt.Sprintf("UDP %d is free", port)
	case e.DaemonPID() != 0:
		c.Status, c.Detail = Pass, fmt.Sprintf("UDP %d is held by bangerd (pid %d)", port, e.DaemonPID())
	default:
		c.Status, c.Detail = Fail, fmt.Sprintf("UDP %d is taken by another program", port)
		c.Fix = fmt.Sprintf("stop it (ss -ulpn 'sport = :%d'), or set network.dns_port in %s", port, e.Layout.ConfigFile())
	}
	return c
}

func subnetCheck(e Env) Check {
	c := Check{Name: "subnet"}
	p, err := netip.ParsePrefix(e.Config.Network.Subnet)
	if err != nil {
		c.Status, c.Detail = Fail, err.Error()
		return c
	}
	if e.SubnetConflicts == nil {
		c.Status, c.Detail = Pass, p.String()
		return c
	}
	conf, err := e.SubnetConflicts(p.Masked(), e.Config.Network.Bridge)
	switch {
	case err != nil:
		c.Status, c.Detail = Warn, fmt.Sprintf("cannot read routes: %v", err)
	case len(conf) > 0:
		c.Status, c.Detail = Fail, fmt.Sprintf("%s overlaps routes of this host: %s", p, strings.Join(conf, "; "))
		c.Fix = "set network.subnet in " + e.Layout.ConfigFile() + " to a free private range"
	default:
		c.Status, c.Detail = Pass, fmt.Sprintf("%s is free (bridge %s)", p, e.Config.Network.Bridge)
	}
	return c
}

// forwardCheck looks for a forward chain that drops by policy in another
// table (Docker sets iptables -P FORWARD DROP): a drop in any base chain of
// a hook is final, so banger's own accepts do not get nat guests out.
func forwardCheck(e Env) Check {
	c := Check{Name: "host-forward"}
	br := e.Config.Network.Bridge
	drops, err := e.ForwardDrops(e.Config.Network.NFTable)
	switch {
	case errors.Is(err, os.ErrPermission):
		c.Status, c.Detail, c.Fix = Warn, "cannot read the host's nftables rules without root", "run banger doctor as root to check the host's FORWARD chain"
		return c
	case err != nil:
		c.Status, c.Detail = Warn, fmt.Sprintf("cannot read the host's nftables rules: %v", err)
		return c
	case len(drops) == 0:
		c.Status, c.Detail = Pass, "no other firewall table drops forwarded traffic by policy"
		return c
	}
	var names, fixes []string
	for _, d := range drops {
		names = append(names, d.String())
		fixes = append(fixes, forwardFix(d, br)...)
	}
	c.Status = Warn
	c.Detail = fmt.Sprintf("forwarded packets are dropped by the policy of %s: nat and shared VMs get no egress through %s (nor, with br_netfilter, shared VMs each other), whatever banger's own rules accept",
		strings.Join(names, ", "), br)
	c.Fix = strings.Join(fixes, "; ") + " (and make them persistent in your firewall's configuration)"
	return c
}

// forwardFix is the commands that let the bridge's traffic through d.
func forwardFix(d network.ForwardDrop, br string) []string {
	if d.Family == "ip" && d.Table == "filter" && d.Chain == "FORWARD" { // iptables(-nft)
		chain := "FORWARD"
		if d.DockerUser {
			chain = "DOCKER-USER" // where Docker wants the host's own rules
		}
		return []string{
			fmt.Sprintf("iptables -I %s -i %s -j ACCEPT", chain, br),
			fmt.Sprintf("iptables -I %s -o %s -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", chain, br),
		}
	}
	return []string{
		fmt.Sprintf(`nft insert rule %s %s %s iifname "%s" accept`, d.Family, d.Table, d.Chain, br),
		fmt.Sprintf(`nft insert rule %s %s %s oifname "%s" ct state established,related accept`, d.Family, d.Table, d.Chain, br),
	}
}

func resolverCheck(e Env) Check {
	c := Check{Name: "host-resolver"}
	p, err := netip.ParsePrefix(e.Config.Network.Subnet)
	if err != nil {
		c.Status, c.Detail = Warn, err.Error()
		return c
	}
	dns := netip.AddrPortFrom(p.Masked().Addr().Next(), uint16(e.Config.Network.DNSPort))
	st := network.CheckHostResolver(e.Root, e.Config.Network.Bridge, dns, e.Config.Network.DNSDomain)
	c.Detail = st.Detail
	if st.Configured {
		c.Status = Pass
	} else {
		// Optional: VMs work without it; only NAME.vm from the host needs it.
		c.Status, c.Fix = Warn, strings.Join(st.Fix, "; ")
	}
	return c
}

func stateDirCheck(e Env) Check {
	dir := e.Layout.State
	c := Check{Name: "state-dir"}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		c.Status, c.Detail, c.Fix = Fail, fmt.Sprintf("cannot create %s: %v", dir, err), "fix its permissions or set BANGER_HOME"
		return c
	}
	f, err := os.CreateTemp(dir, ".doctor-*")
	if err != nil {
		c.Status, c.Detail, c.Fix = Fail, fmt.Sprintf("%s is not writable: %v", dir, err), "fix its permissions or set BANGER_HOME"
		return c
	}
	f.Close()
	os.Remove(f.Name())
	c.Status, c.Detail = Pass, dir+" is writable"
	return c
}

func storeCheck(ctx context.Context, e Env) Check {
	path := e.Layout.StoreFile()
	c := Check{Name: "store"}
	err := store.Check(ctx, path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		c.Status, c.Detail = Pass, path+" does not exist yet: it will be created on first daemon start"
	case err != nil:
		c.Status, c.Detail = Fail, fmt.Sprintf("%s is unreadable: %v", path, err)
		c.Fix = "move it aside (banger will create a new one) or restore it from a backup"
	default:
		c.Status, c.Detail = Pass, path+" is readable"
	}
	return c
}

const (
	minFree  = 2 << 30
	warnFree = 10 << 30
)

func diskCheck(name, dir string, e Env) Check {
	c := Check{Name: name}
	free, err := e.FreeBytes(dir)
	if err != nil {
		c.Status, c.Detail = Warn, fmt.Sprintf("cannot read free space of %s: %v", dir, err)
		return c
	}
	c.Detail = fmt.Sprintf("%s free in %s", humanBytes(free), dir)
	switch {
	case free < minFree:
		c.Status, c.Fix = Fail, "free space: images need ~1 GiB and each VM's disk grows as it writes"
	case free < warnFree:
		c.Status, c.Fix = Warn, "free some space; banger image prune removes unused images"
	default:
		c.Status = Pass
	}
	return c
}

func humanBytes(b uint64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%d B", b)
	}
	div, exp := uint64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(b)/float64(div), "KMGTPE"[exp])
}

// Format writes the report for people. The registered programs that are
// installed take one line; each missing one has its own.
func Format(r Report) string {
	var b strings.Builder
	found, shown := 0, false
	for _, c := range r.Checks {
		if c.Program != nil && c.Status == Pass {
			found++
		}
	}
	for _, c := range r.Checks {
		if c.Program != nil && c.Status == Pass {
			if !shown {
				fmt.Fprintf(&b, "%-4s  %-18s %d registered programs installed (banger doctor --json lists them)\n", Pass, "programs", found)
				shown = true
			}
			continue
		}
		fmt.Fprintf(&b, "%-4s  %-18s %s\n", c.Status, c.Name, c.Detail)
		if c.Fix != "" && c.Status != Pass {
			fmt.Fprintf(&b, "      %-18s fix: %s\n", "", c.Fix)
		}
	}
	if r.Backend == "" {
		fmt.Fprintf(&b, "FAIL  %-18s no backend can run: %s\n", "backend", r.Why)
	} else {
		fmt.Fprintf(&b, "=>    %-18s %s (%s): %s\n", "backend", r.Backend, r.Accel, r.Why)
	}
	if r.NotFirecracker != "" && r.Backend != "" && !strings.Contains(r.Why, r.NotFirecracker) {
		fmt.Fprintf(&b, "      %-18s not firecracker: %s\n", "", r.NotFirecracker)
	}
	return b.String()
}
