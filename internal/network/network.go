// Package network gives banger's VMs their network: a bridge owned by
// banger, a small pool of pre-created taps attached to it, one IPv4 lease
// per VM recorded in the store, an egress policy per VM in an nftables
// table owned by banger, a DNS server answering NAME.DOMAIN, and userspace
// TCP port forwards from the host to a guest.
//
// Decisions:
//   - The bridge (default "bgr0") holds the subnet's first address, which is
//     each guest's gateway and DNS server. Its MAC is fixed (derived from its
//     name) so that guests' ARP entries for the gateway never go stale as
//     taps come and go.
//   - Taps ("bgt0", "bgt1", ... ≤ 15 chars) are persistent tun/tap devices
//     created through /dev/net/tun and netlink, attached to the bridge as
//     *isolated* ports (BR_ISOLATED): isolated ports cannot exchange frames
//     with each other, so guests of different VMs cannot reach each other at
//     layer 2; the inet forward chain also drops bridge→bridge routed
//     traffic, and the bridge table's forward chain every frame bridged
//     from a VM's tap. A "shared" VM's tap is not isolated (an isolated
//     port talks to non-isolated ports only, so two shared taps must both
//     be non-isolated): the bridge table, not isolation, lets a shared
//     tap's frames through to another shared tap and to nothing else.
//     A tap stays with its VM from Attach to Detach (also while the VM is
//     stopped); Reconcile re-creates it after a host reboot.
//   - Leases live in the store (table leases). The next address is searched
//     after the one handed out last, so a released address is not reused at
//     once. Allocation is one SQLite IMMEDIATE transaction: never twice.
//   - The MAC is derived from the VM id: 52:54 (locally administered) + 4
//     bytes of SHA-256(id).
//   - nftables: one table (inet "banger") rebuilt atomically, in one netlink
//     batch, from the leases at Start and Reconcile; Attach, Detach and
//     SetEgress add, delete or swap only their VM's rules, which carry the
//     comment "vm=ID" (a rebuild costs 7-20 ms, a per-VM change well under
//     1 ms). Guests never reach the host (input from the bridge is dropped)
//     except banger's DNS port (and port 53 on the gateway, redirected to
//     it); "nat" VMs are masqueraded out through the host, "none" VMs are
//     not forwarded at all; "shared" VMs are masqueraded out as nat ones
//     and also reach the other shared VMs (and only them) directly on the
//     bridge, at layer 2.
//   - The guard chain keeps nat and shared guests from the host's own
//     addresses (before DNAT), link-local, private and reserved ranges and
//     every network the host routes; Options.Allow opens listed networks
//     (guard.go). A watcher restores the tables when someone else flushes
//     or edits them, and follows the host's routes (watch.go).
//   - A bridge-family table of the same name pins each tap to its VM's MAC
//     and IPv4 address (anti-spoofing): a "none" guest cannot borrow a "nat"
//     guest's address, nor poison the host's ARP cache.
//   - DNS answers NAME.DOMAIN (A; AAAA and other types: empty NOERROR), PTR
//     for the subnet, NXDOMAIN for unknown names in the domain; other names
//     are forwarded to /etc/resolv.conf's nameservers for the host and for
//     nat and shared guests, and REFUSED for none guests. Forwarding is
//     bounded per client (dnsforward.go).
//   - Port forwards are a userspace TCP proxy (no route_localnet, works on
//     127.0.0.1 and survives any firewall the host has).
//
// Wiring in the daemon:
//
//	start:  m, _ := network.New(opts)            // OptionsFromConfig
//	        m.Start(ctx)                         // bridge, tables, pool
//	        m.Reconcile(ctx, idsOfEveryVMInStore) // orphans out, taps back
//	        dns, _ := m.StartDNS(ctx, network.DNSOptions{Lookup: ..., Reverse: ...})
//	create: l, _ := m.Attach(ctx, vmID, egress)  // vmm.NIC{Tap: l.Tap, MAC: l.MAC}
//	        agent gets m.GuestNet(l)
//	start of a stopped VM: m.Attach again (idempotent; re-creates a lost tap)
//	forward: f, _ := m.Forward(ctx, host, netip.AddrPortFrom(l.Addr, port)); f.Close() on stop/delete
//	set --net: m.SetEgress(ctx, vmID, egress)    // live: lease, rules, tap isolation
//	delete: m.Detach(ctx, vmID)                  // rules, tap, lease
//	stop:   dns.Close(); m.Close()               // VMs keep their taps and rules
//
// Everything that touches the kernel runs in Options.NetNS when it is set
// (tests give each test its own network namespace); the daemon leaves it
// unset and works in its own namespace.
package network

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"time"

	"github.com/vishvananda/netns"

	"github.com/banger-sh/banger/internal/config"
	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/store"
)

// Egress is a VM's egress policy.
type Egress string

const (
	EgressNAT  Egress = "nat"  // masqueraded out through the host
	EgressNone Egress = "none" // no forwarding at all (DNS for VM names only)
	// EgressShared is nat, and the VM also reaches (and is reached by)
	// the other shared VMs on the bridge; never nat or none VMs.
	EgressShared Egress = "shared"
)

// ParseEgress validates a --net value.
func ParseEgress(s string) (Egress, error) {
	switch e := Egress(s); e {
	case EgressNAT, EgressNone, EgressShared:
		return e, nil
	}
	return "", errdefs.InvalidArgument(fmt.Sprintf("network %q is not one of nat, none, shared", s))
}

// out reports whether e is masqueraded out through the host (and gets
// upstream DNS).
func (e Egress) out() bool { return e == EgressNAT || e == EgressShared }

// isolated reports whether a tap with egress e is an isolated bridge port
// (BR_ISOLATED): every tap but a shared VM's.
func (e Egress) isolated() bool { return e != EgressShared }

// Options configure a Manager. Zero values take the defaults noted.
type Options struct {
	Subnet     netip.Prefix // required, IPv4, /29 or larger
	BridgeName string       // default "bgr0"
	TapPrefix  string       // default "bgt"; taps are TapPrefix + N
	Table      string       // nftables inet table, default "banger"
	DNSPort    int          // banger's DNS port, allowed from guests; default 42069
	Domain     string       // DNS domain of VM names, default "vm"
	PoolSize   int          // spare taps kept ready, default 2; <0: none
	// Allow are destinations nat and shared guests may reach although
	// the guard blocks them by default (private, link-local and routed
	// networks of the host; see guard.go). The host's own addresses stay
	// closed whatever Allow says.
	Allow []netip.Prefix
	// CheckInterval is how often the rules are compared with the
	// kernel's besides on nftables and route events; default 30 s.
	CheckInterval time.Duration
	Store         *store.Store // required
	Logger        *slog.Logger // default: discard
	// NetNS, when > 0, is the network namespace every kernel operation
	// runs in. 0 (the default) is the daemon's own namespace.
	NetNS netns.NsHandle
}

// OptionsFromConfig maps the [network] config section onto Options.
func OptionsFromConfig(c config.Network, st *store.Store, log *slog.Logger) (Options, error) {
	p, err := netip.ParsePrefix(c.Subnet)
	if err != nil {
		return Options{}, errdefs.InvalidArgument(fmt.Sprintf("network.subnet %q: %v", c.Subnet, err))
	}
	allow, err := ParseAllow(c.Allow)
	if err != nil {
		return Options{}, err
	}
	return Options{Subnet: p.Masked(), DNSPort: c.DNSPort, Domain: c.DNSDomain, BridgeName: c.Bridge, TapPrefix: c.TapPrefix, Table: c.NFTable, Allow: allow, Store: st, Logger: log}, nil
}

// ParseAllow parses network.allow: IPv4 prefixes ("10.1.0.0/16") or
// addresses (a /32).
func ParseAllow(ss []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range ss {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, errdefs.InvalidArgument(fmt.Sprintf("network.allow: %q is not an IPv4 address or CIDR", s))
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if !p.Addr().Is4() {
			return nil, errdefs.InvalidArgument(fmt.Sprintf("network.allow: %q is not IPv4 (guests have no IPv6 egress)", s))
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

func (o *Options) setDefaults() error {
	if o.BridgeName == "" {
		o.BridgeName = "bgr0"
	}
	if o.TapPrefix == "" {
		o.TapPrefix = "bgt"
	}
	if o.Table == "" {
		o.Table = "banger"
	}
	if o.DNSPort == 0 {
		o.DNSPort = 42069
	}
	if o.Domain == "" {
		o.Domain = "vm"
	}
	if o.PoolSize == 0 {
		o.PoolSize = 2
	}
	if o.CheckInterval <= 0 {
		o.CheckInterval = 30 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Store == nil {
		return errors.New("network: Options.Store is required")
	}
	if !o.Subnet.IsValid() || !o.Subnet.Addr().Is4() || o.Subnet.Bits() > 29 {
		return errdefs.InvalidArgument(fmt.Sprintf("network: subnet %s is not an IPv4 prefix of /29 or larger", o.Subnet))
	}
	o.Subnet = o.Subnet.Masked()
	if len(o.BridgeName) > 15 || len(o.TapPrefix) > 9 {
		return errdefs.InvalidArgument("network: bridge name or tap prefix too long for an interface name")
	}
	return nil
}

// Lease is a VM's network identity on the host.
type Lease struct {
	VMID   string     `json:"vm_id"`
	Addr   netip.Addr `json:"addr"`
	Tap    string     `json:"tap"`
	MAC    string     `json:"mac"`
	Egress Egress     `json:"egress"`
}

// GuestNet is what the guest agent needs to bring the guest's NIC up (by
// netlink, in the guest): pure data, sent by the host at boot.
type GuestNet struct {
	Interface string       `json:"interface"` // "eth0"
	MAC       string       `json:"mac"`       // set on the interface (clones inherit the template's)
	Address   netip.Prefix `json:"address"`   // e.g. 172.30.0.5/24
	Gateway   netip.Addr   `json:"gateway"`   // default route via
	// DNS are the resolvers for /etc/resolv.conf (port 53: the host
	// redirects the gateway's port 53 to banger's DNS port).
	DNS          []netip.Addr `json:"dns"`
	SearchDomain string       `json:"search_domain"` // "vm"
}

// MACFor is the stable MAC of a VM: 52:54 (locally administered, unicast,
// as QEMU's) and four bytes of SHA-256 of the id (32 bits: a collision,
// which the store refuses, is ~1e-5 likely with 250 VMs).
func MACFor(vmID string) string {
	h := sha256.Sum256([]byte(vmID))
	return net.HardwareAddr{0x52, 0x54, h[0], h[1], h[2], h[3]}.String()
}

// bridgeMAC is the bridge's fixed MAC (02: locally administered, unicast).
func bridgeMAC(name string) net.HardwareAddr {
	h := sha256.Sum256([]byte("banger-bridge:" + name))
	return net.HardwareAddr{0x02, h[0], h[1], h[2], h[3], h[4]}
}

// Manager owns the bridge, the tap pool, leases and the nftables table.
type Manager struct {
	o  Options
	gw netip.Addr // the bridge's address: gateway and DNS of every guest

	mu       sync.Mutex
	pool     []string          // spare taps, ready
	inflight map[string]bool   // taps being created or handed out, not yet leased
	leases   map[string]*Lease // by VM id: the store's leases, cached
	started  bool

	rulesMu sync.Mutex // one ruleset change at a time; guards applied*
	// applied are the leases the kernel's rules were last written for,
	// appliedNets the host routes of the blocked set (nil: no table).
	applied     map[string]Lease
	appliedNets []netip.Prefix
	restores    []time.Time // restores after outside changes, for backing off

	refill chan struct{}
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New validates o; it does not touch the system (see Start).
func New(o Options) (*Manager, error) {
	if err := o.setDefaults(); err != nil {
		return nil, err
	}
	return &Manager{
		o:        o,
		gw:       o.Subnet.Addr().Next(),
		inflight: map[string]bool{},
		leases:   map[string]*Lease{},
		refill:   make(chan struct{}, 1),
	}, nil
}

// Gateway is the bridge's address (each guest's gateway and DNS server).
func (m *Manager) Gateway() netip.Addr { return m.gw }

// Bridge is the bridge's name.
func (m *Manager) Bridge() string { return m.o.BridgeName }

// Subnet is the guests' subnet.
func (m *Manager) Subnet() netip.Prefix { return m.o.Subnet }

// DNSAddr is where banger's DNS listens on the bridge.
func (m *Manager) DNSAddr() netip.AddrPort { return netip.AddrPortFrom(m.gw, uint16(m.o.DNSPort)) }

// GuestNet is the guest-side configuration for a lease.
func (m *Manager) GuestNet(l *Lease) GuestNet {
	return GuestNet{
		Interface:    "eth0",
		MAC:          l.MAC,
		Address:      netip.PrefixFrom(l.Addr, m.o.Subnet.Bits()),
		Gateway:      m.gw,
		DNS:          []netip.Addr{m.gw},
		SearchDomain: m.o.Domain,
	}
}

// do runs f in the manager's network namespace, on a locked OS thread.
func (m *Manager) do(f func() error) error {
	return inNS(m.o.NetNS, f)
}

// inNS runs f with the calling goroutine's thread in ns (ns <= 0: as is).
func inNS(ns netns.NsHandle, f func() error) error {
	if ns <= 0 {
		return f()
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns: %w", err)
	}
	defer func() {
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: Go discards it when the goroutine
			// ends rather than reuse a thread in the wrong namespace.
			return
		}
		runtime.UnlockOSThread()
	}()
	return f()
}

// Start brings the host side up: the bridge with its address, the
// nftables table from the stored leases, IPv4 forwarding when a nat lease
// exists, and the background refill of the tap pool. Call Reconcile next
// (with the VMs that exist) and then serve.
func (m *Manager) Start(ctx context.Context) error {
	ls, err := m.o.Store.ListLeases(ctx)
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.leases = map[string]*Lease{}
	for _, sl := range ls {
		l, err := fromStore(sl)
		if err != nil {
			m.o.Logger.Warn("unreadable lease dropped from memory", "vm", sl.VMID, "err", err)
			continue
		}
		m.leases[l.VMID] = l
	}
	m.mu.Unlock()
	if err := m.ensureBridge(); err != nil {
		return err
	}
	if err := m.syncRules(); err != nil {
		return err
	}
	m.mu.Lock()
	if !m.started {
		m.started = true
		bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
		m.cancel = cancel
		m.wg.Add(2)
		go m.refillLoop(bg)
		go m.watchLoop(bg)
	}
	m.mu.Unlock()
	m.kickRefill()
	return nil
}

// Close stops the pool refill and deletes the spare taps. VM taps, leases,
// the bridge and the rules stay (VMs keep running without the daemon).
func (m *Manager) Close() error {
	m.mu.Lock()
	cancel := m.cancel
	m.cancel, m.started = nil, false
	m.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	m.wg.Wait()
	m.mu.Lock()
	spare := m.pool
	m.pool = nil
	m.mu.Unlock()
	var errs []error
	for _, t := range spare {
		errs = append(errs, m.deleteTap(t))
	}
	return errors.Join(errs...)
}

// Teardown removes everything banger made on the host: rules table, every
// tap with the prefix, the bridge. Leases in the store are kept (a later
// Start + Reconcile re-creates what they need). For uninstall and tests.
func (m *Manager) Teardown(ctx context.Context) error {
	errs := []error{m.Close(), m.deleteTable()}
	taps, err := m.listTaps()
	errs = append(errs, err)
	for _, t := range taps {
		errs = append(errs, m.deleteTap(t))
	}
	errs = append(errs, m.deleteBridge())
	return errors.Join(errs...)
}

func fromStore(sl *store.Lease) (*Lease, error) {
	a, err := netip.ParseAddr(sl.Addr)
	if err != nil {
		return nil, err
	}
	return &Lease{VMID: sl.VMID, Addr: a, Tap: sl.Tap, MAC: sl.MAC, Egress: Egress(sl.Egress)}, nil
}

// Lease returns a VM's lease, or ErrNotFound.
func (m *Manager) Lease(vmID string) (*Lease, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	l, ok := m.leases[vmID]
	if !ok {
		return nil, errdefs.NotFound(fmt.Sprintf("vm %s has no network lease", vmID))
	}
	c := *l
	return &c, nil
}

// Leases returns every lease.
func (m *Manager) Leases() []Lease {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Lease, 0, len(m.leases))
	for _, l := range m.leases {
		out = append(out, *l)
	}
	return out
}

// LeaseByAddr finds the lease holding addr.
func (m *Manager) LeaseByAddr(a netip.Addr) (Lease, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, l := range m.leases {
		if l.Addr == a {
			return *l, true
		}
	}
	return Lease{}, false
}

// Attach gives a VM its network: a tap from the pool, an address lease and
// its egress rules. It is idempotent: a VM that holds a lease gets it back,
// with its tap re-created if it is missing (e.g. after a host reboot), so it
// is also what starting a stopped VM calls. egress is ignored for an
// existing lease (SetEgress changes it).
func (m *Manager) Attach(ctx context.Context, vmID string, egress Egress) (*Lease, error) {
	if _, err := ParseEgress(string(egress)); err != nil {
		return nil, err
	}
	if l, err := m.Lease(vmID); err == nil {
		if err := m.ensureTap(l.Tap, l.Egress); err != nil {
			return nil, fmt.Errorf("attach vm %s: %w", vmID, err)
		}
		return l, nil
	}
	tap, err := m.AcquireTap(ctx)
	if err != nil {
		return nil, fmt.Errorf("attach vm %s: %w", vmID, err)
	}
	return m.leaseTap(ctx, vmID, egress, tap)
}

// AttachTap is Attach for a new VM whose VMM already holds tap, handed out
// by AcquireTap (a spare clone's): the lease takes that tap. On failure
// the tap is released.
func (m *Manager) AttachTap(ctx context.Context, vmID string, egress Egress, tap string) (*Lease, error) {
	if _, err := ParseEgress(string(egress)); err != nil || tap == "" {
		if tap != "" {
			m.ReleaseTap(context.WithoutCancel(ctx), tap)
		}
		if err == nil {
			err = errors.New("network: AttachTap without a tap")
		}
		return nil, err
	}
	l, err := m.leaseTap(ctx, vmID, egress, tap)
	if err == nil && l.Tap != tap { // the VM had a lease already: not a new VM
		return nil, fmt.Errorf("attach vm %s: it already holds a lease on %s", vmID, l.Tap)
	}
	return l, err
}

// leaseTap gives a VM without a lease one on tap, a tap handed out by
// AcquireTap (hence isolated), with its rules, and makes the tap the port
// egress wants. On failure the tap is released.
func (m *Manager) leaseTap(ctx context.Context, vmID string, egress Egress, tap string) (*Lease, error) {
	sl := &store.Lease{VMID: vmID, Tap: tap, MAC: MACFor(vmID), Egress: string(egress)}
	if err := m.o.Store.AllocateLease(ctx, sl, m.pickAddr); err != nil {
		m.ReleaseTap(context.WithoutCancel(ctx), tap)
		if errors.Is(err, errdefs.ErrAlreadyExists) { // raced with another Attach of this VM
			if l, lerr := m.o.Store.GetLease(ctx, vmID); lerr == nil {
				if ll, perr := fromStore(l); perr == nil {
					m.mu.Lock()
					m.leases[vmID] = ll
					m.mu.Unlock()
					c := *ll
					return &c, m.ensureTap(ll.Tap, ll.Egress)
				}
			}
		}
		return nil, fmt.Errorf("attach vm %s: %w", vmID, err)
	}
	l, err := fromStore(sl)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	m.leases[vmID] = l
	delete(m.inflight, tap) // held by the lease now
	m.mu.Unlock()
	err = m.vmRulesChanged(nil, l)
	rules := err == nil
	if err == nil && !l.Egress.isolated() { // taps come isolated from the pool
		err = m.ensureTap(tap, l.Egress)
	}
	if err != nil {
		cctx := context.WithoutCancel(ctx)
		m.mu.Lock()
		delete(m.leases, vmID)
		m.mu.Unlock()
		if rules {
			m.vmRulesChanged(l, nil)
		}
		m.o.Store.DeleteLease(cctx, vmID)
		m.ReleaseTap(cctx, tap)
		return nil, fmt.Errorf("attach vm %s: %w", vmID, err)
	}
	m.o.Logger.Info("network attached", "vm", vmID, "addr", l.Addr, "tap", l.Tap, "mac", l.MAC, "egress", l.Egress)
	c := *l
	return &c, nil
}

// Detach removes a VM's rules, tap and lease. A VM without a lease is not
// an error.
func (m *Manager) Detach(ctx context.Context, vmID string) error {
	m.mu.Lock()
	l, ok := m.leases[vmID]
	delete(m.leases, vmID)
	m.mu.Unlock()
	if !ok {
		sl, err := m.o.Store.GetLease(ctx, vmID)
		if errors.Is(err, errdefs.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if l, err = fromStore(sl); err != nil {
			return m.o.Store.DeleteLease(ctx, vmID)
		}
	}
	var errs []error
	if err := m.vmRulesChanged(l, nil); err != nil {
		errs = append(errs, err)
	}
	if err := m.deleteTap(l.Tap); err != nil {
		errs = append(errs, err)
	}
	if err := m.o.Store.DeleteLease(ctx, vmID); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("detach vm %s: %w", vmID, err)
	}
	m.o.Logger.Info("network detached", "vm", vmID, "addr", l.Addr, "tap", l.Tap)
	return nil
}

// SetEgress changes the egress of a VM that holds a lease, live: the
// lease in the store, the VM's rules (swapped in one batch) and its tap's
// isolation. A VM without a lease is ErrNotFound.
func (m *Manager) SetEgress(ctx context.Context, vmID string, egress Egress) (*Lease, error) {
	if _, err := ParseEgress(string(egress)); err != nil {
		return nil, err
	}
	old, err := m.Lease(vmID)
	if err != nil {
		return nil, err
	}
	if old.Egress == egress {
		return old, nil
	}
	if err := m.o.Store.SetLeaseEgress(ctx, vmID, string(egress)); err != nil {
		return nil, fmt.Errorf("set egress of vm %s: %w", vmID, err)
	}
	l := *old
	l.Egress = egress
	m.setLease(&l)
	// The new rules alone already keep the VM where its egress says: the
	// bridge table drops what a shared tap exchanges with a tap that is no
	// longer shared, isolated or not.
	err = m.vmRulesChanged(old, &l)
	if err == nil {
		err = m.ensureTap(l.Tap, l.Egress)
	}
	if err != nil {
		cctx := context.WithoutCancel(ctx)
		m.setLease(old)
		m.o.Store.SetLeaseEgress(cctx, vmID, string(old.Egress))
		m.vmRulesChanged(&l, old)
		m.ensureTap(old.Tap, old.Egress)
		return nil, fmt.Errorf("set egress of vm %s: %w", vmID, err)
	}
	m.o.Logger.Info("network egress changed", "vm", vmID, "from", old.Egress, "to", l.Egress)
	c := l
	return &c, nil
}

func (m *Manager) setLease(l *Lease) {
	c := *l
	m.mu.Lock()
	m.leases[l.VMID] = &c
	m.mu.Unlock()
}

// Reconcile makes the host match the VMs in owned (the ids of every VM the
// store holds): leases of other VMs are deleted, taps with banger's prefix
// that no lease or pool holds are removed, owned leases get their tap back
// if it is missing, and the rules table is rebuilt from what remains. Call
// it after Start, before serving.
func (m *Manager) Reconcile(ctx context.Context, owned []string) error {
	keep := map[string]bool{}
	for _, id := range owned {
		keep[id] = true
	}
	ls, err := m.o.Store.ListLeases(ctx)
	if err != nil {
		return err
	}
	var errs []error
	leases := map[string]*Lease{}
	for _, sl := range ls {
		l, perr := fromStore(sl)
		if !keep[sl.VMID] || perr != nil {
			m.o.Logger.Info("reconcile: removing orphan lease", "vm", sl.VMID, "addr", sl.Addr, "tap", sl.Tap)
			errs = append(errs, m.o.Store.DeleteLease(ctx, sl.VMID))
			continue
		}
		leases[l.VMID] = l
	}
	// List first, then look at what is held: a tap created after the
	// listing is not a candidate, one created before is in the pool or in
	// flight by the time we look.
	taps, err := m.listTaps()
	errs = append(errs, err)
	m.mu.Lock()
	m.leases = leases
	held := map[string]bool{}
	for _, l := range leases {
		held[l.Tap] = true
	}
	for _, t := range m.pool {
		held[t] = true
	}
	for t := range m.inflight {
		held[t] = true
	}
	m.mu.Unlock()
	for _, t := range taps {
		if !held[t] {
			m.o.Logger.Info("reconcile: removing orphan tap", "tap", t)
			errs = append(errs, m.deleteTap(t))
		}
	}
	for _, l := range leases {
		errs = append(errs, m.ensureTap(l.Tap, l.Egress))
	}
	errs = append(errs, m.syncRules())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("reconcile network: %w", err)
	}
	return nil
}

// pickAddr chooses the first free address after last (wrapping), skipping
// the network address, the bridge's address and the broadcast address.
func (m *Manager) pickAddr(used map[string]bool, last string) (string, error) {
	first := m.gw.Next()
	bcast := lastAddr(m.o.Subnet)
	start := first
	if a, err := netip.ParseAddr(last); err == nil && m.o.Subnet.Contains(a) {
		if n := a.Next(); n.IsValid() && n.Less(bcast) && !n.Less(first) {
			start = n
		}
	}
	a := start
	for {
		if !used[a.String()] {
			return a.String(), nil
		}
		a = a.Next()
		if !a.Less(bcast) {
			a = first
		}
		if a == start {
			return "", errdefs.Unavailable(fmt.Sprintf("no free address left in %s", m.o.Subnet))
		}
	}
}

// lastAddr is the broadcast address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	hostBits := 32 - p.Bits()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	v |= (1 << hostBits) - 1
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
