package network

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// fakeUpstream answers every A query with 192.0.2.7 (TEST-NET-1), in ns.
func fakeUpstream(t *testing.T, ns *testNS, addr string) {
	t.Helper()
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg).SetReply(r)
		m.RecursionAvailable = true
		if r.Question[0].Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 7)})
		}
		w.WriteMsg(m)
	})
	var pc net.PacketConn
	var ln net.Listener
	ns.do(t, func() error {
		var err error
		if pc, err = net.ListenPacket("udp", addr); err != nil {
			return err
		}
		ln, err = net.Listen("tcp", addr)
		return err
	})
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		go s.ActivateAndServe()
		t.Cleanup(func() { s.Shutdown() })
	}
}

func TestDNS(t *testing.T) {
	host := newNS(t)
	m, st := newManager(t, host, t.TempDir(), -1)
	defer st.Close()
	defer teardown(t, host, m)
	ctx := context.Background()

	natG := addGuest(t, host, m, "natvm", EgressNAT)
	noneG := addGuest(t, host, m, "nonevm", EgressNone)
	sharedG := addGuest(t, host, m, "sharedvm", EgressShared)
	byName := map[string]netip.Addr{"dev": natG.lease.Addr, "quiet": noneG.lease.Addr}
	byAddr := map[netip.Addr]string{natG.lease.Addr: "dev", noneG.lease.Addr: "quiet"}
	fakeUpstream(t, host, "127.0.0.53:53")
	srv, err := m.StartDNS(ctx, DNSOptions{
		Lookup:    func(n string) (netip.Addr, bool) { a, ok := byName[n]; return a, ok },
		Reverse:   func(a netip.Addr) (string, bool) { n, ok := byAddr[a]; return n, ok },
		Upstreams: []string{"127.0.0.53:53"},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	dev := natG.lease.Addr.String()

	dig := func(ns *testNS, args ...string) string {
		return ns.exec(t, append([]string{"dig", "+time=2", "+tries=1"}, args...)...)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"+short", "@127.0.0.1", "-p", "42069", "dev.vm"}, dev + "\n"},
		{[]string{"+short", "+tcp", "@127.0.0.1", "-p", "42069", "dev.vm"}, dev + "\n"},
		{[]string{"+short", "@127.0.0.1", "-p", "42069", "DEV.VM"}, dev + "\n"},
		{[]string{"+short", "@172.30.0.1", "-p", "42069", "dev.vm"}, dev + "\n"},
		{[]string{"+short", "@127.0.0.1", "-p", "42069", "-x", dev}, "dev.vm.\n"},
		{[]string{"+short", "+tcp", "@127.0.0.1", "-p", "42069", "-x", dev}, "dev.vm.\n"},
		{[]string{"+short", "@127.0.0.1", "-p", "42069", "dev.vm", "AAAA"}, ""},
		{[]string{"+short", "@127.0.0.1", "-p", "42069", "example.com"}, "192.0.2.7\n"},
		{[]string{"+short", "+tcp", "@127.0.0.1", "-p", "42069", "example.com"}, "192.0.2.7\n"},
	} {
		if got := dig(host, tc.args...); got != tc.want {
			t.Errorf("dig %v: %q, want %q", tc.args, got, tc.want)
		}
	}
	status := func(out string) string {
		i := strings.Index(out, "status: ")
		if i < 0 {
			return "?"
		}
		return strings.TrimRight(strings.Fields(out[i+8:])[0], ",")
	}
	for _, tc := range []struct {
		ns   *testNS
		args []string
		want string
	}{
		{host, []string{"@127.0.0.1", "-p", "42069", "nope.vm"}, "NXDOMAIN"},
		{host, []string{"+tcp", "@127.0.0.1", "-p", "42069", "nope.vm"}, "NXDOMAIN"},
		{host, []string{"@127.0.0.1", "-p", "42069", "a.dev.vm"}, "NXDOMAIN"},
		{host, []string{"@127.0.0.1", "-p", "42069", "dev.vm", "AAAA"}, "NOERROR"},
		{host, []string{"@127.0.0.1", "-p", "42069", "-x", "172.30.0.200"}, "NXDOMAIN"},
		// Guests: nat and shared get other names forwarded, none does not.
		{natG.ns, []string{"@172.30.0.1", "example.com"}, "NOERROR"},
		{sharedG.ns, []string{"@172.30.0.1", "example.com"}, "NOERROR"},
		{noneG.ns, []string{"@172.30.0.1", "example.com"}, "REFUSED"},
		{noneG.ns, []string{"@172.30.0.1", "dev.vm"}, "NOERROR"},
	} {
		if got := status(dig(tc.ns, tc.args...)); got != tc.want {
			t.Errorf("dig %v from %s: %s, want %s", tc.args, tc.ns.Name, got, tc.want)
		}
	}
	if out := dig(natG.ns, "+short", "@172.30.0.1", "example.com"); out != "192.0.2.7\n" {
		t.Errorf("nat guest forwarded: %q", out)
	}

	// Go client, UDP and TCP.
	for _, netw := range []string{"udp", "tcp"} {
		var r *dns.Msg
		host.do(t, func() error {
			var err error
			r, _, err = (&dns.Client{Net: netw, Timeout: 2 * time.Second}).Exchange(new(dns.Msg).SetQuestion("dev.vm.", dns.TypeA), "127.0.0.1:42069")
			return err
		})
		if r.Rcode != dns.RcodeSuccess || !r.Authoritative || len(r.Answer) != 1 || r.Answer[0].(*dns.A).A.String() != dev {
			t.Errorf("go client %s: %v", netw, r)
		}
	}
}

// TestDNSLatency measures answer latency for NAME.vm over UDP (Go client,
// one query at a time) and prints p50/p99.
func TestDNSLatency(t *testing.T) {
	host := newNS(t)
	m, st := newManager(t, host, t.TempDir(), -1)
	defer st.Close()
	defer teardown(t, host, m)
	srv, err := m.StartDNS(context.Background(), DNSOptions{
		Lookup:    func(n string) (netip.Addr, bool) { return netip.MustParseAddr("172.30.0.9"), n == "dev" },
		Upstreams: []string{},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	const n = 2000
	lat := make([]time.Duration, 0, n)
	host.do(t, func() error {
		c := &dns.Client{Timeout: 2 * time.Second}
		conn, err := c.Dial("127.0.0.1:42069")
		if err != nil {
			return err
		}
		defer conn.Close()
		for i := 0; i < n; i++ {
			q := new(dns.Msg).SetQuestion("dev.vm.", dns.TypeA)
			t0 := time.Now()
			r, _, err := c.ExchangeWithConn(q, conn)
			if err != nil {
				return err
			}
			lat = append(lat, time.Since(t0))
			if len(r.Answer) != 1 {
				return fmt.Errorf("no answer: %v", r)
			}
		}
		return nil
	})
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("DNS dev.vm A over UDP (Go client), %d queries: p50 %v p99 %v max %v", n, lat[n/2], lat[n*99/100], lat[n-1])

	// dig in a loop (batch mode: one process, each query timed by dig, in ms).
	batch := filepath.Join(t.TempDir(), "queries")
	var lines []string
	for i := 0; i < 500; i++ {
		lines = append(lines, "@127.0.0.1 -p 42069 dev.vm A +tries=1 +time=2")
	}
	os.WriteFile(batch, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
	out := host.exec(t, "dig", "-f", batch)
	var ms []int
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, ";; Query time: "); ok {
			n, _ := strconv.Atoi(strings.Fields(v)[0])
			ms = append(ms, n)
		}
	}
	if len(ms) != len(lines) || strings.Count(out, "status: NOERROR") != len(lines) {
		t.Fatalf("dig batch: %d timings for %d queries", len(ms), len(lines))
	}
	sort.Ints(ms)
	t.Logf("DNS dev.vm A over UDP (dig -f, %d queries): p50 %d ms p99 %d ms max %d ms", len(ms), ms[len(ms)/2], ms[len(ms)*99/100], ms[len(ms)-1])
}
