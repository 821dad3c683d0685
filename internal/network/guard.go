package network

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// What a nat or shared guest reaches: the internet, and nothing of the
// host's own. The guard chain of the inet table (prerouting, priority
// mangle: before any DNAT, so a port the host publishes with DNAT — as
// Docker does — is dropped too) drops, for everything that enters from
// the bridge and is not for banger's own subnet:
//
//   - every address of the host itself (`fib daddr type local`), whatever
//     its interface or range: the host's services are closed to guests
//     but for banger's DNS on the gateway;
//   - the ranges in defaultBlocked: link-local (169.254.169.254, the cloud
//     metadata service), RFC 1918 private networks, shared address space
//     (CGNAT, Tailscale), loopback, multicast and reserved ranges;
//   - every network the host routes other than through its default
//     route (LANs, VPNs, container bridges, public ranges a VPN carries):
//     its IPv4 unicast routes of /8 or longer, from every routing table,
//     kept in step with the host's routes as they change (watch.go).
//
// [network] allow lists destinations guests may reach all the same (a
// package mirror on the LAN, the metadata service): the allowed set is
// matched before the blocked one. It never opens the host itself.
//
// Guests have no IPv6 forwarding at all (the egress rules match IPv4).
//
//	chain guard {        type filter hook prerouting priority mangle
//	    iifname "bgr0" ip daddr 172.30.0.0/24 return
//	    iifname "bgr0" fib daddr type local drop
//	    iifname "bgr0" ip daddr @allowed return
//	    iifname "bgr0" ip daddr @blocked drop }
//
// Routes shorter than /8 are left out of the blocked set: they are how a
// full-tunnel VPN carries the internet (0.0.0.0/1 + 128.0.0.0/1).
var defaultBlocked = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),      // "this network"
	netip.MustParsePrefix("10.0.0.0/8"),     // RFC 1918
	netip.MustParsePrefix("100.64.0.0/10"),  // shared address space: CGNAT, Tailscale
	netip.MustParsePrefix("127.0.0.0/8"),    // loopback
	netip.MustParsePrefix("169.254.0.0/16"), // link-local: cloud metadata services
	netip.MustParsePrefix("172.16.0.0/12"),  // RFC 1918
	netip.MustParsePrefix("192.0.0.0/24"),   // IETF protocol assignments
	netip.MustParsePrefix("192.168.0.0/16"), // RFC 1918
	netip.MustParsePrefix("198.18.0.0/15"),  // benchmarking (and fake-IP proxies)
	netip.MustParsePrefix("224.0.0.0/4"),    // multicast
	netip.MustParsePrefix("240.0.0.0/4"),    // reserved, limited broadcast
}

// DefaultBlocked lists the ranges guests never reach unless allowed (for
// doctor and the documentation).
func DefaultBlocked() []netip.Prefix { return slices.Clone(defaultBlocked) }

// hostRoutes lists the IPv4 networks the host routes, other than its
// default route(s) and banger's own subnet: the unicast routes of every
// table with a prefix of /8 or longer.
func (m *Manager) hostRoutes() ([]netip.Prefix, error) {
	var out []netip.Prefix
	err := m.do(func() error {
		filter := &netlink.Route{Table: unix.RT_TABLE_UNSPEC}
		routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, filter, netlink.RT_FILTER_TABLE)
		for i := 0; i < 10 && errors.Is(err, netlink.ErrDumpInterrupted); i++ {
			routes, err = netlink.RouteListFiltered(netlink.FAMILY_V4, filter, netlink.RT_FILTER_TABLE)
		}
		if err != nil {
			return fmt.Errorf("list routes: %w", err)
		}
		for _, r := range routes {
			if r.Dst == nil || r.Type != unix.RTN_UNICAST || r.Table == unix.RT_TABLE_LOCAL {
				continue
			}
			p, ok := netipx(r.Dst)
			if !ok || !p.Addr().Is4() || p.Bits() < 8 {
				continue
			}
			p = p.Masked()
			if m.o.Subnet.Contains(p.Addr()) && p.Bits() >= m.o.Subnet.Bits() {
				continue // the bridge's own route
			}
			out = append(out, p)
		}
		return nil
	})
	slices.SortFunc(out, func(a, b netip.Prefix) int { return cmp.Or(a.Addr().Compare(b.Addr()), a.Bits()-b.Bits()) })
	return slices.Compact(out), err
}

// ipRange is an inclusive range of IPv4 addresses.
type ipRange struct{ lo, hi uint32 }

func u32(a netip.Addr) uint32 { b := a.As4(); return binary.BigEndian.Uint32(b[:]) }

func prefixRange(p netip.Prefix) ipRange {
	lo := u32(p.Masked().Addr())
	return ipRange{lo, lo | uint32(uint64(1)<<(32-p.Bits())-1)}
}

// mergeRanges sorts the prefixes' ranges and merges those that overlap or
// touch: an interval set takes no overlapping elements.
func mergeRanges(ps []netip.Prefix) []ipRange {
	rs := make([]ipRange, 0, len(ps))
	for _, p := range ps {
		if p.IsValid() && p.Addr().Is4() {
			rs = append(rs, prefixRange(p))
		}
	}
	slices.SortFunc(rs, func(a, b ipRange) int { return cmp.Compare(a.lo, b.lo) })
	var out []ipRange
	for _, r := range rs {
		if n := len(out); n > 0 && (r.lo <= out[n-1].hi || r.lo == out[n-1].hi+1) {
			out[n-1].hi = max(out[n-1].hi, r.hi)
			continue
		}
		out = append(out, r)
	}
	return out
}

// intervalElements are the elements of an interval set holding rs: a start
// key per range and an end key (first address past it), but for a range
// that ends at 255.255.255.255, which stays open as nft(8) leaves it.
func intervalElements(rs []ipRange) []nftables.SetElement {
	var out []nftables.SetElement
	for _, r := range rs {
		out = append(out, nftables.SetElement{Key: binary.BigEndian.AppendUint32(nil, r.lo)})
		if r.hi != ^uint32(0) {
			out = append(out, nftables.SetElement{Key: binary.BigEndian.AppendUint32(nil, r.hi+1), IntervalEnd: true})
		}
	}
	return out
}

// guardSets are the two sets of the guard chain, queued on c with their
// elements: blocked (defaultBlocked + the host's routes) and allowed
// (Options.Allow).
func (m *Manager) guardSets(c *nftables.Conn, t *nftables.Table, hostNets []netip.Prefix) (blocked, allowed *nftables.Set, err error) {
	blocked = &nftables.Set{Table: t, Name: "blocked", KeyType: nftables.TypeIPAddr, Interval: true}
	allowed = &nftables.Set{Table: t, Name: "allowed", KeyType: nftables.TypeIPAddr, Interval: true}
	if err := c.AddSet(blocked, intervalElements(mergeRanges(append(slices.Clone(defaultBlocked), hostNets...)))); err != nil {
		return nil, nil, fmt.Errorf("set blocked: %w", err)
	}
	if err := c.AddSet(allowed, intervalElements(mergeRanges(m.o.Allow))); err != nil {
		return nil, nil, fmt.Errorf("set allowed: %w", err)
	}
	return blocked, allowed, nil
}

// guardRules queues the rules of the guard chain.
func (m *Manager) guardRules(c ruleSink, ch *nftables.Chain, blocked, allowed *nftables.Set) {
	add := func(es ...[]expr.Any) {
		var all []expr.Any
		for _, e := range es {
			all = append(all, e...)
		}
		c.AddRule(&nftables.Rule{Table: ch.Table, Chain: ch, Exprs: all})
	}
	br := ifname(expr.MetaKeyIIFNAME, expr.CmpOpEq, m.o.BridgeName)
	add(br, ip4Prefix(16, m.o.Subnet), verdict(expr.VerdictReturn))
	add(br, []expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, unix.RTN_LOCAL)},
	}, verdict(expr.VerdictDrop))
	add(br, ip4Lookup(16, allowed), verdict(expr.VerdictReturn))
	add(br, ip4Lookup(16, blocked), verdict(expr.VerdictDrop))
}

// ip4Prefix matches the IPv4 header field at offset against a prefix.
func ip4Prefix(offset uint32, p netip.Prefix) []expr.Any {
	a := p.Masked().Addr().As4()
	mask := binary.BigEndian.AppendUint32(nil, ^uint32(0)<<(32-p.Bits()))
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:]},
	}
}

// ip4Lookup matches the IPv4 header field at offset against a set.
func ip4Lookup(offset uint32, s *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID},
	}
}
