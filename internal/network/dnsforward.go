package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netns"
)

// Forwarding is bounded, whoever asks and however fast:
//
//   - at most DNSOptions.MaxForwardsPerClient (default 16) forwarded
//     queries in flight per client address and MaxForwards (256) in all;
//     a query beyond either is answered SERVFAIL at once (and a warning
//     logged, at most once a minute per client) instead of waiting;
//   - at most MaxTCPPerClient (8) open TCP connections per client and
//     MaxTCP (64) in all; a connection beyond either is closed on accept;
//   - queries go upstream over a few long-lived UDP sockets per upstream
//     (upstreamSockets), each carrying many queries at once, told apart by
//     a random id and checked against the question; a socket is replaced
//     after socketQueries queries, so that its port does not stay
//     predictable. Over TCP (a client on TCP whose answer came back
//     truncated) each query dials its own connection, within the limits
//     above.
//
// So a guest flooding the DNS port costs the daemon a bounded number of
// goroutines and file descriptors (see TestDNSFloodBounded), and the other
// clients keep their share.
const (
	defaultMaxForwardsPerClient = 16
	defaultMaxForwards          = 256
	defaultMaxTCPPerClient      = 8
	defaultMaxTCP               = 64
	upstreamSockets             = 4
	socketQueries               = 1024
	forwardTimeout              = 4 * time.Second
)

// limiter counts what is in use per client and in all.
type limiter struct {
	mu                      sync.Mutex
	per                     map[netip.Addr]int
	total, perMax, totalMax int
}

func newLimiter(perMax, totalMax int) *limiter {
	return &limiter{per: map[netip.Addr]int{}, perMax: perMax, totalMax: totalMax}
}

func (l *limiter) acquire(c netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.total >= l.totalMax || l.per[c] >= l.perMax {
		return false
	}
	l.per[c]++
	l.total++
	return true
}

func (l *limiter) release(c netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.per[c]--; l.per[c] <= 0 {
		delete(l.per, c)
	}
	l.total--
}

// warnLimiter logs a warning per client at most once a minute.
type warnLimiter struct {
	mu   sync.Mutex
	last map[netip.Addr]time.Time
}

func (w *warnLimiter) allow(c netip.Addr) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.last == nil || len(w.last) > 1024 {
		w.last = map[netip.Addr]time.Time{}
	}
	if t, ok := w.last[c]; ok && time.Since(t) < time.Minute {
		return false
	}
	w.last[c] = time.Now()
	return true
}

// limitedListener closes, on accept, the connections over a limiter.
type limitedListener struct {
	net.Listener
	lim  *limiter
	over func(netip.Addr)
}

func (l *limitedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		a := netip.Addr{}
		if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
			a, _ = netip.AddrFromSlice(ta.IP)
			a = a.Unmap()
		}
		if !l.lim.acquire(a) {
			c.Close()
			l.over(a)
			continue
		}
		return &limitedConn{Conn: c, release: func() { l.lim.release(a) }}, nil
	}
}

type limitedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// upstream forwards queries to one resolver.
type upstream struct {
	addr string
	ns   netns.NsHandle
	log  *slog.Logger

	mu     sync.Mutex
	socks  []*upSock
	next   int
	closed bool
}

// upSock is one UDP socket to an upstream and the queries waiting on it.
type upSock struct {
	conn *net.UDPConn

	mu      sync.Mutex
	pending map[uint16]*waiter
	uses    int
	retired bool // out of the pool: closed once nothing waits on it
	dead    bool // closed
}

type waiter struct {
	q  dns.Question
	ch chan *dns.Msg // buffered, 1
}

// sock picks a socket of the pool, opening one when the pool is not full
// yet and retiring one that has carried socketQueries queries.
func (u *upstream) sock() (*upSock, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil, net.ErrClosed
	}
	if len(u.socks) < upstreamSockets {
		s, err := u.open()
		if err != nil {
			return nil, err
		}
		u.socks = append(u.socks, s)
		return s, nil
	}
	u.next = (u.next + 1) % len(u.socks)
	s := u.socks[u.next]
	s.mu.Lock()
	s.uses++
	worn := s.uses >= socketQueries || s.dead
	if worn {
		s.retired = true
		if len(s.pending) == 0 && !s.dead {
			s.dead = true
			s.conn.Close()
		}
	}
	s.mu.Unlock()
	if !worn {
		return s, nil
	}
	ns, err := u.open()
	if err != nil {
		u.socks = append(u.socks[:u.next], u.socks[u.next+1:]...)
		return nil, err
	}
	u.socks[u.next] = ns
	return ns, nil
}

func (u *upstream) open() (*upSock, error) {
	var c net.Conn
	err := inNS(u.ns, func() error {
		var err error
		c, err = net.Dial("udp", u.addr)
		return err
	})
	if err != nil {
		return nil, err
	}
	s := &upSock{conn: c.(*net.UDPConn), pending: map[uint16]*waiter{}, uses: 1}
	go s.read()
	return s, nil
}

// read delivers each answer to the query waiting for it (same id and
// question) and drops everything else.
func (s *upSock) read() {
	buf := make([]byte, dns.MaxMsgSize)
	for {
		n, err := s.conn.Read(buf)
		if err != nil {
			if errors.Is(err, syscall.ECONNREFUSED) { // an ICMP error for an earlier query
				continue
			}
			s.mu.Lock()
			s.dead = true
			s.conn.Close()
			for id, w := range s.pending {
				close(w.ch)
				delete(s.pending, id)
			}
			s.mu.Unlock()
			return
		}
		m := new(dns.Msg)
		if m.Unpack(buf[:n]) != nil || !m.Response || len(m.Question) != 1 {
			continue
		}
		s.mu.Lock()
		if w, ok := s.pending[m.Id]; ok && sameQuestion(w.q, m.Question[0]) {
			delete(s.pending, m.Id)
			w.ch <- m
		}
		s.mu.Unlock()
	}
}

func sameQuestion(a, b dns.Question) bool {
	return a.Qtype == b.Qtype && a.Qclass == b.Qclass && strings.EqualFold(a.Name, b.Name)
}

// register reserves a random id not in use on the socket.
func (s *upSock) register(q dns.Question) (uint16, *waiter, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dead {
		return 0, nil, net.ErrClosed
	}
	for i := 0; i < 64; i++ {
		id := uint16(rand.Uint32())
		if _, busy := s.pending[id]; !busy {
			w := &waiter{q: q, ch: make(chan *dns.Msg, 1)}
			s.pending[id] = w
			return id, w, nil
		}
	}
	return 0, nil, errors.New("dns: no free query id")
}

func (s *upSock) unregister(id uint16, w *waiter) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pending[id] == w {
		delete(s.pending, id)
	}
	if s.retired && len(s.pending) == 0 && !s.dead {
		s.dead = true
		s.conn.Close()
	}
}

// exchangeUDP sends r over a pooled socket and waits for its answer.
func (u *upstream) exchangeUDP(ctx context.Context, r *dns.Msg) (*dns.Msg, error) {
	s, err := u.sock()
	if err != nil {
		return nil, err
	}
	id, w, err := s.register(r.Question[0])
	if err != nil {
		return nil, err
	}
	defer s.unregister(id, w)
	q := r.Copy()
	q.Id = id
	b, err := q.Pack()
	if err != nil {
		return nil, err
	}
	if _, err := s.conn.Write(b); err != nil {
		return nil, err
	}
	select {
	case m, ok := <-w.ch:
		if !ok {
			return nil, net.ErrClosed
		}
		m.Id = r.Id
		return m, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// exchangeTCP sends r over a connection of its own.
func (u *upstream) exchangeTCP(ctx context.Context, r *dns.Msg) (*dns.Msg, error) {
	var conn net.Conn
	err := inNS(u.ns, func() error {
		var err error
		conn, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, "tcp", u.addr)
		return err
	})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	resp, _, err := (&dns.Client{Net: "tcp", Timeout: 2 * time.Second}).ExchangeWithConnContext(ctx, r, &dns.Conn{Conn: conn})
	if err != nil {
		return nil, err
	}
	resp.Id = r.Id
	return resp, nil
}

func (u *upstream) close() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.closed = true
	for _, s := range u.socks {
		s.mu.Lock()
		if !s.dead {
			s.dead = true
			s.conn.Close()
		}
		s.mu.Unlock()
	}
	u.socks = nil
}

// overLimit answers a query over the client's forwarding limit.
func (s *DNSServer) overLimit(client netip.Addr, r *dns.Msg) *dns.Msg {
	if s.warned.allow(client) {
		s.o.Logger.Warn("dns: client over its limit of forwarded queries in flight: answering SERVFAIL", "client", client, "limit", s.o.MaxForwardsPerClient)
	}
	return new(dns.Msg).SetRcode(r, dns.RcodeServerFailure)
}

// forward asks each upstream in turn: over UDP, then over TCP when a TCP
// client's answer came back truncated. The caller holds a slot of s.fwd.
func (s *DNSServer) forward(r *dns.Msg, tcp bool) *dns.Msg {
	ctx, cancel := context.WithTimeout(context.Background(), forwardTimeout)
	defer cancel()
	var lastErr error
	for _, up := range s.ups {
		uctx, ucancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := up.exchangeUDP(uctx, r)
		if err == nil && resp.Truncated && tcp {
			resp, err = up.exchangeTCP(uctx, r)
		}
		ucancel()
		if err != nil {
			lastErr = fmt.Errorf("%s: %w", up.addr, err)
			continue
		}
		return resp
	}
	s.o.Logger.Debug("dns: forward failed", "name", r.Question[0].Name, "err", lastErr)
	return new(dns.Msg).SetRcode(r, dns.RcodeServerFailure)
}

// UDP is served by a fixed set of udpWorkers goroutines fed by one reader
// through a queue of udpQueue packets (a packet that finds it full is
// dropped, as a busy resolver would); a query to forward gets a goroutine
// of its own only when it gets a slot of s.fwd, so the goroutines of a
// flood are bounded by the limits, not by its rate.
const (
	udpWorkers = 8
	udpQueue   = 256
)

type udpPacket struct {
	b    []byte
	from net.Addr
}

func (s *DNSServer) serveUDP(pc net.PacketConn) {
	q := make(chan udpPacket, udpQueue)
	var wg sync.WaitGroup
	for range udpWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range q {
				s.handleUDP(pc, p)
			}
		}()
	}
	defer wg.Wait()
	defer close(q)
	buf := make([]byte, dns.MaxMsgSize)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		select {
		case q <- udpPacket{b: append([]byte(nil), buf[:n]...), from: from}:
		default:
		}
	}
}

func (s *DNSServer) handleUDP(pc net.PacketConn, p udpPacket) {
	r := new(dns.Msg)
	if err := r.Unpack(p.b); err != nil || r.Response {
		return // no answer to garbage: any answer could be used to amplify
	}
	client := netip.Addr{}
	if ua, ok := p.from.(*net.UDPAddr); ok {
		client, _ = netip.AddrFromSlice(ua.IP)
		client = client.Unmap()
	}
	resp, fwd := s.answer(client, r)
	if !fwd {
		s.writeUDP(pc, p.from, r, resp)
		return
	}
	if !s.fwd.acquire(client) {
		s.writeUDP(pc, p.from, r, s.overLimit(client, r))
		return
	}
	s.fwdWG.Add(1)
	go func() {
		defer s.fwdWG.Done()
		defer s.fwd.release(client)
		s.writeUDP(pc, p.from, r, s.forward(r, false))
	}()
}

// writeUDP sends resp, truncated to what the client said it takes.
func (s *DNSServer) writeUDP(pc net.PacketConn, to net.Addr, r, resp *dns.Msg) {
	size := dns.MinMsgSize
	if o := r.IsEdns0(); o != nil {
		size = max(int(o.UDPSize()), dns.MinMsgSize)
	}
	resp.Truncate(size)
	b, err := resp.Pack()
	if err != nil {
		s.o.Logger.Debug("dns: pack answer", "err", err)
		return
	}
	if _, err := pc.WriteTo(b, to); err != nil {
		s.o.Logger.Debug("dns: write answer", "err", err)
	}
}
