package network

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ResolverStatus says whether the host's resolver sends NAME.DOMAIN to
// banger's DNS, and how to make it so.
type ResolverStatus struct {
	Configured bool
	Detail     string
	Fix        []string // commands that make it so (as root)
}

// CheckHostResolver inspects the host's resolver configuration under root
// ("/" on a real host) without running any program: systemd-resolved's
// per-link state (/run/systemd/resolve/netif/IFINDEX, which `resolvectl
// dns` and `resolvectl domain` write) for the bridge, or /etc/resolv.conf.
// dns is banger's DNS address on the bridge (Manager.DNSAddr).
func CheckHostResolver(root, bridge string, dns netip.AddrPort, domain string) ResolverStatus {
	fix := []string{
		fmt.Sprintf("resolvectl dns %s %s", bridge, dns),
		fmt.Sprintf("resolvectl domain %s ~%s", bridge, domain),
	}
	resolved := filepath.Join(root, "run/systemd/resolve")
	if _, err := os.Stat(resolved); err != nil {
		// No systemd-resolved: resolv.conf cannot name a port, so the host
		// needs a local forwarder for the domain.
		return ResolverStatus{
			Detail: fmt.Sprintf("systemd-resolved is not running; /etc/resolv.conf cannot send *.%s to %s. "+
				"Use systemd-resolved, or a local forwarder (dnsmasq: server=/%s/%s#%d)", domain, dns, domain, dns.Addr(), dns.Port()),
			Fix: fix,
		}
	}
	idx, err := os.ReadFile(filepath.Join(root, "sys/class/net", bridge, "ifindex"))
	if err != nil {
		return ResolverStatus{Detail: fmt.Sprintf("bridge %s does not exist (the daemon creates it)", bridge), Fix: fix}
	}
	state, err := os.ReadFile(filepath.Join(resolved, "netif", strings.TrimSpace(string(idx))))
	if err != nil {
		return ResolverStatus{Detail: fmt.Sprintf("systemd-resolved has no DNS server for %s", bridge), Fix: fix}
	}
	var servers, domains []string
	for _, line := range strings.Split(string(state), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			continue
		}
		switch k {
		case "SERVERS":
			servers = strings.Fields(v)
		case "DOMAINS":
			domains = strings.Fields(v)
		}
	}
	hasServer := false
	for _, s := range servers {
		// IP[:PORT][%IFINDEX][#NAME]
		s, _, _ = strings.Cut(s, "#")
		s, _, _ = strings.Cut(s, "%")
		if ap, err := netip.ParseAddrPort(s); err == nil && ap == dns {
			hasServer = true
		}
	}
	hasDomain := false
	for _, d := range domains {
		d = strings.TrimSuffix(strings.TrimPrefix(d, "~"), ".")
		if strings.EqualFold(d, domain) {
			hasDomain = true
		}
	}
	switch {
	case hasServer && hasDomain:
		return ResolverStatus{Configured: true, Detail: fmt.Sprintf("systemd-resolved sends *.%s to %s on %s", domain, dns, bridge)}
	case !hasServer:
		return ResolverStatus{Detail: fmt.Sprintf("systemd-resolved: %s has DNS servers %v, not %s", bridge, servers, dns), Fix: fix}
	default:
		return ResolverStatus{Detail: fmt.Sprintf("systemd-resolved: %s has domains %v, not ~%s", bridge, domains, domain), Fix: fix[1:]}
	}
}

// SubnetConflicts lists the routes of the host (this network namespace)
// that overlap subnet on any link but the bridge, e.g. "172.30.0.0/16 dev
// docker0": guests would be unreachable or shadow that network. For
// doctor; nil when the subnet is free.
func SubnetConflicts(subnet netip.Prefix, bridge string) ([]string, error) {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	for i := 0; i < 10 && errors.Is(err, netlink.ErrDumpInterrupted); i++ {
		routes, err = netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	}
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	var out []string
	for _, r := range routes {
		if r.Dst == nil {
			continue // the default route overlaps everything by design
		}
		p, ok := netipx(r.Dst)
		if !ok || p.Bits() == 0 || !p.Overlaps(subnet) { // 0.0.0.0/0 is the default route too
			continue
		}
		dev := ""
		if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
			dev = l.Attrs().Name
		}
		if dev == bridge {
			continue
		}
		out = append(out, fmt.Sprintf("%s dev %s", p, dev))
	}
	return out, nil
}

func netipx(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	bits, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), bits), true
}
