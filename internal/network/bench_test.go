package network

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// BenchmarkAttach: tap from a warm pool + lease + rules, i.e. what
// networking adds to a VM create. Detach runs outside the timer.
func BenchmarkAttach(b *testing.B) {
	host := newNS(b)
	m, st := newManager(b, host, b.TempDir(), 2)
	defer st.Close()
	defer teardown(b, host, m)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		waitFor(b, "pool", func() bool { return m.PoolLen() == 2 })
		id := fmt.Sprint("bench", i)
		b.StartTimer()
		if _, err := m.Attach(ctx, id, EgressNAT); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := m.Detach(ctx, id); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkDNSQuery: one A query for NAME.vm over UDP on loopback.
func BenchmarkDNSQuery(b *testing.B) {
	host := newNS(b)
	m, st := newManager(b, host, b.TempDir(), -1)
	defer st.Close()
	defer teardown(b, host, m)
	srv, err := m.StartDNS(context.Background(), DNSOptions{
		Lookup:    func(n string) (netip.Addr, bool) { return netip.MustParseAddr("172.30.0.9"), n == "dev" },
		Upstreams: []string{},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	host.do(b, func() error {
		c := &dns.Client{Timeout: 2 * time.Second}
		conn, err := c.Dial("127.0.0.1:42069")
		if err != nil {
			return err
		}
		defer conn.Close()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, _, err := c.ExchangeWithConn(new(dns.Msg).SetQuestion("dev.vm.", dns.TypeA), conn); err != nil {
				return err
			}
		}
		return nil
	})
}
