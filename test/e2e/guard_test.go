package e2e

import (
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// site is a network namespace this test makes, behind a veth from the
// host's namespace: a stand-in for a LAN (192.168.213.0/24) and a cloud
// metadata service (169.254.169.254, routed by the host), each serving
// TCP on sitePort. Nothing leaves the machine.
const (
	siteHost = "192.168.213.1"
	siteLAN  = "192.168.213.2"
	siteMeta = "169.254.169.254"
	sitePort = 8089
)

func newSite(t *testing.T) {
	t.Helper()
	if rs, err := netlink.RouteGet(net.ParseIP(siteMeta)); err == nil && len(rs) > 0 && rs[0].Gw == nil {
		t.Fatalf("this host routes %s on a link already (a real metadata service?): the test would shadow it", siteMeta)
	}
	name := fmt.Sprintf("bgsite-%d", os.Getpid())
	veth := fmt.Sprintf("bgs%d", os.Getpid()%100000)
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	ns, err := netns.NewNamed(name)
	if serr := netns.Set(orig); serr != nil {
		t.Fatalf("restore netns: %v", serr) // this thread stays locked: Go discards it
	}
	orig.Close()
	runtime.UnlockOSThread()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(veth); err == nil {
			netlink.LinkDel(l)
		}
		ns.Close()
		netns.DeleteNamed(name)
	})
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: veth}, PeerName: "site0", PeerNamespace: netlink.NsFd(ns)}))
	l, err := netlink.LinkByName(veth)
	must(err)
	a, _ := netlink.ParseAddr(siteHost + "/24")
	must(netlink.AddrAdd(l, a))
	must(netlink.LinkSetUp(l))
	_, meta, _ := net.ParseCIDR(siteMeta + "/32")
	must(netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: meta, Scope: netlink.SCOPE_LINK}))
	sh, err := netlink.NewHandleAt(ns)
	must(err)
	defer sh.Close()
	s0, err := sh.LinkByName("site0")
	must(err)
	for _, addr := range []string{siteLAN + "/24", siteMeta + "/32"} {
		a, _ := netlink.ParseAddr(addr)
		must(sh.AddrAdd(s0, a))
	}
	must(sh.LinkSetUp(s0))
	lo, err := sh.LinkByName("lo")
	must(err)
	must(sh.LinkSetUp(lo))
	// A server in the site, on every address of it.
	lnc := make(chan net.Listener, 1)
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if err := netns.Set(ns); err != nil {
			errc <- err
			return
		}
		ln, err := net.Listen("tcp", fmt.Sprintf(":%d", sitePort))
		if err != nil {
			errc <- err
			return
		}
		lnc <- ln
	}()
	var ln net.Listener
	select {
	case err := <-errc:
		t.Fatal(err)
	case ln = <-lnc:
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

// TestGuestKeptFromHostNetworks: a nat VM reaches neither a private LAN
// the host is on nor a link-local metadata service the host routes, both
// of which the host reaches; a daemon restarted with network.allow
// listing the LAN lets the (still running) VM reach it, and still not the
// metadata service.
func TestGuestKeptFromHostNetworks(t *testing.T) {
	h, vm := sharedVM(t)
	newSite(t)
	for _, addr := range []string{siteLAN, siteMeta} {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("%s:%d", addr, sitePort), 3*time.Second)
		if err != nil {
			t.Fatalf("control: the host cannot reach %s: %v", addr, err)
		}
		c.Close()
	}
	reaches := func(addr string) bool {
		_, code := h.run(t, nil, append([]string{"vm", "exec", vm, "--"}, perlConnect(addr, sitePort)...)...)
		return code == 0
	}
	if reaches(siteLAN) {
		t.Errorf("the guest reached the host's LAN at %s", siteLAN)
	}
	if reaches(siteMeta) {
		t.Errorf("the guest reached the metadata service at %s", siteMeta)
	}

	cfg := h.cfg
	restart := func() {
		if err := h.writeConfig(0); err != nil {
			t.Fatal(err)
		}
		h.must(t, "daemon", "stop")
		h.must(t, "daemon", "start")
	}
	h.cfg = strings.TrimRight(cfg, "\n") + "\nallow = [\"" + siteLAN + "/32\"]\n"
	t.Cleanup(func() { h.cfg = cfg; restart() })
	restart()
	if !reaches(siteLAN) {
		t.Errorf("with network.allow = [%s/32] the guest does not reach it", siteLAN)
	}
	if reaches(siteMeta) {
		t.Errorf("with network.allow = [%s/32] the guest reached the metadata service", siteLAN)
	}
}
