package network

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The rules are only as good as their presence in the kernel. Anyone with
// root can remove them: `nft flush ruleset` (what an nftables.conf reload,
// `systemctl restart nftables` or firewalld does) deletes banger's tables
// with every other, and would leave guests with no isolation, no
// anti-spoofing and no guard until the next rebuild. So a started Manager
// watches, until Close:
//
//   - nftables events (netlink group NFNLGRP_NFTABLES) touching its
//     tables, made by any process but this one;
//   - IPv4 route changes, since the blocked set follows the host's routes;
//   - and, in case an event is lost (a full socket buffer ends a monitor,
//     which is then re-opened), every Options.CheckInterval.
//
// A check compares the kernel with what the manager last wrote: every
// chain's rule count and both sets' elements. A difference is logged as a
// warning (what was missing, and which process made the change, as the
// kernel reports it) and the tables are rebuilt from the leases; changed
// routes rebuild them too, with the new blocked set. Restoring takes well
// under a second after the change.

const (
	restoreBurst = 5                // restores a minute on events, before backing off
	periodic     = "periodic check" // the by of a check the ticker made
)

// ruleCounter is a ruleSink that counts rules per chain.
type ruleCounter map[string]int

func chainKey(c *nftables.Chain) string {
	fam := "inet"
	if c.Table.Family == nftables.TableFamilyBridge {
		fam = "bridge"
	}
	return fam + " " + c.Name
}

func (rc ruleCounter) AddRule(r *nftables.Rule) *nftables.Rule    { rc[chainKey(r.Chain)]++; return r }
func (rc ruleCounter) InsertRule(r *nftables.Rule) *nftables.Rule { rc[chainKey(r.Chain)]++; return r }

// rulesDiff compares the kernel's tables with m.applied and m.appliedNets
// (the caller holds rulesMu) and describes what differs; "" when nothing.
func (m *Manager) rulesDiff() (string, error) {
	want := ruleCounter{}
	ch := m.chainsByName()
	t := ch.guard.Table
	blocked := &nftables.Set{Table: t, Name: "blocked", KeyType: nftables.TypeIPAddr, Interval: true}
	allowed := &nftables.Set{Table: t, Name: "allowed", KeyType: nftables.TypeIPAddr, Interval: true}
	m.guardRules(want, ch.guard, blocked, allowed)
	m.baseRules(want, ch)
	for _, l := range m.applied {
		m.addVMRules(want, ch, l)
	}
	wantSets := map[string][]nftables.SetElement{
		"blocked": intervalElements(mergeRanges(append(slices.Clone(defaultBlocked), m.appliedNets...))),
		"allowed": intervalElements(mergeRanges(m.o.Allow)),
	}
	var diffs []string
	err := m.do(func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		for _, chain := range ch.every() {
			rules, err := c.GetRules(chain.Table, chain)
			if errors.Is(err, unix.ENOENT) {
				diffs = append(diffs, fmt.Sprintf("chain %s missing", chainKey(chain)))
				continue
			}
			if err != nil {
				return fmt.Errorf("list chain %s: %w", chainKey(chain), err)
			}
			if n, w := len(rules), want[chainKey(chain)]; n != w {
				diffs = append(diffs, fmt.Sprintf("chain %s: %d rules, want %d", chainKey(chain), n, w))
			}
		}
		for _, name := range []string{"blocked", "allowed"} {
			s, err := c.GetSetByName(t, name)
			if errors.Is(err, unix.ENOENT) {
				diffs = append(diffs, "set "+name+" missing")
				continue
			}
			if err != nil {
				return fmt.Errorf("set %s: %w", name, err)
			}
			got, err := c.GetSetElements(s)
			if err != nil {
				return fmt.Errorf("set %s: %w", name, err)
			}
			if !sameElements(got, wantSets[name]) {
				diffs = append(diffs, fmt.Sprintf("set %s: %d elements, want %d", name, len(got), len(wantSets[name])))
			}
		}
		return nil
	})
	return strings.Join(diffs, "; "), err
}

// sameElements compares interval set elements as keys and end flags, in
// any order.
func sameElements(a, b []nftables.SetElement) bool {
	key := func(es []nftables.SetElement) []string {
		out := make([]string, 0, len(es))
		for _, e := range es {
			out = append(out, fmt.Sprintf("%x/%v", e.Key, e.IntervalEnd))
		}
		slices.Sort(out)
		return out
	}
	return slices.Equal(key(a), key(b))
}

// checkRules restores the tables when the kernel's differ from what was
// last written, or when the host's routes changed. by names what made
// the last change, for the log.
func (m *Manager) checkRules(by string) error {
	m.rulesMu.Lock()
	defer m.rulesMu.Unlock()
	if m.applied == nil { // never written, or torn down
		return nil
	}
	nets, err := m.hostRoutes()
	if err != nil {
		return err
	}
	diff, err := m.rulesDiff()
	if err != nil {
		return err
	}
	if diff == "" && slices.Equal(nets, m.appliedNets) {
		return nil
	}
	if diff != "" {
		// Someone who keeps changing the table (a second bangerd with the
		// same nft_table?) is not fought in a loop: past restoreBurst
		// restores a minute, only the periodic check restores.
		now := time.Now()
		recent := m.restores[:0]
		for _, t := range m.restores {
			if now.Sub(t) < time.Minute {
				recent = append(recent, t)
			}
		}
		m.restores = recent
		if len(recent) >= restoreBurst && by != periodic {
			if len(recent) == restoreBurst {
				m.o.Logger.Error("nftables: banger's rules keep being changed outside banger; restoring them only every check interval from now (is another bangerd using the same network.nft_table?)",
					"table", m.o.Table, "by", by, "interval", m.o.CheckInterval)
				m.restores = append(m.restores, now) // log once per burst
			}
			return nil
		}
		m.restores = append(m.restores, now)
		m.o.Logger.Warn("nftables: banger's rules were changed outside banger (nft flush ruleset?); restoring them",
			"table", m.o.Table, "by", by, "found", diff)
	} else {
		m.o.Logger.Info("host routes changed: updating the networks guests are kept from", "routes", fmt.Sprint(nets))
		if err := m.setBlockedLocked(nets); err == nil {
			return nil
		} else {
			m.o.Logger.Warn("nftables: update of the blocked set failed, rebuilding the table", "err", err)
		}
	}
	if err := m.syncRulesLocked(); err != nil {
		return err
	}
	if diff != "" {
		m.o.Logger.Warn("nftables: rules restored", "table", m.o.Table)
	}
	return nil
}

// setBlockedLocked replaces the blocked set's elements with those for the
// host routes nets, in one transaction (the caller holds rulesMu): cheaper
// than a rebuild, and the rules stay as they are.
func (m *Manager) setBlockedLocked(nets []netip.Prefix) error {
	err := m.do(func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		t := &nftables.Table{Name: m.o.Table, Family: nftables.TableFamilyINet}
		set, err := c.GetSetByName(t, "blocked")
		if err != nil {
			return err
		}
		c.FlushSet(set)
		if err := c.SetAddElements(set, intervalElements(mergeRanges(append(slices.Clone(defaultBlocked), nets...)))); err != nil {
			return err
		}
		return c.Flush()
	})
	if err == nil {
		m.appliedNets = nets
	}
	return err
}

// watchLoop runs the watchers and the checks until ctx ends.
func (m *Manager) watchLoop(ctx context.Context) {
	defer m.wg.Done()
	kick := make(chan string, 1)
	notify := func(by string) {
		select {
		case kick <- by:
		default:
		}
	}
	done := make(chan struct{})
	defer func() { <-done; <-done }()
	go func() { defer func() { done <- struct{}{} }(); m.watchNftables(ctx, notify) }()
	go func() { defer func() { done <- struct{}{} }(); m.watchRoutes(ctx, notify) }()
	tick := time.NewTicker(m.o.CheckInterval)
	defer tick.Stop()
	for {
		by := periodic
		select {
		case <-ctx.Done():
			return
		case by = <-kick:
			// Let a burst (a ruleset reload is many messages) settle.
			select {
			case <-ctx.Done():
				return
			case <-time.After(50 * time.Millisecond):
			}
			select {
			case <-kick:
			default:
			}
		case <-tick.C:
		}
		if err := m.checkRules(by); err != nil {
			m.o.Logger.Warn("nftables: check of banger's rules failed", "err", err)
		}
	}
}

// watchNftables reports (notify) each nftables change that touches the
// manager's tables and was made by another process; a monitor that ends
// (lost events) is re-opened and reported.
func (m *Manager) watchNftables(ctx context.Context, notify func(string)) {
	self := uint32(os.Getpid())
	for ctx.Err() == nil {
		var mon *nftables.Monitor
		var events chan *nftables.MonitorEvents
		err := m.do(func() error {
			c, err := nftables.New()
			if err != nil {
				return err
			}
			mon = nftables.NewMonitor(nftables.WithMonitorEventBuffer(64))
			events, err = c.AddGenerationalMonitor(mon)
			return err
		})
		if err != nil {
			m.o.Logger.Warn("nftables: cannot watch for changes (periodic checks only)", "err", err)
			return
		}
		stop := context.AfterFunc(ctx, func() { mon.Close() })
		for evs := range events {
			if by, ok := m.touchesTables(evs, self); ok {
				notify(by)
			}
		}
		stop()
		mon.Close()
		if ctx.Err() == nil {
			m.o.Logger.Warn("nftables: monitor ended (events lost?); re-opening it and checking the rules")
			notify("unknown (nftables monitor lost events)")
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

// touchesTables reports whether a generation of changes made by another
// process than self touches the manager's tables, and who made it.
func (m *Manager) touchesTables(evs *nftables.MonitorEvents, self uint32) (string, bool) {
	by := "unknown"
	if g := evs.GeneratedBy; g != nil {
		if g.Type == nftables.MonitorEventTypeOOB {
			return "unknown (nftables monitor error)", true
		}
		if gen, ok := g.Data.(*nftables.GenMsg); ok {
			if gen.ProcPID == self {
				return "", false
			}
			by = fmt.Sprintf("%s (pid %d)", strings.TrimRight(gen.ProcComm, "\x00"), gen.ProcPID)
		}
	}
	ours := func(t *nftables.Table) bool {
		return t != nil && t.Name == m.o.Table && (t.Family == nftables.TableFamilyINet || t.Family == nftables.TableFamilyBridge)
	}
	for _, e := range evs.Changes {
		switch d := e.Data.(type) {
		case *nftables.Table:
			if ours(d) {
				return by, true
			}
		case *nftables.Chain:
			if ours(d.Table) {
				return by, true
			}
		case *nftables.Rule:
			if ours(d.Table) {
				return by, true
			}
		case *nftables.Set:
			if ours(d.Table) {
				return by, true
			}
		case []nftables.SetElement: // the event does not name the set's table
			return by, true
		}
	}
	return "", false
}

// watchRoutes reports each IPv4 route change; a subscription that ends is
// re-opened.
func (m *Manager) watchRoutes(ctx context.Context, notify func(string)) {
	for ctx.Err() == nil {
		ch := make(chan netlink.RouteUpdate, 64)
		done := make(chan struct{})
		opts := netlink.RouteSubscribeOptions{ErrorCallback: func(err error) {
			if ctx.Err() == nil {
				m.o.Logger.Debug("route watch", "err", err)
			}
		}}
		if m.o.NetNS > 0 {
			ns := m.o.NetNS
			opts.Namespace = &ns
		}
		if err := netlink.RouteSubscribeWithOptions(ch, done, opts); err != nil {
			m.o.Logger.Warn("cannot watch the host's routes (periodic checks only)", "err", err)
			return
		}
		stop := context.AfterFunc(ctx, func() { close(done) })
		for u := range ch {
			if u.Family == netlink.FAMILY_V4 {
				notify("route change")
			}
		}
		if stop() {
			close(done)
		}
		if ctx.Err() == nil {
			notify("route watch re-opened")
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}
