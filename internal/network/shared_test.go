package network

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"

	"github.com/banger-sh/banger/internal/errdefs"
)

// pingFrom sends one ICMP echo request from ns to addr and reports
// whether the reply came back within timeout.
func pingFrom(ns *testNS, addr string, timeout time.Duration) (bool, error) {
	var c *icmp.PacketConn
	err := inNS(ns.H, func() error {
		var err error
		c, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	})
	if err != nil {
		return false, err
	}
	defer c.Close()
	b := make([]byte, 2)
	rand.Read(b)
	id := int(binary.BigEndian.Uint16(b))
	req, err := (&icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: 1, Data: []byte("banger")}}).Marshal(nil)
	if err != nil {
		return false, err
	}
	dst := &net.IPAddr{IP: net.ParseIP(addr)}
	if _, err := c.WriteTo(req, dst); err != nil {
		return false, err
	}
	c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 1500)
	for {
		n, peer, err := c.ReadFrom(buf)
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		msg, err := icmp.ParseMessage(1, buf[:n])
		if err != nil || msg.Type != ipv4.ICMPTypeEchoReply || peer.String() != addr {
			continue
		}
		if e, ok := msg.Body.(*icmp.Echo); ok && e.ID == id {
			return true, nil
		}
	}
}

func pings(t *testing.T, what string, from *guest, to *guest) {
	t.Helper()
	if ok, err := pingFrom(from.ns, to.lease.Addr.String(), 3*time.Second); !ok || err != nil {
		t.Errorf("%s: no echo reply (%v)", what, err)
	}
}

func noPing(t *testing.T, what string, from *guest, to *guest) {
	t.Helper()
	if ok, err := pingFrom(from.ns, to.lease.Addr.String(), 700*time.Millisecond); ok || err != nil {
		t.Errorf("%s: echo reply %v (%v), want none", what, ok, err)
	}
}

func sortedLines(s string) string {
	l := strings.Split(s, "\n")
	sort.Strings(l)
	return strings.Join(l, "\n")
}

// noUDP checks that a datagram from one guest to another never arrives:
// a one-way leak (whose replies would be dropped) shows here, not in a
// TCP connect or a ping.
func noUDP(t *testing.T, what string, from, to *guest) {
	t.Helper()
	var pc net.PacketConn
	to.ns.do(t, func() error {
		var err error
		pc, err = net.ListenPacket("udp4", ":7001")
		return err
	})
	defer pc.Close()
	var c net.Conn
	from.ns.do(t, func() error {
		var err error
		c, err = net.Dial("udp4", to.lease.Addr.String()+":7001")
		return err
	})
	defer c.Close()
	for range 3 {
		c.Write([]byte("leak"))
	}
	pc.SetReadDeadline(time.Now().Add(700 * time.Millisecond))
	if n, peer, err := pc.ReadFrom(make([]byte, 64)); err == nil {
		t.Errorf("%s: %d bytes arrived from %s, want none", what, n, peer)
	}
}

// parallel runs fs at once (the blocked checks each wait for a timeout).
func parallel(fs ...func()) {
	var wg sync.WaitGroup
	for _, f := range fs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f()
		}()
	}
	wg.Wait()
}

// TestSharedNetwork: shared guests reach each other (TCP and ICMP, both
// ways, from their own addresses: nothing is translated between them) and
// no other guest; nat and none guests stay isolated from everyone; a
// shared guest reaches the wan masqueraded, as a nat guest, and the host
// only for DNS. It runs with br_netfilter handing bridged IPv4 to the inet
// hooks (as on Docker hosts) and without, so that each table is shown to
// hold on its own. A port without a lease reaches nobody. Detach removes a
// shared VM's rules, and the next VM to get its tap's name gets an
// isolated port.
func TestSharedNetwork(t *testing.T) {
	host := newNS(t)
	m, st := newManager(t, host, t.TempDir(), -1)
	defer st.Close()
	defer teardown(t, host, m)
	ctx := context.Background()
	wan := newWAN(t, host)

	s1 := addGuest(t, host, m, "s1", EgressShared)
	s2 := addGuest(t, host, m, "s2", EgressShared)
	n1 := addGuest(t, host, m, "n1", EgressNAT)
	n2 := addGuest(t, host, m, "n2", EgressNAT)
	x := addGuest(t, host, m, "x", EgressNone)
	all := []*guest{s1, s2, n1, n2, x}
	names := map[string]netip.Addr{}
	for _, g := range all {
		serveTCP(t, g.ns, ":7000")
		names[g.lease.VMID] = g.lease.Addr
		ok, master, iso := linkInfo(t, host, g.lease.Tap)
		if !ok || master != "bgr0" || iso != (g.lease.Egress != EgressShared) {
			t.Fatalf("%s's port: exists %v master %q isolated %v", g.lease.VMID, ok, master, iso)
		}
	}
	// A port without a lease (as a spare clone's tap before it is
	// adopted): no rules of its own, and it reaches no VM, shared or not.
	tap, err := m.AcquireTap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer m.ReleaseTap(ctx, tap)
	stray := plugGuest(t, host, m, &Lease{VMID: "stray", Addr: netip.MustParseAddr("172.30.0.200"), Tap: tap, MAC: MACFor("stray"), Egress: EgressNAT})
	serveTCP(t, stray.ns, ":7000")
	// It knows s1's MAC without ARP (whose replies are dropped anyway), so
	// that a one-way path would show.
	stray.ns.exec(t, "ip", "neigh", "replace", s1.lease.Addr.String(), "lladdr", s1.lease.MAC, "dev", "eth0", "nud", "permanent")
	serveTCP(t, host, ":2222")
	dns, err := m.StartDNS(ctx, DNSOptions{
		Lookup:    func(n string) (netip.Addr, bool) { a, ok := names[n]; return a, ok },
		Upstreams: []string{},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer dns.Close()

	addr := func(g *guest) string { return g.lease.Addr.String() + ":7000" }
	said := func(g *guest) string { return "hello " + g.lease.Addr.String() + "\n" }
	const brnf = "/proc/sys/net/bridge/bridge-nf-call-iptables"
	modes := []string{""}
	host.do(t, func() error {
		if _, err := os.Stat(brnf); err == nil {
			modes = []string{"1", "0"}
		}
		return nil
	})
	for _, mode := range modes {
		name := "no-br_netfilter"
		if mode != "" {
			name = "bridge-nf-call-iptables=" + mode
			host.do(t, func() error { return os.WriteFile(brnf, []byte(mode+"\n"), 0o644) })
		}
		t.Run(name, func(t *testing.T) {
			allowed(t, "s1 -> s2", s1.ns, addr(s2), said(s1))
			allowed(t, "s2 -> s1", s2.ns, addr(s1), said(s2))
			pings(t, "s1 ping s2", s1, s2)
			pings(t, "s2 ping s1", s2, s1)
			allowed(t, "s1 -> wan", s1.ns, wanAddr, "hello 10.99.0.1\n")
			allowed(t, "n1 -> wan", n1.ns, wanAddr, "hello 10.99.0.1\n")
			if out := s1.ns.exec(t, "dig", "+short", "+time=2", "+tries=1", "@"+m.Gateway().String(), "s2.vm", "A"); out != s2.lease.Addr.String()+"\n" {
				t.Errorf("s1: dig s2.vm: %q", out)
			}
			parallel(
				func() { blocked(t, "s1 -> n1", s1.ns, addr(n1)) },
				func() { blocked(t, "n1 -> s1", n1.ns, addr(s1)) },
				func() { blocked(t, "s2 -> x", s2.ns, addr(x)) },
				func() { blocked(t, "x -> s2", x.ns, addr(s2)) },
				func() { blocked(t, "n1 -> n2", n1.ns, addr(n2)) },
				func() { blocked(t, "n2 -> x", n2.ns, addr(x)) },
				func() { noPing(t, "s1 ping n1", s1, n1) },
				func() { noPing(t, "n1 ping s1", n1, s1) },
				func() { noPing(t, "x ping s1", x, s1) },
				func() { blocked(t, "s1 -> host service", s1.ns, m.Gateway().String()+":2222") },
				func() { blocked(t, "s1 -> host wan address", s1.ns, "10.99.0.1:2222") },
				func() { blocked(t, "wan -> s1", wan, addr(s1)) },
				func() { blocked(t, "x -> wan", x.ns, wanAddr) },
				func() { blocked(t, "stray -> s1", stray.ns, addr(s1)) },
				func() { blocked(t, "s1 -> stray", s1.ns, addr(stray)) },
				func() { blocked(t, "stray -> n1", stray.ns, addr(n1)) },
				func() { noPing(t, "stray ping s2", stray, s2) },
				func() { noUDP(t, "stray -> s1 (udp)", stray, s1) },
				func() { noUDP(t, "n1 -> s2 (udp)", n1, s2) },
			)
		})
	}

	// Detach takes every rule of s1 away; its tap's name goes to the next
	// VM, whose port is isolated again.
	if err := m.Detach(ctx, "s1"); err != nil {
		t.Fatal(err)
	}
	owners, err := m.RuleOwners()
	if err != nil || strings.Join(owners, ",") != "n1,n2,s2,x" {
		t.Fatalf("rule owners after detach: %v %v", owners, err)
	}
	dump := nftDump(t, host, "banger") + host.exec(t, "nft", "list", "table", "bridge", "banger")
	if strings.Contains(dump, `"`+s1.lease.Tap+`"`) || strings.Contains(dump, s1.lease.Addr.String()+" ") {
		t.Fatalf("rules of s1 left:\n%s", dump)
	}
	l, err := m.Attach(ctx, "n3", EgressNAT)
	if err != nil {
		t.Fatal(err)
	}
	if l.Tap != s1.lease.Tap {
		t.Fatalf("n3 got tap %s, want s1's %s", l.Tap, s1.lease.Tap)
	}
	if ok, master, iso := linkInfo(t, host, l.Tap); !ok || master != "bgr0" || !iso {
		t.Fatalf("n3's tap: exists %v master %q isolated %v", ok, master, iso)
	}
	allowed(t, "s2 -> wan after s1 left", s2.ns, wanAddr, "hello 10.99.0.1\n")
}

// TestSharedTapIsolation: Attach makes a shared VM's tap a non-isolated
// port (taps come isolated from the pool) and a re-attach puts it back so
// after anything changed it.
func TestSharedTapIsolation(t *testing.T) {
	ns := newNS(t)
	m, st := newManager(t, ns, t.TempDir(), 2)
	defer st.Close()
	defer teardown(t, ns, m)
	ctx := context.Background()
	waitFor(t, "pool of 2", func() bool { return m.PoolLen() == 2 })

	s, err := m.Attach(ctx, "s", EgressShared)
	if err != nil {
		t.Fatal(err)
	}
	n, err := m.Attach(ctx, "n", EgressNAT)
	if err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		t.Helper()
		if ok, master, iso := linkInfo(t, ns, s.Tap); !ok || master != "bgr0" || iso {
			t.Fatalf("%s: shared tap %s: exists %v master %q isolated %v", when, s.Tap, ok, master, iso)
		}
		if ok, master, iso := linkInfo(t, ns, n.Tap); !ok || master != "bgr0" || !iso {
			t.Fatalf("%s: nat tap %s: exists %v master %q isolated %v", when, n.Tap, ok, master, iso)
		}
	}
	check("attach")
	ns.exec(t, "ip", "link", "set", s.Tap, "type", "bridge_slave", "isolated", "on")
	ns.exec(t, "ip", "link", "set", n.Tap, "type", "bridge_slave", "isolated", "off")
	for _, id := range []string{"s", "n"} {
		if _, err := m.Attach(ctx, id, EgressNone); err != nil { // egress of an existing lease is kept
			t.Fatal(err)
		}
	}
	check("re-attach")
	// A lost tap (host reboot) comes back with the right isolation.
	ns.exec(t, "ip", "link", "del", s.Tap)
	if _, err := m.Attach(ctx, "s", EgressShared); err != nil {
		t.Fatal(err)
	}
	check("re-created")
}

// TestSetEgress: a VM's egress changes live, in the store, the rules and
// its tap's isolation, and the table is the one a rebuild would make.
func TestSetEgress(t *testing.T) {
	host := newNS(t)
	m, st := newManager(t, host, t.TempDir(), -1)
	defer st.Close()
	defer teardown(t, host, m)
	ctx := context.Background()
	newWAN(t, host)
	a := addGuest(t, host, m, "a", EgressNAT)
	s := addGuest(t, host, m, "s", EgressShared)
	x := addGuest(t, host, m, "x", EgressNone)
	for _, g := range []*guest{a, s, x} {
		serveTCP(t, g.ns, ":7000")
	}
	addr := func(g *guest) string { return g.lease.Addr.String() + ":7000" }
	said := func(g *guest) string { return "hello " + g.lease.Addr.String() + "\n" }
	set := func(g *guest, e Egress) {
		t.Helper()
		l, err := m.SetEgress(ctx, g.lease.VMID, e)
		if err != nil || l.Egress != e || l.Addr != g.lease.Addr || l.Tap != g.lease.Tap {
			t.Fatalf("set %s %s: %+v %v", g.lease.VMID, e, l, err)
		}
		if sl, err := st.GetLease(ctx, g.lease.VMID); err != nil || sl.Egress != string(e) {
			t.Fatalf("stored lease of %s: %+v %v", g.lease.VMID, sl, err)
		}
		if _, _, iso := linkInfo(t, host, g.lease.Tap); iso != (e != EgressShared) {
			t.Fatalf("%s's tap isolated %v with egress %s", g.lease.VMID, iso, e)
		}
		dump := nftDump(t, host, "banger") + host.exec(t, "nft", "list", "table", "bridge", "banger")
		if err := m.syncRules(); err != nil {
			t.Fatal(err)
		}
		// Per-VM rules match one VM each: their order does not matter.
		if again := nftDump(t, host, "banger") + host.exec(t, "nft", "list", "table", "bridge", "banger"); sortedLines(again) != sortedLines(dump) {
			t.Fatalf("after set %s %s, a rebuild differs:\n%s\n--- was\n%s", g.lease.VMID, e, again, dump)
		}
	}

	blocked(t, "a (nat) -> s", a.ns, addr(s))
	set(a, EgressShared)
	allowed(t, "a (shared) -> s", a.ns, addr(s), said(a))
	allowed(t, "s -> a (shared)", s.ns, addr(a), said(s))
	allowed(t, "a (shared) -> wan", a.ns, wanAddr, "hello 10.99.0.1\n")
	set(a, EgressNone)
	parallel(
		func() { blocked(t, "a (none) -> wan", a.ns, wanAddr) },
		func() { blocked(t, "a (none) -> s", a.ns, addr(s)) },
		func() { blocked(t, "s -> a (none)", s.ns, addr(a)) },
		func() { blocked(t, "x (none) -> wan", x.ns, wanAddr) },
	)
	set(x, EgressNAT)
	allowed(t, "x (nat) -> wan", x.ns, wanAddr, "hello 10.99.0.1\n")
	if owners, err := m.RuleOwners(); err != nil || strings.Join(owners, ",") != "a,s,x" {
		t.Fatalf("rule owners: %v %v", owners, err)
	}
	if _, err := m.SetEgress(ctx, "nobody", EgressNAT); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("set egress of a VM without a lease: %v", err)
	}
	if _, err := m.SetEgress(ctx, "a", "bridge"); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("set egress bridge: %v", err)
	}
}
