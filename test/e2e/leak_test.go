package e2e

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	_ "modernc.org/sqlite"

	"github.com/banger-sh/banger/internal/network"
)

// The leak checker. Every e2e test that calls env(t) gets one (guard): a
// snapshot of this harness's world when the test starts and another after
// the test's own cleanups; whatever the second holds that the first did
// not and that no kept VM owns fails the test, named.
//
// The world is: links carrying the harness's prefix (netlink), the chains
// of its nftables tables and their per-VM rules (comment "vm=ID"), files
// under the home's state, runtime and cache directories (caches excluded),
// processes whose command line names the home, and the store's rows (VMs,
// leases, runs, images), read from the database directly.
//
// The opt-out: the VMs that tests share on purpose (longLivedVMs) are
// kept, with everything they own; teardown, once every VM is deleted,
// compares the world with the one after setup (checkFinal), so that what
// the shared VMs leave is checked at the end of the shared fixture.

// world is one snapshot; every map is keyed by a leftover's description.
type world struct {
	links  map[string]bool      // tap name
	chains map[string]bool      // "family table/chain"
	rules  map[string]string    // "family table/chain rule …" → owning VM id
	files  map[string]bool      // path relative to the home
	procs  map[int]string       // pid → command line
	vms    map[string][2]string // id → name, state
	leases map[string]string    // vm id → "addr tap mac"
	taps   map[string]string    // lease tap → vm id
	runs   map[string]string    // id → state
	images map[string]string    // id → name
}

// cacheSkips are the subtrees of the home that are caches (their entries
// live on by design) or the daemon's own files.
var cacheSkips = []string{
	"cache/images", "cache/build", "cache/initrd", "cache/templates", "cache/workdisks",
	"run/tpl", // a warm-start template being built in the background (teardown checks it is gone)
	"state/ssh", "state/bangerd.log", "state/bangerd.out", "state/state.db",
	"run/bangerd.sock", "run/bangerd.lock", "run/bangerd.pid", "owner.pid", "config", "bin",
}

func (h *harness) nftTable() string {
	i := strings.Index(h.cfg, "nft_table = \"")
	if i < 0 {
		return ""
	}
	rest := h.cfg[i+len("nft_table = \""):]
	return rest[:strings.IndexByte(rest, '"')]
}

// snapshot reads the world of h. It returns an error only when a part
// cannot be read at all (then the check would be blind).
func (h *harness) snapshot() (*world, error) {
	w := &world{links: map[string]bool{}, chains: map[string]bool{}, rules: map[string]string{},
		files: map[string]bool{}, procs: map[int]string{}, vms: map[string][2]string{},
		leases: map[string]string{}, taps: map[string]string{}, runs: map[string]string{}, images: map[string]string{}}
	links, err := network.ListLinks()
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		if n := l.Attrs().Name; h.bridge != "" && strings.HasPrefix(n, h.bridge+"t") {
			w.links[n] = true // a tap (the bridge is the daemon's: teardown checks it)
		}
	}
	if err := h.snapNft(w); err != nil {
		return nil, err
	}
	err = filepath.WalkDir(h.home, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil // removed while walking
			}
			return err
		}
		rel, _ := filepath.Rel(h.home, p)
		if rel == "." {
			return nil
		}
		for _, s := range cacheSkips {
			if rel == s || strings.HasPrefix(rel, s+"/") || (s == "state/state.db" && strings.HasPrefix(rel, s)) {
				if d.IsDir() {
					return filepath.SkipDir
				}
				return nil
			}
		}
		if !d.IsDir() || !slices.Contains([]string{"state", "cache", "run", "state/vms", "run/vm", "state/runs", "cache/tmp", "state/spool", "state/uploads", "cache/images"}, rel) {
			w.files[rel] = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("walk %s: %w", h.home, err)
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(b, []byte(h.home+"/")) {
			continue
		}
		w.procs[pid] = string(bytes.TrimRight(bytes.ReplaceAll(b, []byte{0}, []byte{' '}), " "))
	}
	if err := h.snapStore(w); err != nil {
		return nil, err
	}
	return w, nil
}

func (h *harness) snapNft(w *world) error {
	table := h.nftTable()
	if table == "" {
		return nil
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	defer c.CloseLasting()
	for _, fam := range []struct {
		f    nftables.TableFamily
		name string
	}{{nftables.TableFamilyINet, "inet"}, {nftables.TableFamilyBridge, "bridge"}} {
		chains, err := c.ListChainsOfTableFamily(fam.f)
		if err != nil {
			return fmt.Errorf("list nft chains: %w", err)
		}
		for _, ch := range chains {
			if ch.Table.Name != table {
				continue
			}
			key := fam.name + " " + table + "/" + ch.Name
			w.chains[key] = true
			rules, err := c.GetRules(ch.Table, ch)
			if err != nil {
				return fmt.Errorf("list nft rules of %s: %w", key, err)
			}
			for _, r := range rules {
				s, ok := userdata.GetString(r.UserData, userdata.TypeComment)
				if !ok || !strings.HasPrefix(s, "vm=") {
					continue // a base rule (the guard chain follows the host's networks)
				}
				n := 0
				for {
					k := fmt.Sprintf("%s rule %s #%d", key, s, n)
					if _, dup := w.rules[k]; !dup {
						w.rules[k] = s[3:]
						break
					}
					n++
				}
			}
		}
	}
	return nil
}

func (h *harness) snapStore(w *world) error {
	path := filepath.Join(h.home, "state", "state.db")
	if _, err := os.Stat(path); os.IsNotExist(err) {
		return nil
	}
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro&_pragma=busy_timeout(10000)")
	if err != nil {
		return err
	}
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	q := func(query string, scan func(*sql.Rows) error) error {
		rows, err := db.QueryContext(ctx, query)
		if err != nil {
			return fmt.Errorf("store %s: %w", query, err)
		}
		defer rows.Close()
		for rows.Next() {
			if err := scan(rows); err != nil {
				return err
			}
		}
		return rows.Err()
	}
	var a, b, c, d string
	return errorsJoin(
		q("SELECT id, name, state FROM vms", func(r *sql.Rows) error {
			err := r.Scan(&a, &b, &c)
			w.vms[a] = [2]string{b, c}
			return err
		}),
		q("SELECT vm_id, addr, tap, mac FROM leases", func(r *sql.Rows) error {
			err := r.Scan(&a, &b, &c, &d)
			w.leases[a] = b + " " + c + " " + d
			w.taps[c] = a
			return err
		}),
		q("SELECT id, state FROM runs", func(r *sql.Rows) error {
			err := r.Scan(&a, &b)
			w.runs[a] = b
			return err
		}),
		q("SELECT id, name FROM images", func(r *sql.Rows) error {
			err := r.Scan(&a, &b)
			w.images[a] = b
			return err
		}),
	)
}

func errorsJoin(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// spareTaps is how many taps without a lease the daemon keeps ready.
const spareTaps = 2

// leftovers lists what after holds that before did not and that no kept
// VM (by name) owns. With before nil, everything but the daemon's own
// infrastructure counts.
func leftovers(before, after *world, keep []string) []string {
	if before == nil {
		before = &world{}
	}
	kept := map[string]bool{} // vm ids
	for id, v := range after.vms {
		if slices.Contains(keep, v[0]) {
			kept[id] = true
		}
	}
	var out []string
	add := func(f string, a ...any) { out = append(out, fmt.Sprintf(f, a...)) }
	for id, v := range after.vms {
		if _, old := before.vms[id]; !old && !kept[id] {
			add("store row: vm %s (%s, %s)", v[0], id, v[1])
		}
	}
	for id, l := range after.leases {
		_, vm := after.vms[id]
		if _, old := before.leases[id]; !old && (!vm || !kept[id]) {
			add("store row: lease of vm %s: %s", id, l)
		}
	}
	for id, st := range after.runs {
		if _, old := before.runs[id]; !old && st == "running" {
			add("store row: run %s still %s", id, st)
		}
	}
	for id, n := range after.images {
		if _, old := before.images[id]; !old {
			add("store row: image %s (%s)", n, id)
		}
	}
	unowned := 0
	var newUnowned []string
	for _, n := range sortedKeys(after.links) {
		vm, leased := after.taps[n]
		switch {
		case leased && kept[vm]:
		case leased:
			if !before.links[n] {
				add("link %s (the tap of vm %s)", n, vm)
			}
		default:
			// A tap without a lease: the spare pool, or a leak.
			unowned++
			if !before.links[n] {
				newUnowned = append(newUnowned, n)
			}
		}
	}
	if unowned > spareTaps {
		for _, n := range newUnowned {
			add("link %s (a tap without a lease, beyond the pool of %d)", n, spareTaps)
		}
	}
	for _, k := range sortedKeys(after.chains) {
		if !before.chains[k] && len(before.chains) > 0 {
			add("nft chain %s", k)
		}
	}
	for _, k := range sortedKeys(after.rules) {
		vm := after.rules[k]
		_, exists := after.vms[vm]
		if _, old := before.rules[k]; !old && (!exists || !kept[vm]) {
			add("nft %s", k)
		}
	}
	for _, f := range sortedKeys(after.files) {
		if before.files[f] || ownedFile(f, after, kept) {
			continue
		}
		add("file %s", f)
	}
	for _, pid := range sortedKeys(after.procs) {
		cmd := after.procs[pid]
		if _, old := before.procs[pid]; old || strings.Contains(cmd, "banger-tpl-") || strings.Contains(cmd, "bangerd") {
			continue
		}
		if id := vmIDInCmdline(cmd); id != "" && kept[id] {
			continue
		}
		if len(cmd) > 160 {
			cmd = cmd[:160] + "…"
		}
		add("process %d: %s", pid, cmd)
	}
	sort.Strings(out)
	return out
}

// ownedFile: a file under a kept VM's state or runtime directory, or the
// directory of a finished run that has its row.
func ownedFile(f string, w *world, kept map[string]bool) bool {
	parts := strings.Split(f, "/")
	if len(parts) < 3 {
		return false
	}
	switch parts[0] + "/" + parts[1] {
	case "state/vms", "run/vm":
		return kept[parts[2]]
	case "state/runs":
		_, ok := w.runs[parts[2]]
		return ok
	}
	return false
}

func vmIDInCmdline(cmd string) string {
	const mark = "/run/vm/"
	i := strings.Index(cmd, mark)
	if i < 0 {
		return ""
	}
	rest := cmd[i+len(mark):]
	if j := strings.IndexByte(rest, '/'); j > 0 {
		return rest[:j]
	}
	return ""
}

func sortedKeys[K int | string, V any](m map[K]V) []K {
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

var (
	guardMu sync.Mutex
	guarded = map[*testing.T]bool{}
)

// guard snapshots h's world now and, after every cleanup the test
// registers later, fails t naming each leftover. Called by env, so once
// per test; a second call for the same t does nothing.
func (h *harness) guard(t *testing.T) {
	guardMu.Lock()
	if guarded[t] {
		guardMu.Unlock()
		return
	}
	guarded[t] = true
	guardMu.Unlock()
	before, err := h.snapshot()
	if err != nil {
		t.Fatalf("leak checker: %v", err)
	}
	t.Cleanup(func() {
		guardMu.Lock()
		delete(guarded, t)
		guardMu.Unlock()
		h.checkLeaks(t, before, longLivedVMs)
	})
}

// checkLeaks fails t for everything in the world now that before lacks
// and the VMs named keep do not own. A VM being deleted or a process
// exiting may take a moment: it retries for a few seconds before it fails.
func (h *harness) checkLeaks(t *testing.T, before *world, keep []string) {
	t.Helper()
	var left []string
	for deadline := time.Now().Add(10 * time.Second); ; {
		after, err := h.snapshot()
		if err != nil {
			t.Errorf("leak checker: %v", err)
			return
		}
		if left = leftovers(before, after, keep); len(left) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	for _, l := range left {
		t.Errorf("leak checker: left behind: %s", l)
	}
}
