package network

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netns"

	"github.com/banger-sh/banger/internal/errdefs"
)

// PortForward is a userspace TCP proxy from a host address to a guest
// address. Close stops it and cuts the connections it carries.
type PortForward struct {
	ln    net.Listener
	guest netip.AddrPort
	ns    netns.NsHandle
	log   *slog.Logger

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

var _ io.Closer = (*PortForward)(nil)

// Forward listens on host (TCP; port 0 picks one) and relays each
// connection to guest. The daemon keeps the returned forward for the VM's
// life and closes it when the VM stops or is deleted.
func (m *Manager) Forward(ctx context.Context, host, guest netip.AddrPort) (*PortForward, error) {
	return forward(ctx, m.o.NetNS, m.o.Logger, host, guest)
}

func forward(ctx context.Context, ns netns.NsHandle, log *slog.Logger, host, guest netip.AddrPort) (*PortForward, error) {
	if !host.Addr().IsValid() || !guest.IsValid() || guest.Port() == 0 {
		return nil, errdefs.InvalidArgument(fmt.Sprintf("port forward %s -> %s: need host address and guest address:port", host, guest))
	}
	f := &PortForward{guest: guest, ns: ns, log: log, conns: map[net.Conn]struct{}{}}
	err := inNS(ns, func() error {
		var err error
		f.ln, err = (&net.ListenConfig{}).Listen(ctx, "tcp", host.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("port forward %s -> %s: %w", host, guest, err)
	}
	f.wg.Add(1)
	go f.serve()
	log.Info("port forward started", "host", f.ln.Addr().String(), "guest", guest)
	return f, nil
}

// Addr is the listening address (with the port picked when 0 was asked).
func (f *PortForward) Addr() netip.AddrPort {
	return f.ln.Addr().(*net.TCPAddr).AddrPort()
}

// Guest is the address connections are relayed to.
func (f *PortForward) Guest() netip.AddrPort { return f.guest }

// Close stops listening and closes every relayed connection.
func (f *PortForward) Close() error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	err := f.ln.Close()
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
	return err
}

func (f *PortForward) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		c.Close()
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *PortForward) untrack(c net.Conn) {
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
	c.Close()
}

func (f *PortForward) serve() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			f.log.Warn("port forward accept", "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if !f.track(c) {
			return
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer f.untrack(c)
			f.relay(c)
		}()
	}
}

func (f *PortForward) relay(c net.Conn) {
	var g net.Conn
	err := inNS(f.ns, func() error {
		var err error
		g, err = net.DialTimeout("tcp", f.guest.String(), 5*time.Second)
		return err
	})
	if err != nil {
		f.log.Debug("port forward: dial guest", "guest", f.guest, "err", err)
		return
	}
	if !f.track(g) {
		return
	}
	defer f.untrack(g)
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite() // pass the half-close on
		}
		done <- struct{}{}
	}
	go pipe(g, c)
	go pipe(c, g)
	<-done
	<-done
}

// ParseForwardSpec parses "[HOST_ADDR:]HOST_PORT:GUEST_PORT" (HOST_ADDR
// defaults to 127.0.0.1; an IPv6 host address goes in brackets).
func ParseForwardSpec(spec string) (host netip.AddrPort, guestPort uint16, err error) {
	bad := func(why string) (netip.AddrPort, uint16, error) {
		return netip.AddrPort{}, 0, errdefs.InvalidArgument(fmt.Sprintf("port forward %q: %s (want [HOST_ADDR:]HOST_PORT:GUEST_PORT)", spec, why))
	}
	i := strings.LastIndex(spec, ":")
	if i < 0 {
		return bad("missing guest port")
	}
	gp, perr := strconv.ParseUint(spec[i+1:], 10, 16)
	if perr != nil || gp == 0 {
		return bad("bad guest port")
	}
	left := spec[:i]
	addr := netip.MustParseAddr("127.0.0.1")
	portStr := left
	if j := strings.LastIndex(left, ":"); j >= 0 {
		a, aerr := netip.ParseAddr(strings.Trim(left[:j], "[]"))
		if aerr != nil {
			return bad("bad host address")
		}
		addr, portStr = a, left[j+1:]
	}
	hp, perr := strconv.ParseUint(portStr, 10, 16)
	if perr != nil {
		return bad("bad host port")
	}
	return netip.AddrPortFrom(addr, uint16(hp)), uint16(gp), nil
}
