package network

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// logBuffer is a concurrency-safe log sink that also echoes to t.Log.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	t   testing.TB
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.t.Log(strings.TrimRight(string(p), "\n"))
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestRulesRestoredAfterFlush: someone else's `nft flush ruleset` (or a
// deleted rule, chain, set or table) is noticed, logged with who did it,
// and undone within a second: guests are isolated and guarded again
// without any VM being attached. The manager's own changes are not
// mistaken for someone else's.
func TestRulesRestoredAfterFlush(t *testing.T) {
	host := newNS(t)
	st := openStore(t, filepath.Join(t.TempDir(), "state.db"))
	defer st.Close()
	logs := &logBuffer{t: t}
	m, err := New(Options{
		Subnet: netip.MustParsePrefix("172.30.0.0/24"), Store: st, NetNS: host.H, PoolSize: -1, CheckInterval: 3 * time.Second,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer teardown(t, host, m)
	newWAN(t, host)
	newSite(t, host, "lan0", "192.168.77.1/24", "192.168.77.2/24")
	a := addGuest(t, host, m, "a", EgressNAT)
	b := addGuest(t, host, m, "b", EgressNone)
	serveTCP(t, b.ns, ":7000")
	time.Sleep(300 * time.Millisecond) // let the events of our own changes pass
	if strings.Contains(logs.String(), "changed outside banger") {
		t.Fatalf("the manager's own changes were taken for someone else's:\n%s", logs.String())
	}
	dump := func() string {
		return host.exec(t, "nft", "list", "table", "inet", "banger") + host.exec(t, "nft", "list", "table", "bridge", "banger")
	}
	want := dump()
	isolated := func(what string) {
		t.Helper()
		// A neighbour entry that failed in an earlier round would make
		// the next connect fail at once (EHOSTUNREACH), not time out.
		a.ns.exec(t, "ip", "neigh", "flush", "all")
		allowed(t, what+": a -> wan", a.ns, wanAddr, "hello 10.99.0.1\n")
		parallel(
			func() { blocked(t, what+": a -> b", a.ns, b.lease.Addr.String()+":7000") },
			func() { blocked(t, what+": b -> wan", b.ns, wanAddr) },
			func() { blocked(t, what+": a -> lan", a.ns, "192.168.77.2:80") },
		)
	}
	isolated("before")

	handle := func(chain, comment string) string {
		out := host.exec(t, "nft", "-a", "list", "chain", "inet", "banger", chain)
		mm := regexp.MustCompile(`comment "` + comment + `" # handle (\d+)`).FindStringSubmatch(out)
		if mm == nil {
			t.Fatalf("no rule %q in chain %s:\n%s", comment, chain, out)
		}
		return mm[1]
	}
	for _, tc := range []struct {
		what string
		argv func() []string
	}{
		{"flush ruleset", func() []string { return []string{"nft", "flush", "ruleset"} }},
		{"delete table", func() []string { return []string{"nft", "delete", "table", "bridge", "banger"} }},
		{"flush chain", func() []string { return []string{"nft", "flush", "chain", "inet", "banger", "guard"} }},
		{"flush set", func() []string { return []string{"nft", "flush", "set", "inet", "banger", "blocked"} }},
		{"delete rule", func() []string {
			return []string{"nft", "delete", "rule", "inet", "banger", "egress", "handle", handle("egress", "vm=b")}
		}},
	} {
		before := strings.Count(logs.String(), "rules restored")
		argv := tc.argv()
		t0 := time.Now()
		host.exec(t, argv...)
		waitFor(t, "rules restored after "+tc.what, func() bool { return strings.Count(logs.String(), "rules restored") > before })
		t.Logf("%s: restored in %v", tc.what, time.Since(t0).Round(time.Millisecond))
		if got := dump(); got != want {
			t.Fatalf("after %s the table differs:\n%s\n--- want\n%s", tc.what, got, want)
		}
		isolated("after " + tc.what)
	}
	if !regexp.MustCompile(`changed outside banger.*by="nft \(pid \d+\)"`).MatchString(logs.String()) {
		t.Errorf("the warning does not name nft and its pid:\n%s", logs.String())
	}

	// Past restoreBurst restores a minute, someone who keeps changing the
	// table is not fought in a loop: the periodic check restores it.
	for strings.Count(logs.String(), "rules restored") < restoreBurst {
		before := strings.Count(logs.String(), "rules restored")
		host.exec(t, "nft", "flush", "ruleset")
		waitFor(t, "rules restored", func() bool { return strings.Count(logs.String(), "rules restored") > before })
	}
	before := strings.Count(logs.String(), "rules restored")
	t0 := time.Now()
	host.exec(t, "nft", "flush", "ruleset")
	waitFor(t, "the backing-off error", func() bool { return strings.Contains(logs.String(), "keep being changed outside banger") })
	waitFor(t, "the periodic restore", func() bool { return strings.Count(logs.String(), "rules restored") > before })
	if d := time.Since(t0); d < 200*time.Millisecond {
		t.Errorf("restored after %v: not backed off", d)
	}
	if got := dump(); got != want {
		t.Fatalf("after the periodic restore the table differs:\n%s", got)
	}
}
