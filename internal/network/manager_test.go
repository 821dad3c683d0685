package network

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

func waitFor(t testing.TB, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// linkInfo reports (exists, master name, isolated) of a link in ns.
func linkInfo(t testing.TB, ns *testNS, name string) (bool, string, bool) {
	t.Helper()
	h, err := netlink.NewHandleAt(ns.H)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		return false, "", false
	}
	master := ""
	if mi := l.Attrs().MasterIndex; mi > 0 {
		if ml, err := h.LinkByIndex(mi); err == nil {
			master = ml.Attrs().Name
		}
	}
	iso := l.Attrs().Protinfo != nil && l.Attrs().Protinfo.Isolated
	if !iso {
		out := ns.exec(t, "ip", "-d", "link", "show", name)
		iso = strings.Contains(out, "isolated on")
	}
	return true, master, iso
}

func TestBridgeAndTapPool(t *testing.T) {
	ns := newNS(t)
	m, st := newManager(t, ns, t.TempDir(), 2)
	defer st.Close()
	defer teardown(t, ns, m)
	ctx := context.Background()

	out := ns.exec(t, "ip", "-br", "addr", "show", "bgr0")
	if !strings.Contains(out, "172.30.0.1/24") {
		t.Fatalf("bridge address: %s", out)
	}
	waitFor(t, "pool of 2", func() bool { return m.PoolLen() == 2 })
	for _, tap := range m.pool {
		ok, master, iso := linkInfo(t, ns, tap)
		if !ok || master != "bgr0" || !iso {
			t.Fatalf("pool tap %s: exists %v master %q isolated %v", tap, ok, master, iso)
		}
	}
	t0 := time.Now()
	tap, err := m.AcquireTap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("acquire from pool: %v", time.Since(t0))
	waitFor(t, "refill to 2", func() bool { return m.PoolLen() == 2 })
	if ok, _, _ := linkInfo(t, ns, tap); !ok {
		t.Fatalf("acquired tap %s missing", tap)
	}
	// The pool empties under a burst; acquires still succeed (created inline).
	var taps []string
	for i := 0; i < 5; i++ {
		tp, err := m.AcquireTap(ctx)
		if err != nil {
			t.Fatal(err)
		}
		taps = append(taps, tp)
	}
	seen := map[string]bool{tap: true}
	for _, tp := range taps {
		if seen[tp] || len(tp) > 15 {
			t.Fatalf("tap %s handed out twice or too long (%v)", tp, taps)
		}
		seen[tp] = true
	}
	for _, tp := range append(taps, tap) {
		if err := m.ReleaseTap(ctx, tp); err != nil {
			t.Fatal(err)
		}
	}
	// Reconcile while the pool refills never deletes a pool tap.
	for i := 0; i < 10; i++ {
		tp, err := m.AcquireTap(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Reconcile(ctx, nil); err != nil {
			t.Fatal(err)
		}
		if ok, _, _ := linkInfo(t, ns, tp); !ok {
			t.Fatalf("Reconcile deleted tap %s that was handed out", tp)
		}
		m.ReleaseTap(ctx, tp)
	}
	waitFor(t, "refill to 2", func() bool { return m.PoolLen() == 2 })
	m.mu.Lock()
	pool := append([]string(nil), m.pool...)
	m.mu.Unlock()
	for _, tp := range pool {
		if ok, _, _ := linkInfo(t, ns, tp); !ok {
			t.Fatalf("pool tap %s was deleted", tp)
		}
	}
	// Close removes the spares: no tap is left (the released ones are gone).
	waitFor(t, "refill to 2", func() bool { return m.PoolLen() == 2 })
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if out := ns.exec(t, "ip", "-br", "link"); strings.Contains(out, "bgt") {
		t.Fatalf("spare taps left after Close:\n%s", out)
	}
	// Start again is idempotent (bridge exists).
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestConcurrentLeases(t *testing.T) {
	ns := newNS(t)
	dir := t.TempDir()
	m, st := newManager(t, ns, dir, 2)
	defer st.Close()
	defer teardown(t, ns, m)
	ctx := context.Background()

	const n = 20
	leases := make([]*Lease, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			egress := EgressNAT
			if i%2 == 1 {
				egress = EgressNone
			}
			leases[i], errs[i] = m.Attach(ctx, fmt.Sprintf("vm%02d", i), egress)
		}()
	}
	wg.Wait()
	addrs, taps, macs := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for i, l := range leases {
		if errs[i] != nil {
			t.Fatalf("attach %d: %v", i, errs[i])
		}
		if addrs[l.Addr.String()] || taps[l.Tap] || macs[l.MAC] {
			t.Fatalf("duplicate in %+v", l)
		}
		if !m.Subnet().Contains(l.Addr) || l.Addr == m.Gateway() || l.Addr == m.Subnet().Addr() {
			t.Fatalf("bad address %s", l.Addr)
		}
		addrs[l.Addr.String()], taps[l.Tap], macs[l.MAC] = true, true, true
		if ok, master, iso := linkInfo(t, ns, l.Tap); !ok || master != "bgr0" || !iso {
			t.Fatalf("tap %s: %v %q %v", l.Tap, ok, master, iso)
		}
	}
	// Persisted: a second store handle on the same file sees all 20.
	st2 := openStore(t, filepath.Join(dir, "state.db"))
	defer st2.Close()
	sl, err := st2.ListLeases(ctx)
	if err != nil || len(sl) != n {
		t.Fatalf("stored leases: %d %v", len(sl), err)
	}
	for _, l := range sl {
		if !addrs[l.Addr] || !taps[l.Tap] {
			t.Fatalf("stored lease %+v not handed out", l)
		}
	}
	owners, err := m.RuleOwners()
	if err != nil || len(owners) != n {
		t.Fatalf("rule owners: %v %v", owners, err)
	}
	// Attach again returns the same lease.
	again, err := m.Attach(ctx, "vm03", EgressNAT)
	if err != nil || *again != *leases[3] {
		t.Fatalf("re-attach: %+v %v, want %+v", again, err, leases[3])
	}
}

func TestReleaseAndReacquire(t *testing.T) {
	ns := newNS(t)
	m, st := newManager(t, ns, t.TempDir(), 1)
	defer st.Close()
	defer teardown(t, ns, m)
	ctx := context.Background()

	a, err := m.Attach(ctx, "a", EgressNAT)
	if err != nil {
		t.Fatal(err)
	}
	b, err := m.Attach(ctx, "b", EgressNAT)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Detach(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := m.Detach(ctx, "a"); err != nil {
		t.Fatalf("second detach: %v", err)
	}
	if ok, _, _ := linkInfo(t, ns, a.Tap); ok {
		t.Fatalf("tap %s of a still exists", a.Tap)
	}
	if _, err := st.GetLease(ctx, "a"); err == nil {
		t.Fatal("lease of a still stored")
	}
	// c does not get a's address at once (the search starts after the last one).
	c, err := m.Attach(ctx, "c", EgressNAT)
	if err != nil {
		t.Fatal(err)
	}
	if c.Addr == a.Addr || c.Addr == b.Addr {
		t.Fatalf("c got %s (a %s, b %s)", c.Addr, a.Addr, b.Addr)
	}
	// Same VM id again: same MAC, new lease.
	a2, err := m.Attach(ctx, "a", EgressNone)
	if err != nil {
		t.Fatal(err)
	}
	if a2.MAC != a.MAC || a2.Egress != EgressNone {
		t.Fatalf("a again: %+v", a2)
	}
	owners, _ := m.RuleOwners()
	if strings.Join(owners, ",") != "a,b,c" {
		t.Fatalf("rule owners %v", owners)
	}
	gn := m.GuestNet(a2)
	if gn.Interface != "eth0" || gn.Address.String() != a2.Addr.String()+"/24" || gn.Gateway.String() != "172.30.0.1" ||
		len(gn.DNS) != 1 || gn.DNS[0] != gn.Gateway || gn.SearchDomain != "vm" || gn.MAC != a.MAC {
		t.Fatalf("guest net %+v", gn)
	}
}

func TestReconcileAfterCrash(t *testing.T) {
	ns := newNS(t)
	dir := t.TempDir()
	m, st := newManager(t, ns, dir, 2)
	ctx := context.Background()
	var leases []*Lease
	for _, id := range []string{"keep", "gone1", "gone2", "keep2"} {
		egress := EgressNAT
		if id == "gone2" || id == "keep2" {
			egress = EgressShared
		}
		l, err := m.Attach(ctx, id, egress)
		if err != nil {
			t.Fatal(err)
		}
		leases = append(leases, l)
	}
	waitFor(t, "pool of 2", func() bool { return m.PoolLen() == 2 })
	// Crash: the refill goroutine stops, nothing is cleaned, memory is lost.
	m.mu.Lock()
	m.cancel()
	m.mu.Unlock()
	m.wg.Wait()
	st.Close()
	// A host reboot would also lose taps: drop keep2's.
	h, _ := netlink.NewHandleAt(ns.H)
	l, err := h.LinkByName(leases[3].Tap)
	if err != nil {
		t.Fatal(err)
	}
	h.LinkDel(l)
	h.Close()

	m2, st2 := newManager(t, ns, dir, -1) // no pool: count taps exactly
	defer st2.Close()
	defer teardown(t, ns, m2)
	if err := m2.Reconcile(ctx, []string{"keep", "keep2", "vm-without-lease"}); err != nil {
		t.Fatal(err)
	}
	sl, _ := st2.ListLeases(ctx)
	var ids []string
	for _, l := range sl {
		ids = append(ids, l.VMID)
	}
	if strings.Join(ids, ",") != "keep,keep2" {
		t.Fatalf("leases after reconcile: %v", ids)
	}
	out := ns.exec(t, "ip", "-br", "link")
	var taps []string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], "bgt") {
			taps = append(taps, strings.Split(f[0], "@")[0])
		}
	}
	if strings.Join(taps, ",") != leases[0].Tap+","+leases[3].Tap && strings.Join(taps, ",") != leases[3].Tap+","+leases[0].Tap {
		t.Fatalf("taps after reconcile: %v (want %s %s)\n%s", taps, leases[0].Tap, leases[3].Tap, out)
	}
	if ok, master, iso := linkInfo(t, ns, leases[3].Tap); !ok || master != "bgr0" || iso { // shared: not isolated
		t.Fatalf("keep2's tap not re-created properly: %v %q %v", ok, master, iso)
	}
	if ok, master, iso := linkInfo(t, ns, leases[0].Tap); !ok || master != "bgr0" || !iso {
		t.Fatalf("keep's tap: %v %q %v", ok, master, iso)
	}
	owners, _ := m2.RuleOwners()
	if strings.Join(owners, ",") != "keep,keep2" {
		t.Fatalf("rules after reconcile: %v", owners)
	}
	dump := nftDump(t, ns, "banger") + ns.exec(t, "nft", "list", "table", "bridge", "banger")
	if strings.Contains(dump, "gone") || !strings.Contains(dump, `oifname "`+leases[3].Tap+`" accept comment "vm=keep2"`) {
		t.Fatalf("orphan rules left:\n%s", dump)
	}
}

func TestRulesDump(t *testing.T) {
	ns := newNS(t)
	m, st := newManager(t, ns, t.TempDir(), -1)
	defer st.Close()
	defer teardown(t, ns, m)
	ctx := context.Background()
	if _, err := m.Attach(ctx, "natvm", EgressNAT); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Attach(ctx, "novm", EgressNone); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Attach(ctx, "sh1", EgressShared); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Attach(ctx, "sh2", EgressShared); err != nil {
		t.Fatal(err)
	}
	dump := nftDump(t, ns, "banger") + ns.exec(t, "nft", "list", "table", "bridge", "banger")
	compareGolden(t, "rules_vms.nft", dump)
	// A rebuild (Start, Reconcile) makes the same table as the per-VM
	// changes did.
	if err := m.syncRules(); err != nil {
		t.Fatal(err)
	}
	if again := nftDump(t, ns, "banger") + ns.exec(t, "nft", "list", "table", "bridge", "banger"); again != dump {
		t.Fatalf("rebuilt table differs:\n%s\n--- was\n%s", again, dump)
	}
	for _, id := range []string{"natvm", "novm", "sh1", "sh2"} {
		if err := m.Detach(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	compareGolden(t, "rules_empty.nft", nftDump(t, ns, "banger")+ns.exec(t, "nft", "list", "table", "bridge", "banger"))
	if v := strings.TrimSpace(ns.exec(t, "cat", "/proc/sys/net/ipv4/ip_forward")); v != "1" {
		t.Fatalf("ip_forward = %s", v)
	}
}

func compareGolden(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if os.Getenv("UPDATE_GOLDEN") != "" {
		os.MkdirAll("testdata", 0o755)
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (UPDATE_GOLDEN=1 writes it)", err)
	}
	if string(want) != got {
		t.Fatalf("%s differs:\n--- want\n%s\n--- got\n%s", name, want, got)
	}
}

func TestSubnetConflicts(t *testing.T) {
	ns := newNS(t)
	m, st := newManager(t, ns, t.TempDir(), -1)
	defer st.Close()
	defer teardown(t, ns, m)
	check := func() []string {
		var got []string
		ns.do(t, func() error {
			var err error
			got, err = SubnetConflicts(m.Subnet(), m.Bridge())
			return err
		})
		return got
	}
	if got := check(); len(got) != 0 {
		t.Fatalf("conflicts with only the bridge: %v", got)
	}
	ns.exec(t, "ip", "link", "add", "other0", "type", "veth", "peer", "name", "other1")
	ns.exec(t, "ip", "addr", "add", "172.30.0.0/16", "dev", "other0")
	ns.exec(t, "ip", "link", "set", "other0", "up")
	defer ns.exec(t, "ip", "link", "del", "other0")
	if got := check(); len(got) != 1 || got[0] != "172.30.0.0/16 dev other0" {
		t.Fatalf("conflicts: %v", got)
	}
}
