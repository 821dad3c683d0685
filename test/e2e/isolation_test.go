package e2e

import (
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// hostServe listens on addr (port 0: any) and accepts until the test ends;
// it returns the port.
func hostServe(t *testing.T, addr string) int {
	t.Helper()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}

// perlConnectFrom is perlConnect from a given source address.
func perlConnectFrom(src, addr string, port int) []string {
	return []string{"perl", "-MIO::Socket::INET", "-e", fmt.Sprintf(`exit(IO::Socket::INET->new(LocalAddr=>"%s",PeerAddr=>"%s",PeerPort=>%d,Timeout=>3) ? 0 : 1)`, src, addr, port)}
}

// TestNoneGuestIsolation (issue 15, item 7), from inside a real --net
// none guest: it reaches no host service (on the bridge's address or the
// host's other addresses) and only banger's DNS on the gateway; with an
// address it was not leased, or another MAC, not even that; no host file
// system is shared into it (the daemon's socket is out of its reach); the
// bridge does not route loopback addresses. Every target is this host's.
func TestNoneGuestIsolation(t *testing.T) {
	h := env(t)
	const vm = "iso-none"
	h.must(t, "vm", "create", vm, "--net", "none")
	defer h.run(t, nil, "vm", "delete", "--force", vm)
	v := vmInfo(t, h, vm)
	gw := v.IP[:strings.LastIndex(v.IP, ".")] + ".1"
	in := func(argv ...string) int {
		_, code := h.run(t, nil, append([]string{"vm", "exec", vm, "--"}, argv...)...)
		return code
	}

	port := hostServe(t, "0.0.0.0:0")
	var others []string
	ifs, _ := net.Interfaces()
	for _, i := range ifs {
		if i.Flags&net.FlagLoopback != 0 || i.Name == h.bridge || strings.HasPrefix(i.Name, h.bridge) {
			continue
		}
		addrs, _ := i.Addrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
				others = append(others, n.IP.String())
			}
		}
	}
	for _, addr := range append([]string{gw}, others...) {
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("%s:%d", addr, port), 3*time.Second); err != nil {
			t.Fatalf("control: the host cannot reach its own service at %s:%d: %v", addr, port, err)
		} else {
			c.Close()
		}
		if in(perlConnect(addr, port)...) == 0 {
			t.Errorf("the none guest reached a host service at %s:%d", addr, port)
		}
	}
	t.Logf("host addresses tried from the guest: %v", append([]string{gw}, others...))

	// banger's DNS (TCP) is the one thing it reaches, from its own address.
	if in(perlConnect(gw, h.dns)...) != 0 {
		t.Fatalf("control: the none guest cannot reach banger's DNS on %s:%d", gw, h.dns)
	}
	spoof := v.IP[:strings.LastIndex(v.IP, ".")] + ".250"
	if in("ip", "addr", "add", spoof+"/32", "dev", "eth0") != 0 {
		t.Fatal("could not add an address in the guest")
	}
	if in(perlConnectFrom(spoof, gw, h.dns)...) == 0 {
		t.Errorf("a guest using an address it was not leased (%s) reached the gateway", spoof)
	}
	if in(perlConnectFrom(v.IP, gw, h.dns)...) != 0 {
		t.Errorf("control: from its own address the guest no longer reaches DNS")
	}
	in("ip", "addr", "del", spoof+"/32", "dev", "eth0")
	// Another MAC: dropped at the bridge. The agent's channel is not the
	// network, so the VM can still be told to change it back.
	if in("ip", "link", "set", "eth0", "address", "52:54:00:de:ad:01") != 0 {
		t.Fatal("could not change the guest's MAC")
	}
	if in(perlConnect(gw, h.dns)...) == 0 {
		t.Errorf("a guest with another MAC reached the gateway")
	}
	in("ip", "link", "set", "eth0", "address", v.MAC)
	if in(perlConnect(gw, h.dns)...) != 0 {
		t.Errorf("control: with its own MAC back the guest does not reach DNS")
	}

	// Nothing of the host's file system is mounted in the guest.
	mounts := h.must(t, "vm", "exec", vm, "--", "cat", "/proc/mounts")
	for _, fs := range []string{" 9p ", " virtiofs ", " nfs", " fuse."} {
		if strings.Contains(mounts, fs) {
			t.Errorf("the guest mounts a shared file system (%s):\n%s", strings.TrimSpace(fs), mounts)
		}
	}
	// Loopback addresses are not routed from the bridge.
	b, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + h.bridge + "/route_localnet")
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(b)) != "0" {
		t.Errorf("route_localnet is %s on the bridge: the guests could reach the host's loopback services", strings.TrimSpace(string(b)))
	}
}
