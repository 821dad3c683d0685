package network

import (
	"context"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// capturePC is the UDP socket the DNS handler answers on: it keeps what
// is written.
type capturePC struct {
	net.PacketConn
	mu  sync.Mutex
	out [][]byte
}

func (c *capturePC) WriteTo(b []byte, _ net.Addr) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.out = append(c.out, append([]byte(nil), b...))
	return len(b), nil
}

// garbageUpstream is a resolver on 127.0.0.1 that answers every query
// first with the bytes in garbage (given the query's id), then correctly
// (an empty NOERROR reply), and counts the queries it got.
type garbageUpstream struct {
	pc      net.PacketConn
	garbage atomic.Pointer[[]byte]
	queries atomic.Int64
}

func startGarbageUpstream(t testing.TB) *garbageUpstream {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &garbageUpstream{pc: pc}
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			u.queries.Add(1)
			q := new(dns.Msg)
			if q.Unpack(buf[:n]) != nil {
				continue
			}
			if g := u.garbage.Load(); g != nil && len(*g) > 0 {
				b := append([]byte(nil), *g...)
				if len(b) >= 2 {
					b[0], b[1] = byte(q.Id>>8), byte(q.Id)
				}
				pc.WriteTo(b, from)
			}
			if b, err := new(dns.Msg).SetReply(q).Pack(); err == nil {
				pc.WriteTo(b, from)
			}
		}
	}()
	t.Cleanup(func() { pc.Close() })
	return u
}

// FuzzDNSQuery feeds banger's DNS handler a raw UDP packet from a client
// that may forward (loopback) or may not (a guest with egress none), with
// an upstream that first answers garbage. Properties: no panic; garbage
// and responses get no answer (no amplification); a query gets exactly
// one answer, with its id, that unpacks and fits the size the client
// said it takes; a client that may not forward never reaches the
// upstream; and goroutines do not pile up.
func FuzzDNSQuery(f *testing.F) {
	up := startGarbageUpstream(f)
	s, err := StartDNS(context.Background(), DNSOptions{
		Listen:    []netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:0")},
		Subnet:    netip.MustParsePrefix("172.30.0.0/24"),
		Upstreams: []string{up.pc.LocalAddr().String()},
		Lookup: func(n string) (netip.Addr, bool) {
			return netip.MustParseAddr("172.30.0.2"), n == "dev"
		},
		Reverse: func(a netip.Addr) (string, bool) { return "dev", a == netip.MustParseAddr("172.30.0.2") },
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	q, _ := new(dns.Msg).SetQuestion("dev.vm.", dns.TypeA).Pack()
	f.Add(q, []byte{}, true)
	f.Fuzz(func(t *testing.T, pkt, garbage []byte, loopback bool) {
		before := runtime.NumGoroutine()
		up.garbage.Store(&garbage)
		from := &net.UDPAddr{IP: net.ParseIP("172.30.0.9"), Port: 5353}
		if loopback {
			from.IP = net.ParseIP("127.0.0.1")
		}
		pc := &capturePC{}
		queries := up.queries.Load()
		start := time.Now()
		s.handleUDP(pc, udpPacket{b: pkt, from: from})
		s.fwdWG.Wait()
		if d := time.Since(start); d > forwardTimeout+time.Second {
			t.Fatalf("the answer took %s", d)
		}
		r := new(dns.Msg)
		if err := r.Unpack(pkt); err != nil || r.Response {
			if len(pc.out) != 0 {
				t.Fatalf("answered a packet that is not a query (%v)", err)
			}
			return
		}
		if len(pc.out) != 1 {
			t.Fatalf("%d answers to one query", len(pc.out))
		}
		size := dns.MinMsgSize
		if o := r.IsEdns0(); o != nil {
			size = max(int(o.UDPSize()), dns.MinMsgSize)
		}
		a := new(dns.Msg)
		if err := a.Unpack(pc.out[0]); err != nil {
			// Truncate may cut inside the last record; the header must still
			// be a response to this query.
			if len(pc.out[0]) < 12 {
				t.Fatalf("answer of %d bytes does not unpack: %v", len(pc.out[0]), err)
			}
			a.Id = uint16(pc.out[0][0])<<8 | uint16(pc.out[0][1])
			a.Response = pc.out[0][2]&0x80 != 0
		}
		if a.Id != r.Id || !a.Response {
			t.Fatalf("answer id %d response %v, query id %d", a.Id, a.Response, r.Id)
		}
		if len(pc.out[0]) > size {
			t.Fatalf("answer of %d bytes, client takes %d", len(pc.out[0]), size)
		}
		if !loopback && up.queries.Load() != queries {
			t.Fatalf("a client that may not forward reached the upstream")
		}
		// Generous: on a loaded host (make test runs packages side by
		// side) the forwarder's goroutines take a while to end; a pile-up
		// never settles.
		deadline := time.Now().Add(10 * time.Second)
		for runtime.NumGoroutine() > before+2 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before+2 {
			t.Fatalf("%d goroutines after a query, %d before", n, before)
		}
	})
}
