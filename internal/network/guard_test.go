package network

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

// newSite makes a namespace behind a veth from the host namespace (host
// end hostIf with hostAddr, site end with siteAddrs, the first of which
// is on the link) serving TCP on :80: a LAN, a VPN peer, a metadata
// service. Every address is in a namespace this test made.
func newSite(t *testing.T, host *testNS, hostIf string, hostAddr string, siteAddrs ...string) *testNS {
	t.Helper()
	site := newNS(t)
	hh, err := netlink.NewHandleAt(host.H)
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	if err := hh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostIf}, PeerName: "site0", PeerNamespace: netlink.NsFd(site.H)}); err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	h0, err := hh.LinkByName(hostIf)
	must(err)
	a, err := netlink.ParseAddr(hostAddr)
	must(err)
	must(hh.AddrAdd(h0, a))
	must(hh.LinkSetUp(h0))
	sh, err := netlink.NewHandleAt(site.H)
	must(err)
	defer sh.Close()
	s0, err := sh.LinkByName("site0")
	must(err)
	for _, sa := range siteAddrs {
		a, err := netlink.ParseAddr(sa)
		must(err)
		must(sh.AddrAdd(s0, a))
	}
	must(sh.LinkSetUp(s0))
	serveTCP(t, site, ":80")
	return site
}

// TestGuardKeepsGuestsFromHostNetworks: nat and shared guests reach the
// internet (a stand-in namespace behind the host's default route) and
// nothing else of the host's: not a LAN on a private range, not a
// link-local metadata service, not a public range the host routes through
// a "VPN" (routed after the manager started), not a LAN neighbour on the
// default route's own link, not a port the host publishes with DNAT, not
// another host service on banger's DNS port. network.allow opens the
// networks it lists, never the host itself.
func TestGuardKeepsGuestsFromHostNetworks(t *testing.T) {
	host := newNS(t)
	dir := t.TempDir()
	m, st := newManager(t, host, dir, -1)
	defer st.Close()
	ctx := context.Background()
	wan := newWAN(t, host)
	lan := newSite(t, host, "lan0", "192.168.77.1/24", "192.168.77.2/24")
	newSite(t, host, "md0", "169.254.0.1/16", "169.254.169.254/16")
	newSite(t, host, "vpn0", "10.200.0.1/30", "10.200.0.2/30", "198.51.100.7/32")
	// A port the host publishes as Docker does: DNAT of one of the host's
	// own addresses to somewhere guests may otherwise go (the wan).
	host.exec(t, "ip", "link", "add", "pub0", "type", "veth", "peer", "name", "pub1") // no dummy module here
	host.exec(t, "ip", "addr", "add", "192.0.2.1/32", "dev", "pub0")
	host.exec(t, "ip", "link", "set", "pub0", "up")
	rules := filepath.Join(t.TempDir(), "dnat.nft")
	os.WriteFile(rules, []byte(`table ip published {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr 192.0.2.1 tcp dport 8080 dnat to 203.0.113.10:8080
	}
}
`), 0o644)
	host.exec(t, "nft", "-f", rules)
	// A host service on banger's DNS port (on every address).
	serveTCP(t, host, ":42069")

	a := addGuest(t, host, m, "a", EgressNAT)
	s := addGuest(t, host, m, "s", EgressShared)

	// The "VPN" comes up after the manager started: its route joins the
	// blocked set (route watch).
	host.exec(t, "ip", "route", "add", "198.51.100.0/24", "via", "10.200.0.2")
	waitFor(t, "198.51.100.0/24 in the blocked set", func() bool {
		return strings.Contains(host.exec(t, "nft", "list", "set", "inet", "banger", "blocked"), "198.51.100.0/24")
	})

	// Controls: the host reaches every site, the guests the internet and
	// banger's DNS port on the gateway.
	hostSays := func(addr string) string { return "hello " + addr + "\n" }
	allowed(t, "host -> lan", host, "192.168.77.2:80", hostSays("192.168.77.1"))
	allowed(t, "host -> metadata", host, "169.254.169.254:80", hostSays("169.254.0.1"))
	allowed(t, "host -> vpn", host, "198.51.100.7:80", hostSays("10.200.0.1"))
	// ... and the published port works (for the LAN, which is not banger's).
	lan.exec(t, "ip", "route", "add", "default", "via", "192.168.77.1")
	wan.exec(t, "ip", "route", "add", "192.168.77.0/24", "via", "10.99.0.1")
	allowed(t, "lan -> published port", lan, "192.0.2.1:8080", hostSays("192.168.77.2"))
	for _, g := range []*guest{a, s} {
		allowed(t, g.lease.VMID+" -> wan", g.ns, wanAddr, hostSays("10.99.0.1"))
		allowed(t, g.lease.VMID+" -> dns port on the gateway", g.ns, m.Gateway().String()+":42069", hostSays(g.lease.Addr.String()))
	}
	kept := func(g *guest, extra ...string) []func() {
		var fs []func()
		for _, addr := range append([]string{
			"192.168.77.2:80",    // a private LAN
			"169.254.169.254:80", // the metadata service
			"198.51.100.7:80",    // a public range routed through the VPN
			"10.99.0.2:8080",     // a neighbour on the default route's link
			"192.0.2.1:8080",     // a port the host publishes with DNAT
			"10.99.0.1:42069",    // a host service on the DNS port, not on the gateway
			"192.0.2.1:42069",
		}, extra...) {
			fs = append(fs, func() { blocked(t, g.lease.VMID+" -> "+addr, g.ns, addr) })
		}
		return fs
	}
	parallel(append(kept(a), kept(s)...)...)

	// Opt-in: a daemon restarted with network.allow reaches what it
	// lists, and still not the host.
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	allow, err := ParseAllow([]string{"192.168.77.0/24", "169.254.169.254", "198.51.100.0/24", "192.0.2.1"})
	if err != nil {
		t.Fatal(err)
	}
	m2, err := New(Options{Subnet: m.o.Subnet, Store: st, Logger: testLogger(t), NetNS: host.H, PoolSize: -1, Allow: allow})
	if err != nil {
		t.Fatal(err)
	}
	defer teardown(t, host, m2)
	if err := m2.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m2.Reconcile(ctx, []string{"a", "s"}); err != nil {
		t.Fatal(err)
	}
	for _, g := range []*guest{a, s} {
		allowed(t, g.lease.VMID+" -> allowed lan", g.ns, "192.168.77.2:80", hostSays("192.168.77.1"))
		allowed(t, g.lease.VMID+" -> allowed metadata", g.ns, "169.254.169.254:80", hostSays("169.254.0.1"))
		allowed(t, g.lease.VMID+" -> allowed vpn", g.ns, "198.51.100.7:80", hostSays("10.200.0.1"))
	}
	parallel(
		func() { blocked(t, "a -> lan neighbour, not allowed", a.ns, "10.99.0.2:8080") },
		func() { blocked(t, "a -> allowed host address (the host stays closed)", a.ns, "192.0.2.1:8080") },
		func() { blocked(t, "a -> allowed host address, dns port", a.ns, "192.0.2.1:42069") },
		func() { blocked(t, "s -> allowed host address (the host stays closed)", s.ns, "192.0.2.1:8080") },
	)
	host.exec(t, "nft", "delete", "table", "ip", "published") // teardown wants no table left
}

func TestParseAllow(t *testing.T) {
	got, err := ParseAllow([]string{"10.1.2.3/16", "169.254.169.254"})
	if err != nil || len(got) != 2 || got[0] != netip.MustParsePrefix("10.1.0.0/16") || got[1] != netip.MustParsePrefix("169.254.169.254/32") {
		t.Fatalf("%v %v", got, err)
	}
	for _, bad := range []string{"nope", "fd00::/8", "::1", "10.0.0.0/33"} {
		if _, err := ParseAllow([]string{bad}); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestMergeRanges(t *testing.T) {
	ps := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	got := mergeRanges(ps("192.168.1.0/24", "10.0.0.0/8", "192.168.0.0/16", "10.1.0.0/16", "11.0.0.0/8", "240.0.0.0/4"))
	want := []ipRange{{0x0a000000, 0x0bffffff}, {0xc0a80000, 0xc0a8ffff}, {0xf0000000, 0xffffffff}}
	if len(got) != len(want) {
		t.Fatalf("%x", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("%x, want %x", got, want)
		}
	}
	els := intervalElements(got)
	if len(els) != 5 || !els[1].IntervalEnd || els[4].IntervalEnd {
		t.Fatalf("elements %+v", els)
	}
}
