package network

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netns"
)

// DNSOptions configure banger's DNS server.
type DNSOptions struct {
	Domain string           // VM names answer as NAME.Domain; default "vm"
	Listen []netip.AddrPort // UDP and TCP on each
	// Lookup maps a VM name (lower case, without the domain) to its address.
	Lookup func(name string) (netip.Addr, bool)
	// Reverse maps a VM address to its name (without the domain).
	Reverse func(addr netip.Addr) (string, bool)
	// Subnet is the guests' subnet: PTR queries inside it are answered
	// here, never forwarded.
	Subnet netip.Prefix
	// Recursion reports whether a client may have other names resolved
	// through Upstreams. nil: loopback clients only.
	Recursion func(client netip.Addr) bool
	// Upstreams are "ip:port" resolvers for other names; nil: the
	// nameservers of /etc/resolv.conf.
	Upstreams []string
	TTL       uint32 // of answers, default 5 s (VMs come and go)
	// Limits of forwarding (dnsforward.go); 0: the defaults, 16, 256, 8
	// and 64.
	MaxForwardsPerClient, MaxForwards int // forwarded queries in flight
	MaxTCPPerClient, MaxTCP           int // open TCP connections
	Logger                            *slog.Logger
	NetNS                             netns.NsHandle // listen (and forward) in this namespace; 0: own
}

// DNSServer answers NAME.DOMAIN for VMs, PTR for their addresses, and
// forwards other names for clients allowed to use the host's resolvers.
type DNSServer struct {
	o       DNSOptions
	zone    string // "vm."
	soa     *dns.SOA
	servers []*dns.Server
	addrs   []net.Addr
	wg      sync.WaitGroup

	pcs               []net.PacketConn // UDP, served by serveUDP
	fwdWG             sync.WaitGroup   // forwards of UDP queries in flight
	ups               []*upstream
	fwd               *limiter // forwarded queries in flight
	tcp               *limiter // open TCP connections
	warned, warnedTCP warnLimiter
}

// StartDNS starts a DNS server with m's subnet, domain, namespace and
// egress policy: loopback clients and guests with nat or shared egress get
// other names forwarded; guests with none get only VM names. The port is
// Options.DNSPort; Listen defaults to the bridge address and 127.0.0.1.
func (m *Manager) StartDNS(ctx context.Context, o DNSOptions) (*DNSServer, error) {
	if o.Domain == "" {
		o.Domain = m.o.Domain
	}
	if len(o.Listen) == 0 {
		p := uint16(m.o.DNSPort)
		o.Listen = []netip.AddrPort{netip.AddrPortFrom(m.gw, p), netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), p)}
	}
	if !o.Subnet.IsValid() {
		o.Subnet = m.o.Subnet
	}
	if o.Recursion == nil {
		o.Recursion = func(c netip.Addr) bool {
			if c.IsLoopback() || c == m.gw { // the host itself
				return true
			}
			l, ok := m.LeaseByAddr(c)
			return ok && l.Egress.out()
		}
	}
	if o.Logger == nil {
		o.Logger = m.o.Logger
	}
	if o.NetNS == 0 {
		o.NetNS = m.o.NetNS
	}
	return StartDNS(ctx, o)
}

// StartDNS listens on every address of o.Listen (UDP and TCP) and serves
// until Close.
func StartDNS(ctx context.Context, o DNSOptions) (*DNSServer, error) {
	if o.Domain == "" {
		o.Domain = "vm"
	}
	if o.TTL == 0 {
		o.TTL = 5
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Lookup == nil {
		o.Lookup = func(string) (netip.Addr, bool) { return netip.Addr{}, false }
	}
	if o.Reverse == nil {
		o.Reverse = func(netip.Addr) (string, bool) { return "", false }
	}
	if o.Recursion == nil {
		o.Recursion = func(c netip.Addr) bool { return c.IsLoopback() }
	}
	if o.Upstreams == nil {
		o.Upstreams = ResolvConfServers("/etc/resolv.conf")
	}
	for _, p := range []*int{&o.MaxForwardsPerClient, &o.MaxForwards, &o.MaxTCPPerClient, &o.MaxTCP} {
		if *p < 0 {
			return nil, fmt.Errorf("dns: negative limit")
		}
	}
	o.MaxForwardsPerClient = cmp.Or(o.MaxForwardsPerClient, defaultMaxForwardsPerClient)
	o.MaxForwards = cmp.Or(o.MaxForwards, defaultMaxForwards)
	o.MaxTCPPerClient = cmp.Or(o.MaxTCPPerClient, defaultMaxTCPPerClient)
	o.MaxTCP = cmp.Or(o.MaxTCP, defaultMaxTCP)
	zone := dns.Fqdn(strings.ToLower(o.Domain))
	s := &DNSServer{o: o, zone: zone, soa: &dns.SOA{
		Hdr:     dns.RR_Header{Name: zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: o.TTL},
		Ns:      "ns." + zone,
		Mbox:    "hostmaster." + zone,
		Serial:  1,
		Refresh: 3600, Retry: 600, Expire: 86400, Minttl: o.TTL,
	}}
	s.fwd = newLimiter(o.MaxForwardsPerClient, o.MaxForwards)
	s.tcp = newLimiter(o.MaxTCPPerClient, o.MaxTCP)
	for _, up := range o.Upstreams {
		s.ups = append(s.ups, &upstream{addr: up, ns: o.NetNS, log: o.Logger})
	}
	err := inNS(o.NetNS, func() error {
		for _, ap := range o.Listen {
			pc, err := net.ListenPacket("udp", ap.String())
			if err != nil {
				return fmt.Errorf("dns: listen udp %s: %w", ap, err)
			}
			s.addrs = append(s.addrs, pc.LocalAddr())
			s.pcs = append(s.pcs, pc)
			ln, err := net.Listen("tcp", ap.String())
			if err != nil {
				return fmt.Errorf("dns: listen tcp %s: %w", ap, err)
			}
			s.addrs = append(s.addrs, ln.Addr())
			ln = &limitedListener{Listener: ln, lim: s.tcp, over: func(c netip.Addr) {
				if s.warnedTCP.allow(c) {
					o.Logger.Warn("dns: client over its limit of TCP connections: closing new ones", "client", c, "limit", o.MaxTCPPerClient)
				}
			}}
			s.servers = append(s.servers, &dns.Server{Listener: ln, Handler: s,
				ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second, IdleTimeout: func() time.Duration { return 10 * time.Second }})
		}
		return nil
	})
	if err != nil {
		s.close()
		return nil, err
	}
	for _, pc := range s.pcs {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveUDP(pc)
		}()
	}
	for _, srv := range s.servers {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := srv.ActivateAndServe(); err != nil && !errors.Is(err, net.ErrClosed) {
				o.Logger.Warn("dns server stopped", "err", err)
			}
		}()
	}
	o.Logger.Info("dns listening", "domain", o.Domain, "addrs", fmt.Sprint(s.addrs))
	return s, nil
}

// Addrs are the bound addresses (UDP, TCP for each Listen entry).
func (s *DNSServer) Addrs() []net.Addr { return s.addrs }

// Close stops the server.
func (s *DNSServer) Close() error {
	s.close()
	s.wg.Wait()
	s.fwdWG.Wait()
	return nil
}

func (s *DNSServer) close() {
	for _, u := range s.ups {
		u.close()
	}
	for _, pc := range s.pcs {
		pc.Close()
	}
	for _, srv := range s.servers {
		if err := srv.Shutdown(); err != nil {
			// Not started: close the sockets ourselves.
			if srv.PacketConn != nil {
				srv.PacketConn.Close()
			}
			if srv.Listener != nil {
				srv.Listener.Close()
			}
		}
	}
}

func clientAddr(w dns.ResponseWriter) netip.Addr {
	switch a := w.RemoteAddr().(type) {
	case *net.UDPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap()
	}
	return netip.Addr{}
}

// ServeDNS implements dns.Handler (TCP; UDP is served by serveUDP). A
// connection carries one query at a time, so a forward waits here.
func (s *DNSServer) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	client := clientAddr(w)
	resp, fwd := s.answer(client, r)
	if fwd {
		if !s.fwd.acquire(client) {
			resp = s.overLimit(client, r)
		} else {
			resp = s.forward(r, true)
			s.fwd.release(client)
		}
	}
	if err := w.WriteMsg(resp); err != nil {
		s.o.Logger.Debug("dns: write answer", "err", err)
	}
}

// answer answers r from the zone, or says it is to be forwarded (fwd,
// with resp nil).
func (s *DNSServer) answer(client netip.Addr, r *dns.Msg) (resp *dns.Msg, fwd bool) {
	m := new(dns.Msg)
	if r.Opcode != dns.OpcodeQuery || len(r.Question) != 1 {
		return m.SetRcode(r, dns.RcodeNotImplemented), false
	}
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	recursion := s.o.Recursion(client)
	m.SetReply(r)
	m.RecursionAvailable = recursion
	if q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY {
		return m.SetRcode(r, dns.RcodeRefused), false
	}
	if dns.IsSubDomain(s.zone, name) {
		return s.zoneAnswer(m, q, name), false
	}
	if a, ok := ptrAddr(name); ok && s.o.Subnet.Contains(a) {
		return s.ptrAnswer(m, q, a), false
	}
	if !recursion || len(s.o.Upstreams) == 0 {
		return m.SetRcode(r, dns.RcodeRefused), false
	}
	return nil, true
}

func (s *DNSServer) zoneAnswer(m *dns.Msg, q dns.Question, name string) *dns.Msg {
	m.Authoritative = true
	if name == s.zone {
		if q.Qtype == dns.TypeSOA {
			m.Answer = append(m.Answer, s.soa)
		} else {
			m.Ns = append(m.Ns, s.soa)
		}
		return m
	}
	label := strings.TrimSuffix(name, "."+s.zone)
	addr, ok := netip.Addr{}, false
	if !strings.Contains(label, ".") {
		addr, ok = s.o.Lookup(label)
	}
	if !ok {
		m.Rcode = dns.RcodeNameError
		m.Ns = append(m.Ns, s.soa)
		return m
	}
	switch {
	case (q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY) && addr.Is4():
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: s.o.TTL}, A: addr.AsSlice()})
	case (q.Qtype == dns.TypeAAAA || q.Qtype == dns.TypeANY) && addr.Is6():
		m.Answer = append(m.Answer, &dns.AAAA{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: s.o.TTL}, AAAA: addr.AsSlice()})
	default: // the name exists, with no record of this type (NODATA)
		m.Ns = append(m.Ns, s.soa)
	}
	return m
}

func (s *DNSServer) ptrAnswer(m *dns.Msg, q dns.Question, a netip.Addr) *dns.Msg {
	m.Authoritative = true
	n, ok := s.o.Reverse(a)
	if !ok {
		m.Rcode = dns.RcodeNameError
		return m
	}
	if q.Qtype == dns.TypePTR || q.Qtype == dns.TypeANY {
		m.Answer = append(m.Answer, &dns.PTR{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: s.o.TTL}, Ptr: dns.Fqdn(strings.ToLower(n)) + s.zone})
	}
	return m
}

// ptrAddr parses d.c.b.a.in-addr.arpa.
func ptrAddr(name string) (netip.Addr, bool) {
	rest, ok := strings.CutSuffix(name, ".in-addr.arpa.")
	if !ok {
		return netip.Addr{}, false
	}
	p := strings.Split(rest, ".")
	if len(p) != 4 {
		return netip.Addr{}, false
	}
	a, err := netip.ParseAddr(p[3] + "." + p[2] + "." + p[1] + "." + p[0])
	return a, err == nil
}

// ResolvConfServers lists the nameservers of a resolv.conf as "ip:53".
func ResolvConfServers(path string) []string {
	f, err := os.Open(path)
	if err != nil {
		return []string{}
	}
	defer f.Close()
	out := []string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 2 || fs[0] != "nameserver" {
			continue
		}
		if a, err := netip.ParseAddr(fs[1]); err == nil {
			out = append(out, netip.AddrPortFrom(a, 53).String())
		}
	}
	return out
}
