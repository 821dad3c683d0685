package network

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// guest is a stand-in for a VM: its own network namespace whose eth0 is a
// veth whose host end takes the place of the VM's tap on the bridge.
type guest struct {
	ns    *testNS
	lease *Lease
}

// addGuest attaches a VM and swaps its tap for a veth into a fresh
// namespace configured as the agent would (GuestNet).
func addGuest(t *testing.T, host *testNS, m *Manager, vmID string, egress Egress) *guest {
	t.Helper()
	ctx := context.Background()
	l, err := m.Attach(ctx, vmID, egress)
	if err != nil {
		t.Fatal(err)
	}
	return plugGuest(t, host, m, l)
}

// plugGuest swaps l's tap for a veth into a fresh namespace configured as
// the agent would configure it for l.
func plugGuest(t *testing.T, host *testNS, m *Manager, l *Lease) *guest {
	t.Helper()
	g := &guest{ns: newNS(t), lease: l}
	hh, err := netlink.NewHandleAt(host.H)
	if err != nil {
		t.Fatal(err)
	}
	defer hh.Close()
	tap, err := hh.LinkByName(l.Tap)
	if err != nil {
		t.Fatal(err)
	}
	if err := hh.LinkDel(tap); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 3)
	rand.Read(b)
	peer := "bgp" + hex.EncodeToString(b)
	if err := hh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: l.Tap}, PeerName: peer, PeerNamespace: netlink.NsFd(g.ns.H)}); err != nil {
		t.Fatal(err)
	}
	// Attach the veth exactly as a tap is attached (isolated port).
	if err := m.ensureTap(l.Tap, l.Egress); err != nil {
		t.Fatal(err)
	}
	gn := m.GuestNet(l)
	gh, err := netlink.NewHandleAt(g.ns.H)
	if err != nil {
		t.Fatal(err)
	}
	defer gh.Close()
	eth, err := gh.LinkByName(peer)
	if err != nil {
		t.Fatal(err)
	}
	mac, _ := net.ParseMAC(gn.MAC)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(gh.LinkSetName(eth, gn.Interface))
	must(gh.LinkSetHardwareAddr(eth, mac))
	must(gh.AddrAdd(eth, &netlink.Addr{IPNet: &net.IPNet{IP: gn.Address.Addr().AsSlice(), Mask: net.CIDRMask(gn.Address.Bits(), 32)}}))
	must(gh.LinkSetUp(eth))
	must(gh.RouteAdd(&netlink.Route{LinkIndex: eth.Attrs().Index, Gw: gn.Gateway.AsSlice()}))
	return g
}

// serveTCP listens on addr in ns and answers each connection with a line
// naming the peer's address.
func serveTCP(t *testing.T, ns *testNS, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	ns.do(t, func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "hello %s\n", c.RemoteAddr().(*net.TCPAddr).IP)
			c.Close()
		}
	}()
	return ln
}

// dialFrom connects from ns to addr and returns what the server said.
func dialFrom(ns *testNS, addr string, timeout time.Duration) (string, error) {
	out, _, err := dialFromSrc(ns, "", addr, timeout)
	return out, err
}

// dialFromSrc connects from ns (with source address src, unless "") to
// addr, and reads what the server says until it closes; connected tells
// whether the TCP handshake completed.
func dialFromSrc(ns *testNS, src, addr string, timeout time.Duration) (out string, connected bool, err error) {
	var c net.Conn
	err = inNS(ns.H, func() error {
		d := &net.Dialer{Timeout: timeout}
		if src != "" {
			d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(src)}
		}
		var err error
		c, err = d.Dial("tcp", addr)
		return err
	})
	if err != nil {
		return "", false, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	b, err := io.ReadAll(c)
	return string(b), true, err
}

func blocked(t *testing.T, what string, ns *testNS, addr string) {
	t.Helper()
	blockedSrc(t, what, ns, "", addr)
}

// blockedSrc checks that a connection cannot even be opened, because its
// packets are dropped (a refusal would mean they got through).
func blockedSrc(t *testing.T, what string, ns *testNS, src, addr string) {
	t.Helper()
	out, connected, err := dialFromSrc(ns, src, addr, 700*time.Millisecond)
	if connected {
		t.Errorf("%s: connected to %s (%q), want blocked", what, addr, out)
		return
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("%s: %v, want a timeout (dropped)", what, err)
	}
}

func allowed(t *testing.T, what string, ns *testNS, addr, want string) {
	t.Helper()
	out, err := dialFrom(ns, addr, 3*time.Second)
	if err != nil || out != want {
		t.Errorf("%s: %q %v, want %q", what, out, err, want)
	}
}

// wanAddr is the stand-in internet's server (TEST-NET-3: neither private
// nor routed by the host but through its default route).
const wanAddr = "203.0.113.10:8080"

// newWAN makes a stand-in for the internet: a namespace behind a veth
// (host 10.99.0.1, wan 10.99.0.2) that is the default route of the host
// namespace, with a TCP server on wanAddr and on 10.99.0.2:8080 (a
// neighbour on the host's LAN, which guests must not reach).
func newWAN(t *testing.T, host *testNS) *testNS {
	t.Helper()
	wan := newNS(t)
	hh, _ := netlink.NewHandleAt(host.H)
	defer hh.Close()
	if err := hh.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "wan0"}, PeerName: "up0", PeerNamespace: netlink.NsFd(wan.H)}); err != nil {
		t.Fatal(err)
	}
	w0, _ := hh.LinkByName("wan0")
	hh.AddrAdd(w0, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 99, 0, 1), Mask: net.CIDRMask(24, 32)}})
	hh.LinkSetUp(w0)
	if err := hh.RouteAdd(&netlink.Route{LinkIndex: w0.Attrs().Index, Gw: net.IPv4(10, 99, 0, 2)}); err != nil {
		t.Fatal(err)
	}
	wh, _ := netlink.NewHandleAt(wan.H)
	defer wh.Close()
	u0, _ := wh.LinkByName("up0")
	wh.AddrAdd(u0, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 99, 0, 2), Mask: net.CIDRMask(24, 32)}})
	wh.AddrAdd(u0, &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(203, 0, 113, 10), Mask: net.CIDRMask(32, 32)}})
	wh.LinkSetUp(u0)
	// The wan knows the way to the guests (as a LAN neighbour might).
	if err := wh.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: net.IPv4(172, 30, 0, 0), Mask: net.CIDRMask(24, 32)}, Gw: net.IPv4(10, 99, 0, 1)}); err != nil {
		t.Fatal(err)
	}
	serveTCP(t, wan, ":8080")
	return wan
}

// TestIsolationAndEgress: guests (veth stand-ins for VMs) on the bridge
// cannot reach each other nor the host's services, can reach banger's DNS,
// nat guests reach a "wan" namespace masqueraded and none guests do not.
func TestIsolationAndEgress(t *testing.T) {
	host := newNS(t)
	m, st := newManager(t, host, t.TempDir(), -1)
	defer st.Close()
	defer teardown(t, host, m)
	ctx := context.Background()

	wan := newWAN(t, host)

	a := addGuest(t, host, m, "a", EgressNAT)
	b := addGuest(t, host, m, "b", EgressNone)
	serveTCP(t, a.ns, ":7000")
	serveTCP(t, b.ns, ":7000")
	serveTCP(t, host, ":2222") // a host service on every address, bridge's included

	names := map[string]netip.Addr{"a": a.lease.Addr, "b": b.lease.Addr}
	dns, err := m.StartDNS(ctx, DNSOptions{
		Lookup:    func(n string) (netip.Addr, bool) { a, ok := names[n]; return a, ok },
		Upstreams: []string{},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer dns.Close()

	hostSaid := "hello " + m.Gateway().String() + "\n"
	// The host reaches guests (ssh, agent-less tools).
	allowed(t, "host -> guest a", host, a.lease.Addr.String()+":7000", hostSaid)
	allowed(t, "host -> guest b", host, b.lease.Addr.String()+":7000", hostSaid)
	// Guests do not reach each other, at layer 2 or routed via the host.
	blocked(t, "a -> b", a.ns, b.lease.Addr.String()+":7000")
	blocked(t, "b -> a", b.ns, a.lease.Addr.String()+":7000")
	// Guests do not reach the host's services.
	blocked(t, "a -> host service", a.ns, m.Gateway().String()+":2222")
	blocked(t, "b -> host service", b.ns, m.Gateway().String()+":2222")
	blocked(t, "a -> host wan address", a.ns, "10.99.0.1:2222")
	// nat egress is masqueraded; none has no egress.
	allowed(t, "a -> wan", a.ns, wanAddr, "hello 10.99.0.1\n")
	blocked(t, "b -> wan", b.ns, wanAddr)
	// The wan side cannot open connections to guests.
	blocked(t, "wan -> a", wan, a.lease.Addr.String()+":7000")

	// Guests reach banger's DNS: the DNS port, and port 53 of the gateway.
	for _, g := range []*guest{a, b} {
		for _, port := range []string{"42069", "53"} {
			for _, tcp := range []bool{false, true} {
				args := []string{"dig", "+short", "+time=2", "+tries=1", "@" + m.Gateway().String(), "-p", port, "b.vm", "A"}
				if tcp {
					args = append(args, "+tcp")
				}
				if out := g.ns.exec(t, args...); out != b.lease.Addr.String()+"\n" {
					t.Errorf("%s: dig port %s tcp=%v: %q", g.lease.VMID, port, tcp, out)
				}
			}
		}
	}

	// Anti-spoofing: b cannot use an address it was not leased (not a
	// free one, not a's, whose egress is nat), nor another MAC.
	dnsTCP := m.Gateway().String() + ":42069"
	gh, err := netlink.NewHandleAt(b.ns.H)
	if err != nil {
		t.Fatal(err)
	}
	defer gh.Close()
	eth, _ := gh.LinkByName("eth0")
	for _, extra := range []string{"172.30.0.77", a.lease.Addr.String()} {
		if err := gh.AddrAdd(eth, &netlink.Addr{IPNet: &net.IPNet{IP: net.ParseIP(extra), Mask: net.CIDRMask(32, 32)}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, connected, err := dialFromSrc(b.ns, b.lease.Addr.String(), dnsTCP, 300*time.Millisecond); !connected {
		t.Errorf("b -> dns from its own address: %v", err)
	}
	blockedSrc(t, "b -> dns from a free address", b.ns, "172.30.0.77", dnsTCP)
	blockedSrc(t, "b -> wan from a's address", b.ns, a.lease.Addr.String(), wanAddr)
	gh.LinkSetHardwareAddr(eth, net.HardwareAddr{0x52, 0x54, 0, 1, 2, 3})
	blockedSrc(t, "b -> dns with another MAC", b.ns, b.lease.Addr.String(), dnsTCP)
}
