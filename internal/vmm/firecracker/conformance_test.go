package firecracker

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/banger-sh/banger/internal/system"
	"github.com/banger-sh/banger/internal/vmm"
	"github.com/banger-sh/banger/internal/vmm/vmmtest"
)

// TestConformance runs the vmm conformance suite against a real
// firecracker where one can run: /dev/kvm is standard hardware KVM and a
// firecracker binary (1.16+) is in PATH. Elsewhere (this project's
// machines: PVM-only KVM, no binary) it is skipped with the reason,
// never counted as passed.
func TestConformance(t *testing.T) {
	if testing.Short() {
		t.Skip("boots real VMs (not in -short)")
	}
	b := New()
	if a := b.Available(context.Background()); !a.OK {
		t.Skipf("firecracker cannot run here: %s", a.Reason)
	}
	env := vmmtest.AgentGuest(t)
	if err := CheckKernel(env.Kernel); err != nil {
		t.Skipf("the test image has no ELF vmlinux: %v", err)
	}
	// Firecracker takes raw roots only: each VM (and each snapshot clone,
	// from the template's root) gets a sparse (or reflink) copy.
	env.RootDisk = func(ctx context.Context, base, format, dir string) (vmm.Disk, error) {
		p := filepath.Join(dir, "root.ext4")
		if _, err := system.Run(ctx, "cp", "--sparse=always", "--reflink=auto", base, p); err != nil {
			return vmm.Disk{}, err
		}
		return vmm.Disk{Path: p, Format: "raw"}, nil
	}
	vmmtest.Run(t, b, env)
}
