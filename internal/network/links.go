package network

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ensureBridge creates the bridge if missing, gives it its fixed MAC and
// the gateway address, and sets it up.
func (m *Manager) ensureBridge() error {
	return m.do(func() error {
		name := m.o.BridgeName
		link, err := netlink.LinkByName(name)
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, HardwareAddr: bridgeMAC(name)}}
			if err := netlink.LinkAdd(br); err != nil {
				return fmt.Errorf("create bridge %s: %w", name, err)
			}
			m.o.Logger.Info("bridge created", "bridge", name)
			link, err = netlink.LinkByName(name)
		}
		if err != nil {
			return fmt.Errorf("bridge %s: %w", name, err)
		}
		if _, ok := link.(*netlink.Bridge); !ok {
			return fmt.Errorf("%s exists and is a %s, not a bridge", name, link.Type())
		}
		if link.Attrs().HardwareAddr.String() != bridgeMAC(name).String() {
			if err := netlink.LinkSetHardwareAddr(link, bridgeMAC(name)); err != nil {
				return fmt.Errorf("bridge %s: set mac: %w", name, err)
			}
		}
		want := &netlink.Addr{IPNet: &net.IPNet{IP: m.gw.AsSlice(), Mask: net.CIDRMask(m.o.Subnet.Bits(), 32)}}
		addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
		for i := 0; i < 10 && errors.Is(err, netlink.ErrDumpInterrupted); i++ {
			addrs, err = netlink.AddrList(link, netlink.FAMILY_V4)
		}
		if err != nil {
			return fmt.Errorf("bridge %s: list addresses: %w", name, err)
		}
		have := false
		for _, a := range addrs {
			if a.IPNet.String() == want.IPNet.String() {
				have = true
			}
		}
		if !have {
			if err := netlink.AddrAdd(link, want); err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("bridge %s: add address %s: %w", name, want.IPNet, err)
			}
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return fmt.Errorf("bridge %s: set up: %w", name, err)
		}
		return nil
	})
}

func (m *Manager) deleteBridge() error {
	return m.do(func() error {
		link, err := netlink.LinkByName(m.o.BridgeName)
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		if err != nil {
			return err
		}
		return netlink.LinkDel(link)
	})
}

// isTapName reports whether name is one of this manager's taps: the prefix
// followed by a decimal number.
func (m *Manager) isTapName(name string) bool {
	rest, ok := strings.CutPrefix(name, m.o.TapPrefix)
	if !ok || rest == "" {
		return false
	}
	_, err := strconv.Atoi(rest)
	return err == nil
}

// ListLinks lists the host's links (of the current network namespace);
// a dump that raced with a link change (another banger, a test making
// taps) is retried.
func ListLinks() ([]netlink.Link, error) {
	links, err := netlink.LinkList()
	for i := 0; i < 10 && errors.Is(err, netlink.ErrDumpInterrupted); i++ {
		links, err = netlink.LinkList()
	}
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	return links, nil
}

// listTaps lists the links named like this manager's taps.
func (m *Manager) listTaps() ([]string, error) {
	var out []string
	err := m.do(func() error {
		links, err := ListLinks()
		if err != nil {
			return err
		}
		for _, l := range links {
			if n := l.Attrs().Name; m.isTapName(n) {
				out = append(out, n)
			}
		}
		return nil
	})
	return out, err
}

// createTap creates a persistent tap named name, attached to the bridge
// (as an isolated port when isolated), up.
func (m *Manager) createTap(name string, isolated bool) error {
	return m.do(func() error {
		br, err := netlink.LinkByName(m.o.BridgeName)
		if err != nil {
			return fmt.Errorf("create tap %s: bridge %s: %w", name, m.o.BridgeName, err)
		}
		t := &netlink.Tuntap{
			LinkAttrs: netlink.LinkAttrs{Name: name},
			Mode:      netlink.TUNTAP_MODE_TAP,
			// TUN_EXCL: fail rather than attach to an existing device.
			Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_TUN_EXCL,
		}
		if err := netlink.LinkAdd(t); err != nil {
			return fmt.Errorf("create tap %s: %w", name, err)
		}
		if err := m.setupPort(t, br, isolated); err != nil {
			netlink.LinkDel(t)
			return fmt.Errorf("create tap %s: %w", name, err)
		}
		return nil
	})
}

// setupPort attaches link to the bridge, isolated (BR_ISOLATED) or not,
// and sets it up. Called in the namespace.
func (m *Manager) setupPort(link, br netlink.Link, isolated bool) error {
	if link.Attrs().MasterIndex != br.Attrs().Index {
		if err := netlink.LinkSetMaster(link, br); err != nil {
			return fmt.Errorf("attach to %s: %w", m.o.BridgeName, err)
		}
	}
	if err := netlink.LinkSetIsolated(link, isolated); err != nil {
		return fmt.Errorf("set port isolation %v: %w", isolated, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("set up: %w", err)
	}
	return nil
}

// ensureTap re-creates a leased tap that is missing, and makes sure an
// existing one is a port of the bridge, isolated as the lease's egress
// wants (Egress.isolated).
func (m *Manager) ensureTap(name string, egress Egress) error {
	missing := false
	err := m.do(func() error {
		link, err := netlink.LinkByName(name)
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			missing = true
			return nil
		}
		if err != nil {
			return err
		}
		br, err := netlink.LinkByName(m.o.BridgeName)
		if err != nil {
			return err
		}
		return m.setupPort(link, br, egress.isolated())
	})
	if err != nil {
		return fmt.Errorf("tap %s: %w", name, err)
	}
	if missing {
		m.o.Logger.Info("re-creating missing tap", "tap", name)
		return m.createTap(name, egress.isolated())
	}
	return nil
}

func (m *Manager) deleteTap(name string) error {
	return m.do(func() error {
		link, err := netlink.LinkByName(name)
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("delete tap %s: %w", name, err)
		}
		if err := netlink.LinkDel(link); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("delete tap %s: %w", name, err)
		}
		return nil
	})
}

// reserveTapName picks the lowest free tap name and marks it in flight.
func (m *Manager) reserveTapName() (string, error) {
	// List under the lock: a tap is in flight until its link exists, so a
	// name is always seen as either in flight or as a link.
	m.mu.Lock()
	defer m.mu.Unlock()
	existing, err := m.listTaps()
	if err != nil {
		return "", err
	}
	taken := map[string]bool{}
	for _, t := range existing {
		taken[t] = true
	}
	for _, t := range m.pool {
		taken[t] = true
	}
	for t := range m.inflight {
		taken[t] = true
	}
	for _, l := range m.leases {
		taken[l.Tap] = true
	}
	for i := 0; ; i++ {
		n := m.o.TapPrefix + strconv.Itoa(i)
		if len(n) > 15 {
			return "", fmt.Errorf("no tap name left with prefix %q", m.o.TapPrefix)
		}
		if !taken[n] {
			m.inflight[n] = true
			return n, nil
		}
	}
}

// newTap creates a tap under a fresh name. The name stays in m.inflight
// (held: Reconcile leaves it alone) until it moves to the pool or a lease,
// or is released.
func (m *Manager) newTap() (string, error) {
	name, err := m.reserveTapName()
	if err != nil {
		return "", err
	}
	if err := m.createTap(name, true); err != nil { // spare taps are isolated
		m.mu.Lock()
		delete(m.inflight, name)
		m.mu.Unlock()
		return "", err
	}
	return name, nil
}

// AcquireTap hands out a tap attached to the bridge: a spare one from the
// pool, or a new one when the pool is empty. The pool is refilled in the
// background.
func (m *Manager) AcquireTap(ctx context.Context) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	m.mu.Lock()
	var t string
	if n := len(m.pool); n > 0 {
		t, m.pool = m.pool[0], m.pool[1:]
		m.inflight[t] = true // held until leased or released
	}
	m.mu.Unlock()
	m.kickRefill()
	if t != "" {
		return t, nil
	}
	return m.newTap()
}

// ReleaseTap deletes a tap handed out by AcquireTap (taps are not reused:
// a fresh one has no state left by a previous guest).
func (m *Manager) ReleaseTap(ctx context.Context, tap string) error {
	err := m.deleteTap(tap)
	m.mu.Lock()
	delete(m.inflight, tap)
	m.mu.Unlock()
	return err
}

// PoolLen is the number of spare taps ready.
func (m *Manager) PoolLen() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.pool)
}

func (m *Manager) kickRefill() {
	select {
	case m.refill <- struct{}{}:
	default:
	}
}

func (m *Manager) refillLoop(ctx context.Context) {
	defer m.wg.Done()
	for {
		select {
		case <-ctx.Done():
			return
		case <-m.refill:
		}
		for {
			m.mu.Lock()
			need := len(m.pool) < m.o.PoolSize
			m.mu.Unlock()
			if !need || ctx.Err() != nil {
				break
			}
			t, err := m.newTap()
			if err != nil {
				m.o.Logger.Warn("tap pool refill failed", "err", err)
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Second):
				}
				continue
			}
			m.mu.Lock()
			delete(m.inflight, t)
			if ctx.Err() != nil {
				m.mu.Unlock()
				m.deleteTap(t)
				return
			}
			m.pool = append(m.pool, t)
			m.mu.Unlock()
		}
	}
}
