package firecracker

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/banger-sh/banger/internal/system"
	"github.com/banger-sh/banger/internal/vmm"
	"github.com/banger-sh/banger/internal/vmm/vmmtest"
)

// TestConformanceWithFake runs the vmm conformance suite against this
// backend with fcfake as "firecracker" (a real detached process, this
// test binary) and banger's guest agent library as the guest behind the
// hybrid vsock. No kernel boots: what passes here is the backend's side
// of every rule (detached start, identity, contexts, kill, stale
// handles, two VMs, power-off, snapshot and clones, mismatches, nothing
// left behind) with Firecracker's API as the spec defines it. The real
// thing is TestConformance.
func TestConformanceWithFake(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the snapshot part gives its template a NIC slot: placeholder taps need root")
	}
	t.Setenv(envHelper, "1")
	t.Setenv(envGuest, "agent")
	t.Setenv(envCalls, "")
	base := filepath.Join(t.TempDir(), "base.ext4")
	if err := os.WriteFile(base, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(base, 8<<20); err != nil {
		t.Fatal(err)
	}
	cp := func(ctx context.Context, src, dst string) (vmm.Disk, error) {
		if _, err := system.Run(ctx, "cp", "--sparse=always", "--reflink=auto", src, dst); err != nil {
			return vmm.Disk{}, err
		}
		return vmm.Disk{Path: dst, Format: "raw"}, nil
	}
	vmmtest.Run(t, newBackend(), vmmtest.Env{
		Kernel:         os.Args[0], // an ELF file: what the backend and the fake check
		RootBase:       base,
		RootBaseFormat: "raw",
		RootDisk: func(ctx context.Context, base, _, dir string) (vmm.Disk, error) {
			return cp(ctx, base, filepath.Join(dir, "root.ext4"))
		},
		Ready:       vmmtest.PingAgent,
		PowerOff:    vmmtest.PowerOffAgent,
		BootTimeout: 20 * time.Second,
	})
}
