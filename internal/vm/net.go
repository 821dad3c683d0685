package vm

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/banger-sh/banger/internal/agent"
	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/network"
	"github.com/banger-sh/banger/internal/vmm"
)

// egress resolves a create request's --net against the config and what
// this daemon can do.
func (m *Manager) egress(req string) (string, error) {
	if req == "" {
		if m.net == nil {
			return "off", nil
		}
		return m.opts.Config.Network.Egress, nil
	}
	if req == "off" { // no NIC at all
		return req, nil
	}
	if _, err := network.ParseEgress(req); err != nil {
		return "", errdefs.InvalidArgument(fmt.Sprintf("--net %q is not one of nat, none, shared, off", req))
	}
	if m.net == nil {
		return "", errdefs.Unavailable(fmt.Sprintf("--net %s: networking is unavailable on this daemon (see 'banger daemon logs' and 'banger doctor')", req))
	}
	return req, nil
}

// attachNet gives a booting VM its tap and lease (idempotent across
// restarts) and returns the NIC and the guest-side configuration.
func (m *Manager) attachNet(ctx context.Context, r *record, u *undo, fresh bool) ([]vmm.NIC, *agent.NetConfig, error) {
	if r.spec.Net == "off" || r.spec.Net == "" {
		return nil, nil, nil
	}
	if m.net == nil {
		return nil, nil, errdefs.Unavailable(fmt.Sprintf("vm %s has --net %s but networking is unavailable on this daemon", r.row.Name, r.spec.Net))
	}
	l, err := m.net.Attach(ctx, r.row.ID, network.Egress(r.spec.Net))
	if err != nil {
		return nil, nil, fmt.Errorf("network: %w", err)
	}
	if fresh {
		id := r.row.ID
		u.push(func(ctx context.Context) { m.net.Detach(ctx, id) })
	}
	return []vmm.NIC{{Tap: l.Tap, MAC: l.MAC}}, m.netConfig(r, l), nil
}

// netConfig is what the agent needs to configure r's NIC for lease l.
func (m *Manager) netConfig(r *record, l *network.Lease) *agent.NetConfig {
	g := m.net.GuestNet(l)
	nc := &agent.NetConfig{
		Interface: g.Interface, MAC: g.MAC, Address: g.Address.String(), Gateway: g.Gateway.String(),
		SearchDomain: g.SearchDomain,
		Hosts:        []string{fmt.Sprintf("%s %s.%s %s", l.Addr, r.row.Name, g.SearchDomain, r.row.Name)},
	}
	for _, d := range g.DNS {
		nc.DNS = append(nc.DNS, d.String())
	}
	return nc
}

// detachNet releases a deleted VM's lease, tap and rules.
func (m *Manager) detachNet(ctx context.Context, id string) {
	m.closeForwards(id)
	if m.net != nil {
		if err := m.net.Detach(ctx, id); err != nil {
			m.log.Warn("detach network", "id", id, "err", err)
		}
	}
}

// LookupAddr answers DNS: a VM name to its address.
func (m *Manager) LookupAddr(name string) (netip.Addr, bool) {
	if m.net == nil {
		return netip.Addr{}, false
	}
	row, err := m.store.GetVM(context.Background(), strings.ToLower(name))
	if err != nil || row.Name != strings.ToLower(name) {
		return netip.Addr{}, false
	}
	l, err := m.net.Lease(row.ID)
	if err != nil || l == nil {
		return netip.Addr{}, false
	}
	return l.Addr, true
}

// LookupName answers reverse DNS: an address to a VM name.
func (m *Manager) LookupName(a netip.Addr) (string, bool) {
	if m.net == nil {
		return "", false
	}
	l, ok := m.net.LeaseByAddr(a)
	if !ok {
		return "", false
	}
	row, err := m.store.GetVM(context.Background(), l.VMID)
	if err != nil {
		return "", false
	}
	return row.Name, true
}

// openForwards starts a running VM's recorded port forwards.
func (m *Manager) openForwards(ctx context.Context, r *record) error {
	m.closeForwards(r.row.ID)
	for _, spec := range r.spec.Forwards {
		if _, err := m.openForward(ctx, r, spec); err != nil {
			return err
		}
	}
	return nil
}

func (m *Manager) openForward(ctx context.Context, r *record, spec string) (*network.PortForward, error) {
	if m.net == nil {
		return nil, errdefs.Unavailable("port forwards need networking, which is unavailable on this daemon")
	}
	host, gport, err := network.ParseForwardSpec(spec)
	if err != nil {
		return nil, errdefs.InvalidArgument(err.Error())
	}
	l, err := m.net.Lease(r.row.ID)
	if err != nil || l == nil {
		return nil, errdefs.Conflict(fmt.Sprintf("vm %s has no network address (created with --net off?)", r.row.Name))
	}
	f, err := m.net.Forward(ctx, host, netip.AddrPortFrom(l.Addr, gport))
	if err != nil {
		return nil, fmt.Errorf("forward %s: %w", spec, err)
	}
	m.mu.Lock()
	m.forwards[r.row.ID] = append(m.forwards[r.row.ID], f)
	m.mu.Unlock()
	return f, nil
}

func (m *Manager) closeForwards(id string) {
	m.mu.Lock()
	fs := m.forwards[id]
	delete(m.forwards, id)
	m.mu.Unlock()
	for _, f := range fs {
		f.Close()
	}
}

// AddForward forwards a host TCP port to a running VM's port, and records
// it so that it comes back after a restart of the VM or the daemon.
func (m *Manager) AddForward(ctx context.Context, name, spec string) (string, error) {
	if _, _, err := network.ParseForwardSpec(spec); err != nil {
		return "", errdefs.InvalidArgument(err.Error())
	}
	r, unlock, err := m.acquire(ctx, name)
	if err != nil {
		return "", err
	}
	defer unlock()
	if st := m.derive(ctx, r); st != StateRunning {
		return "", errdefs.NotRunning(fmt.Sprintf("vm %s is %s, not running", r.row.Name, st))
	}
	f, err := m.openForward(ctx, r, spec)
	if err != nil {
		return "", err
	}
	norm := fmt.Sprintf("%s:%d", f.Addr(), f.Guest().Port())
	r.spec.Forwards = append(r.spec.Forwards, norm)
	if err := r.save(ctx, m.store); err != nil {
		f.Close()
		return "", err
	}
	return norm, nil
}

// setEgress switches r's egress live: its lease, its rules and its tap's
// isolation (the guest keeps its address; connections the new egress
// forbids stop at once). r.spec is the caller's to update.
func (m *Manager) setEgress(ctx context.Context, r *record, egress string) error {
	e, err := network.ParseEgress(egress)
	if err != nil {
		return err
	}
	if r.spec.Net == "off" || r.spec.Net == "" {
		return errdefs.Conflict(fmt.Sprintf("vm %s has no network interface (created with --net off, or while networking was unavailable): --net cannot give it one; create a new VM", r.row.Name))
	}
	if m.net == nil {
		return errdefs.Unavailable(fmt.Sprintf("--net %s: networking is unavailable on this daemon (see 'banger daemon logs' and 'banger doctor')", egress))
	}
	_, err = m.net.SetEgress(ctx, r.row.ID, e)
	if errors.Is(err, errdefs.ErrNotFound) {
		return nil // no lease (yet): the next start attaches with r.spec.Net
	}
	if err != nil {
		return fmt.Errorf("vm %s: %w", r.row.Name, err)
	}
	return nil
}
