package qemu_test

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/banger-sh/banger/internal/agent"
	"github.com/banger-sh/banger/internal/disk"
	"github.com/banger-sh/banger/internal/vmm"
	"github.com/banger-sh/banger/internal/vmm/qemu"
	"github.com/banger-sh/banger/internal/vmm/vmmtest"
)

// makeTemplate boots env's guest with a snapshot dir, a spare work-disk
// slot of workBytes and a NIC slot, waits for the agent, and snapshots it.
func makeTemplate(t *testing.T, b *qemu.Backend, env vmmtest.Env, workBytes int64) (vmm.Spec, string) {
	t.Helper()
	ctx := context.Background()
	spec := newSpec(t, env)
	base := filepath.Dir(spec.RuntimeDir)
	dir := filepath.Join(base, "snap")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	spec.SnapshotDir = dir
	if workBytes > 0 {
		spec.Disks = []vmm.Disk{{Path: filepath.Join(base, "work.img"), Format: "raw"}}
		if err := os.WriteFile(spec.Disks[0].Path, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(spec.Disks[0].Path, workBytes); err != nil {
			t.Fatal(err)
		}
	}
	spec.NICs = []vmm.NIC{{MAC: "02:ba:00:00:00:01"}}
	h := startVM(t, b, spec)
	waitAgent(t, b, h, 90*time.Second)
	time.Sleep(500 * time.Millisecond)
	if err := b.Snapshot(ctx, h, dir); err != nil {
		t.Fatal(err)
	}
	return spec, dir
}

// cloneSpec is a clone of the template tpl (snapshot in dir).
func cloneSpec(t *testing.T, env vmmtest.Env, tpl vmm.Spec, dir string) vmm.Spec {
	t.Helper()
	c := newSpec(t, env)
	os.Remove(c.Root.Path)
	if err := disk.CreateOverlay(context.Background(), tpl.Root.Path, "qcow2", c.Root.Path, 0); err != nil {
		t.Fatal(err)
	}
	for i, d := range tpl.Disks {
		p := filepath.Join(filepath.Dir(c.RuntimeDir), "disk"+strconv.Itoa(i)+".img")
		fi, err := os.Stat(d.Path)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(p, fi.Size()); err != nil {
			t.Fatal(err)
		}
		c.Disks = append(c.Disks, vmm.Disk{Path: p, Format: d.Format})
	}
	c.NICs = []vmm.NIC{{MAC: "02:ba:00:00:00:02"}}
	c.Restore = &vmm.Snapshot{Dir: dir}
	return c
}

// waitAgent dials and pings until the agent answers; it returns the
// client (closed at cleanup).
func waitAgent(t *testing.T, b *qemu.Backend, h vmm.Handle, max time.Duration) {
	t.Helper()
	c := dialAgent(t, b, h, max)
	c.Close()
}

func dialAgent(t *testing.T, b *qemu.Backend, h vmm.Handle, max time.Duration) *agent.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), max)
	defer cancel()
	for {
		conn, err := b.DialAgent(ctx, h)
		if err == nil {
			var c *agent.Client
			c, err = agent.Dial(ctx, conn)
			if err == nil {
				if _, err = c.Ping(ctx); err == nil {
					return c
				}
				c.Close()
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("agent: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRestorePhases times the phases of a restore (run with -v;
// BANGER_MEASURE rounds).
func TestRestorePhases(t *testing.T) {
	b := needQEMU(t)
	env := vmmtest.AgentGuest(t)
	tpl, dir := makeTemplate(t, b, env, 0)
	rounds := 3
	if n, err := strconv.Atoi(os.Getenv("BANGER_MEASURE")); err == nil && n > 0 {
		rounds = n
	}
	ctx := context.Background()
	for i := 0; i < rounds; i++ {
		c := cloneSpec(t, env, tpl, dir)
		t0 := time.Now()
		h, err := b.Start(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		tStart := time.Since(t0)
		conn, err := b.DialAgent(ctx, h)
		if err != nil {
			t.Fatal(err)
		}
		tDial := time.Since(t0)
		ac, err := agent.Dial(ctx, conn)
		if err != nil {
			t.Fatal(err)
		}
		tHS := time.Since(t0)
		if _, err := ac.Ping(ctx); err != nil {
			t.Fatal(err)
		}
		tPing := time.Since(t0)
		ac.Close()
		b.Kill(ctx, h)
		t.Logf("round %d: Start %v, dial %v, handshake %v, ping %v", i, tStart, tDial, tHS, tPing)
	}
}
