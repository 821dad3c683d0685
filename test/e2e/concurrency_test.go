package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-sh/banger/api"
)

// TestParallelDistinctCreates: N (30; BANGER_TEST_PARALLEL) creates of
// distinct names at once on this 2-core host, real boots of the cheapest
// shape: each succeeds or fails cleanly (and then leaves nothing), and no
// id, name, address, tap or MAC is handed out twice, in the store or in
// the guests (each guest's eth0 has its own). There is no vsock CID:
// the host-guest channel is virtio-serial on this host.
func TestParallelDistinctCreates(t *testing.T) {
	h := env(t)
	n := 30
	if v, err := strconv.Atoi(os.Getenv("BANGER_TEST_PARALLEL")); err == nil && v > 0 {
		n = v
	}
	start := time.Now()
	var wg sync.WaitGroup
	codes := make([]int, n)
	outs := make([]result, n)
	for i := range n {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			outs[i], codes[i] = h.run(t, nil, "vm", "create", "--cold", "--vcpu", "1", "--mem", "160", fmt.Sprintf("par-%d", i))
		}(i)
	}
	wg.Wait()
	took := time.Since(start)
	var vms []api.VM
	if err := json.Unmarshal([]byte(h.must(t, "vm", "ls", "--json")), &vms); err != nil {
		t.Fatal(err)
	}
	byName := map[string]api.VM{}
	for _, v := range vms {
		byName[v.Name] = v
	}
	seen := map[string]string{} // "kind value" → vm
	once := func(kind, val, vm string) {
		if val == "" {
			t.Errorf("vm %s has no %s", vm, kind)
			return
		}
		if o, dup := seen[kind+" "+val]; dup {
			t.Errorf("%s %s handed out twice: %s and %s", kind, val, o, vm)
		}
		seen[kind+" "+val] = vm
	}
	for _, v := range vms { // the shared VMs too: they hold addresses
		once("id", v.ID, v.Name)
		if v.Net != "off" && v.State == "running" {
			once("address", v.IP, v.Name)
			once("tap", v.Tap, v.Name)
			once("mac", v.MAC, v.Name)
		}
	}
	ok := 0
	for i := range n {
		name := fmt.Sprintf("par-%d", i)
		v, exists := byName[name]
		switch {
		case codes[i] == 0 && (!exists || v.State != "running"):
			t.Errorf("create %s said ok, but the vm is %+v", name, v.State)
		case codes[i] == 0:
			ok++
			// The guest has what the host handed it.
			got := execOut(t, h, name, "sh", "-c", "cat /sys/class/net/eth0/address; ip -4 -o addr show eth0")
			if !strings.Contains(got, strings.ToLower(v.MAC)) || !strings.Contains(got, " "+v.IP+"/") {
				t.Errorf("vm %s: guest eth0 %q, host says %s %s", name, got, v.MAC, v.IP)
			}
		case exists:
			t.Errorf("create %s failed (exit %d: %s) but left a vm in state %s", name, codes[i], outs[i].stderr, v.State)
		default:
			t.Logf("create %s failed cleanly: exit %d: %s", name, codes[i], strings.TrimSpace(outs[i].stderr))
		}
	}
	t.Logf("%d parallel creates: %d succeeded in %.1f s", n, ok, took.Seconds())
	if ok < n/2 {
		t.Errorf("only %d of %d parallel creates succeeded", ok, n)
	}
	var del sync.WaitGroup
	for i := range n {
		if _, exists := byName[fmt.Sprintf("par-%d", i)]; exists {
			del.Add(1)
			go func(i int) {
				defer del.Done()
				h.must(t, "vm", "delete", "--force", fmt.Sprintf("par-%d", i))
			}(i)
		}
	}
	del.Wait()
	t.Logf("total with the deletes: %.1f s", time.Since(start).Seconds())
}

// TestParallelDeleteAndCreateOneName: creates and deletes of one name at
// once. Each ends in success or a clean error class (already exists, not
// found, conflict); afterwards the VM works or is gone, nothing else left.
func TestParallelDeleteAndCreateOneName(t *testing.T) {
	h := env(t)
	create := append(append([]string{"vm", "create"}, cheapVM...), "flip")
	h.must(t, create...)
	start := time.Now()
	var wg sync.WaitGroup
	const n = 3
	ops := make([]string, 0, 2*n)
	codes := make([]int, 2*n)
	outs := make([]result, 2*n)
	for i := range 2 * n {
		args := create
		if i%2 == 0 {
			args = []string{"vm", "delete", "--force", "flip"}
		}
		ops = append(ops, args[1])
		wg.Add(1)
		go func(i int, args []string) {
			defer wg.Done()
			outs[i], codes[i] = h.run(t, nil, args...)
		}(i, args)
	}
	wg.Wait()
	for i, c := range codes {
		e := outs[i].stderr
		if c != 0 && !strings.Contains(e, "already exists") && !strings.Contains(e, "not found") && !strings.Contains(e, "conflict") && !strings.Contains(e, "is creating") && !strings.Contains(e, "is deleting") {
			t.Errorf("%s %d: exit %d: %s", ops[i], i, c, e)
		}
		t.Logf("%s: exit %d %s", ops[i], c, strings.TrimSpace(e))
	}
	got := h.settle(t, "flip", false)
	t.Logf("after %d creates and %d deletes of one name at once: %s (%.1f s)", n, n, got, time.Since(start).Seconds())
}
