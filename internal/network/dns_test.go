package network

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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

// floodUpstream is a resolver in ns that answers names under "ok." at
// once (192.0.2.7), answers "mismatch.ok." with another question, and
// never answers anything else; it records the source ports of the UDP
// queries it gets.
type floodUpstream struct {
	mu    sync.Mutex
	ports map[int]bool
	n     int
}

func newFloodUpstream(t *testing.T, ns *testNS, addr string) *floodUpstream {
	t.Helper()
	u := &floodUpstream{ports: map[int]bool{}}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		if a, ok := w.RemoteAddr().(*net.UDPAddr); ok {
			u.mu.Lock()
			u.ports[a.Port] = true
			u.n++
			u.mu.Unlock()
		}
		q := r.Question[0]
		switch {
		case q.Name == "mismatch.ok.":
			m := new(dns.Msg).SetReply(r)
			m.Question[0].Name = "other.ok."
			w.WriteMsg(m)
		case dns.IsSubDomain("ok.", q.Name):
			m := new(dns.Msg).SetReply(r)
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 7)})
			w.WriteMsg(m)
		}
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
	return u
}

func (u *floodUpstream) sourcePorts() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.ports)
}

func openFDs(t *testing.T) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// TestDNSFloodBounded: a guest sending 5,000 queries for names the
// upstream never answers, and opening 200 TCP connections to the DNS
// port, costs the server a bounded number of goroutines and file
// descriptors; another client is still served meanwhile, the flooding
// guest's excess is answered SERVFAIL at once, and queries reach the
// upstream over a few reused sockets.
func TestDNSFloodBounded(t *testing.T) {
	host := newNS(t)
	m, st := newManager(t, host, t.TempDir(), -1)
	defer st.Close()
	defer teardown(t, host, m)
	ctx := context.Background()
	up := newFloodUpstream(t, host, "127.0.0.54:53")
	g := addGuest(t, host, m, "g", EgressNAT)
	srv, err := m.StartDNS(ctx, DNSOptions{Upstreams: []string{"127.0.0.54:53"}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	dnsAddr := m.Gateway().String() + ":42069"

	// Answers are matched to their question.
	ask := func(ns *testNS, netw, name, at string) (*dns.Msg, time.Duration, error) {
		var r *dns.Msg
		t0 := time.Now()
		err := inNS(ns.H, func() error {
			var err error
			r, _, err = (&dns.Client{Net: netw, Timeout: 5 * time.Second}).Exchange(new(dns.Msg).SetQuestion(name, dns.TypeA), at)
			return err
		})
		return r, time.Since(t0), err
	}
	if r, _, err := ask(g.ns, "udp", "a.ok.", dnsAddr); err != nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("a.ok.: %v %v", r, err)
	}
	if r, _, err := ask(g.ns, "udp", "mismatch.ok.", dnsAddr); err != nil || r.Rcode != dns.RcodeServerFailure {
		t.Errorf("an answer to another question was passed on: %v %v", r, err)
	}
	runtime.GC()
	time.Sleep(100 * time.Millisecond)
	baseG, baseFD := runtime.NumGoroutine(), openFDs(t)

	var maxG, maxFD atomic.Int64
	var clientFDs atomic.Int64 // the flood's own sockets, in this process too
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			if n := int64(runtime.NumGoroutine()); n > maxG.Load() {
				maxG.Store(n)
			}
			es, _ := os.ReadDir("/proc/self/fd")
			if n := int64(len(es)) - clientFDs.Load(); n > maxFD.Load() {
				maxFD.Store(n)
			}
		}
	}()

	// 200 TCP connections, each asking one name that is never answered.
	var conns []net.Conn
	for i := 0; i < 200; i++ {
		var c net.Conn
		g.ns.do(t, func() error {
			var err error
			c, err = net.DialTimeout("tcp", dnsAddr, 2*time.Second)
			return err
		})
		clientFDs.Add(1)
		conns = append(conns, c)
		dc := &dns.Conn{Conn: c}
		dc.WriteMsg(new(dns.Msg).SetQuestion(fmt.Sprintf("t%d.slow.", i), dns.TypeA))
	}
	// 5,000 UDP queries from one socket, as fast as it sends them.
	var pc net.PacketConn
	g.ns.do(t, func() error {
		var err error
		pc, err = net.ListenPacket("udp", ":0")
		return err
	})
	clientFDs.Add(1)
	dst, _ := net.ResolveUDPAddr("udp", dnsAddr)
	var servfail atomic.Int64
	read := make(chan struct{})
	go func() { // read as the answers come, or the socket's buffer drops them
		defer close(read)
		buf := make([]byte, 4096)
		for {
			pc.SetReadDeadline(time.Now().Add(3 * time.Second))
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var r dns.Msg
			if r.Unpack(buf[:n]) == nil && r.Rcode == dns.RcodeServerFailure {
				servfail.Add(1)
			}
		}
	}()
	t0 := time.Now()
	for i := 0; i < 5000; i++ {
		b, _ := new(dns.Msg).SetQuestion(fmt.Sprintf("q%d.slow.", i), dns.TypeA).Pack()
		pc.WriteTo(b, dst)
		if i%100 == 99 {
			time.Sleep(time.Millisecond) // a flood, not a loss test of our socket queue
		}
	}
	sent := time.Since(t0)
	// While the flood waits on the upstream: another client is served,
	// the flooding guest's excess is refused at once.
	if r, d, err := ask(host, "udp", "b.ok.", "127.0.0.1:42069"); err != nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Errorf("the host's query during the flood: %v %v (%v)", r, err, d)
	}
	if r, d, err := ask(g.ns, "udp", "c.ok.", dnsAddr); err != nil || r.Rcode != dns.RcodeServerFailure || d > time.Second {
		t.Errorf("the flooding guest's query beyond its limit: %v %v after %v, want SERVFAIL at once", r, err, d)
	}
	<-read
	close(stop)
	<-sampled
	for _, c := range conns {
		c.Close()
	}
	pc.Close()
	t.Logf("flood: 5,000 UDP queries sent in %v + 200 TCP connections: goroutines %d -> max %d, server fds %d -> max %d; %d SERVFAIL answers; upstream got %d UDP queries from %d ports",
		sent.Round(time.Millisecond), baseG, maxG.Load(), baseFD, maxFD.Load(), servfail.Load(), up.n, up.sourcePorts())
	if g := maxG.Load() - int64(baseG); g > 100 {
		t.Errorf("%d goroutines more under the flood, want at most 100", g)
	}
	if f := maxFD.Load() - int64(baseFD); f > 30 {
		t.Errorf("%d server file descriptors more under the flood, want at most 30", f)
	}
	if n := servfail.Load(); n < 4000 {
		t.Errorf("%d SERVFAIL answers of 5,000, want the excess answered at once", n)
	}

	// Socket reuse: 5,000 answered queries go over a few sockets, each
	// replaced after socketQueries queries.
	before := up.sourcePorts()
	g.ns.do(t, func() error {
		c := &dns.Client{Timeout: 2 * time.Second}
		for i := 0; i < 5000; i++ {
			r, _, err := c.Exchange(new(dns.Msg).SetQuestion(fmt.Sprintf("n%d.ok.", i), dns.TypeA), dnsAddr)
			if err != nil {
				return err
			}
			if len(r.Answer) != 1 {
				return fmt.Errorf("n%d.ok.: %v", i, r)
			}
		}
		return nil
	})
	if p := up.sourcePorts(); p <= upstreamSockets || p > before+2*upstreamSockets {
		t.Errorf("5,000 forwarded queries came from %d source ports (%d before), want sockets reused and replaced every %d queries", p, before, socketQueries)
	}
}
