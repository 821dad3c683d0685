package network

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sort"
	"strings"
	"testing"
	"time"
)

func TestPortForward(t *testing.T) {
	host := newNS(t)
	m, st := newManager(t, host, t.TempDir(), -1)
	defer st.Close()
	defer teardown(t, host, m)
	ctx := context.Background()
	g := addGuest(t, host, m, "web", EgressNone)

	// An HTTP server in the guest.
	var ln net.Listener
	g.ns.do(t, func() error {
		var err error
		ln, err = net.Listen("tcp", ":8000")
		return err
	})
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "from guest, path %s, peer %s\n", r.URL.Path, strings.Split(r.RemoteAddr, ":")[0])
	})}
	go hs.Serve(ln)
	defer hs.Close()

	fw, err := m.Forward(ctx, netip.MustParseAddrPort("127.0.0.1:0"), netip.AddrPortFrom(g.lease.Addr, 8000))
	if err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("http://%s/x", fw.Addr())
	want := "from guest, path /x, peer 172.30.0.1\n"
	if out := host.exec(t, "curl", "-sS", "--max-time", "5", url); out != want {
		t.Fatalf("curl: %q, want %q", out, want)
	}
	// Go client, many requests over keep-alive and fresh connections.
	var lat []time.Duration
	func() {
		// The transport dials from its own goroutines: enter the namespace there.
		tr := &http.Transport{DialContext: func(ctx context.Context, netw, addr string) (net.Conn, error) {
			var c net.Conn
			err := inNS(host.H, func() error {
				var err error
				c, err = (&net.Dialer{}).DialContext(ctx, netw, addr)
				return err
			})
			return c, err
		}}
		defer tr.CloseIdleConnections()
		c := &http.Client{Timeout: 5 * time.Second, Transport: tr}
		for i := 0; i < 50; i++ {
			if i%2 == 1 {
				tr.CloseIdleConnections() // half the requests on fresh connections
			}
			t0 := time.Now()
			resp, err := c.Get(url)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			lat = append(lat, time.Since(t0))
			if string(b) != want {
				t.Fatalf("go client: %q", b)
			}
		}
	}()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("HTTP GET through the forward: p50 %v", lat[len(lat)/2])

	// A large upload and download pass through intact (half-close too).
	var echoLn net.Listener
	g.ns.do(t, func() error {
		var err error
		echoLn, err = net.Listen("tcp", ":9000")
		return err
	})
	defer echoLn.Close()
	go func() {
		for {
			c, err := echoLn.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	fw2, err := m.Forward(ctx, netip.MustParseAddrPort("127.0.0.1:0"), netip.AddrPortFrom(g.lease.Addr, 9000))
	if err != nil {
		t.Fatal(err)
	}
	host.do(t, func() error {
		c, err := net.Dial("tcp", fw2.Addr().String())
		if err != nil {
			return err
		}
		defer c.Close()
		payload := strings.Repeat("0123456789abcdef", 1<<16) // 1 MiB
		go func() { io.WriteString(c, payload); c.(*net.TCPConn).CloseWrite() }()
		b, err := io.ReadAll(c)
		if err != nil || string(b) != payload {
			return fmt.Errorf("echo through forward: %d bytes, %v", len(b), err)
		}
		return nil
	})

	// Close stops listening: connections are refused.
	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	fw2.Close()
	host.do(t, func() error {
		if c, err := net.DialTimeout("tcp", fw.Addr().String(), time.Second); err == nil {
			c.Close()
			return fmt.Errorf("forward still listening after Close")
		}
		return nil
	})
}

// TestAttachCost measures what networking adds to a VM create: a tap from
// the pool, the lease in SQLite and the rules rebuild (the target
// is ≤ 20 ms); and Detach.
func TestAttachCost(t *testing.T) {
	host := newNS(t)
	m, st := newManager(t, host, t.TempDir(), 2)
	defer st.Close()
	defer teardown(t, host, m)
	ctx := context.Background()
	measure := func(label string, wait bool, n int) {
		var att, det []time.Duration
		var ids []string
		for i := 0; i < n; i++ {
			if wait {
				waitFor(t, "pool", func() bool { return m.PoolLen() == 2 })
			}
			id := fmt.Sprintf("%s-%d", label, i)
			t0 := time.Now()
			if _, err := m.Attach(ctx, id, EgressNAT); err != nil {
				t.Fatal(err)
			}
			att = append(att, time.Since(t0))
			ids = append(ids, id)
		}
		for _, id := range ids {
			t0 := time.Now()
			if err := m.Detach(ctx, id); err != nil {
				t.Fatal(err)
			}
			det = append(det, time.Since(t0))
		}
		sort.Slice(att, func(i, j int) bool { return att[i] < att[j] })
		sort.Slice(det, func(i, j int) bool { return det[i] < det[j] })
		t.Logf("%s: Attach p50 %v max %v; Detach p50 %v max %v (n=%d, up to %d VMs)", label,
			att[n/2], att[n-1], det[n/2], det[n-1], n, n)
		if att[n/2] > 20*time.Millisecond {
			t.Errorf("%s: Attach p50 %v exceeds 20 ms", label, att[n/2])
		}
	}
	measure("pool-warm", true, 30)
	measure("back-to-back", false, 30)
}
