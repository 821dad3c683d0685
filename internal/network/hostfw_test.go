package network

import (
	"fmt"
	"os"
	"testing"

	"github.com/google/nftables"
)

// TestForwardDrops: a forward chain with policy drop in another table (as
// Docker's iptables -P FORWARD DROP makes it with iptables-nft) is found;
// banger's own table, chains that accept and chains on other hooks are
// not.
func TestForwardDrops(t *testing.T) {
	ns := newNS(t)
	find := func() string {
		t.Helper()
		got, err := ForwardDrops(ns.H, "banger")
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprint(got)
	}
	if got := find(); got != "[]" {
		t.Fatalf("empty namespace: %s", got)
	}
	drop, accept := nftables.ChainPolicyDrop, nftables.ChainPolicyAccept
	filter := &nftables.Table{Name: "filter", Family: nftables.TableFamilyIPv4}
	ns.do(t, func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		c.AddTable(filter)
		c.AddChain(&nftables.Chain{Name: "INPUT", Table: filter, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &drop})
		c.AddChain(&nftables.Chain{Name: "FORWARD", Table: filter, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &drop})
		c.AddChain(&nftables.Chain{Name: "DOCKER-USER", Table: filter})
		own := c.AddTable(&nftables.Table{Name: "banger", Family: nftables.TableFamilyINet})
		c.AddChain(&nftables.Chain{Name: "forward", Table: own, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &drop})
		other := c.AddTable(&nftables.Table{Name: "fw", Family: nftables.TableFamilyINet})
		c.AddChain(&nftables.Chain{Name: "forward", Table: other, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
		return c.Flush()
	})
	if got := find(); got != "[table ip filter chain FORWARD]" {
		t.Fatalf("found %s", got)
	}
	if got, _ := ForwardDrops(ns.H, "banger"); len(got) != 1 || !got[0].DockerUser {
		t.Fatalf("DOCKER-USER not seen: %+v", got)
	}
	// Banger's table, named otherwise, is someone else's.
	if got, _ := ForwardDrops(ns.H, "banger2"); fmt.Sprint(got) != "[table inet banger chain forward table ip filter chain FORWARD]" {
		t.Fatalf("with another own table: %v", got)
	}
	ns.do(t, func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		c.FlushRuleset()
		return c.Flush()
	})
	if got := find(); got != "[]" {
		t.Fatalf("after flush: %s", got)
	}
}

// TestForwardDropBlocksEgress shows what doctor warns about and that its
// fix works: with a forward chain of policy drop in another table, nat
// guests lose egress (and, with br_netfilter, shared guests each other)
// whatever banger's table accepts; accepting what comes from the bridge
// and the replies to it in that chain gives them back, and banger's own
// rules still keep a none guest in.
func TestForwardDropBlocksEgress(t *testing.T) {
	host := newNS(t)
	m, st := newManager(t, host, t.TempDir(), -1)
	defer st.Close()
	defer teardown(t, host, m)
	newWAN(t, host)
	n := addGuest(t, host, m, "n", EgressNAT)
	x := addGuest(t, host, m, "x", EgressNone)
	s1 := addGuest(t, host, m, "s1", EgressShared)
	s2 := addGuest(t, host, m, "s2", EgressShared)
	serveTCP(t, s2.ns, ":7000")
	s2addr := s2.lease.Addr.String() + ":7000"

	host.exec(t, "nft", "add table ip filter")
	host.exec(t, "nft", "add chain ip filter FORWARD { type filter hook forward priority filter; policy drop; }")
	defer host.exec(t, "nft", "delete table ip filter")
	got, err := ForwardDrops(host.H, m.o.Table)
	if err != nil || fmt.Sprint(got) != "[table ip filter chain FORWARD]" {
		t.Fatalf("ForwardDrops: %v %v", got, err)
	}
	blocked(t, "n -> wan under FORWARD drop", n.ns, wanAddr)
	brnf := false
	host.do(t, func() error {
		b, err := os.ReadFile("/proc/sys/net/bridge/bridge-nf-call-iptables")
		brnf = err == nil && len(b) > 0 && b[0] == '1'
		return nil
	})
	if brnf {
		blocked(t, "s1 -> s2 under FORWARD drop (br_netfilter)", s1.ns, s2addr)
	}
	// doctor's fix, as nft says `iptables -I FORWARD -i bgr0 -j ACCEPT` and
	// `iptables -I FORWARD -o bgr0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`.
	host.exec(t, "nft", `insert rule ip filter FORWARD oifname "bgr0" ct state related,established accept`)
	host.exec(t, "nft", `insert rule ip filter FORWARD iifname "bgr0" accept`)
	allowed(t, "n -> wan with the fix", n.ns, wanAddr, "hello 10.99.0.1\n")
	allowed(t, "s1 -> s2 with the fix", s1.ns, s2addr, "hello "+s1.lease.Addr.String()+"\n")
	blocked(t, "x -> wan with the fix", x.ns, wanAddr)
}
