package network

import (
	"bytes"
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-sh/banger/internal/system"
)

// TestQEMUOpensPoolTap checks that QEMU attaches to a tap as this package
// creates it (persistent, vnet_hdr, no_pi) — the way the qemu backend uses
// vmm.NIC.Tap. The guest is never booted (-S: paused at reset).
func TestQEMUOpensPoolTap(t *testing.T) {
	if _, err := system.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip(err)
	}
	host := newNS(t)
	m, st := newManager(t, host, t.TempDir(), -1)
	defer st.Close()
	defer teardown(t, host, m)
	l, err := m.Attach(context.Background(), "q", EgressNAT)
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	p, err := system.Start(system.Opts{Stderr: &stderr}, "ip", "netns", "exec", host.Name,
		"qemu-system-x86_64", "-M", "microvm", "-accel", "tcg", "-nodefaults", "-no-user-config", "-display", "none", "-S",
		"-netdev", "tap,id=n0,ifname="+l.Tap+",script=no,downscript=no",
		"-device", "virtio-net-device,netdev=n0,mac="+l.MAC)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.Wait() }()
	select {
	case err := <-done:
		t.Fatalf("qemu exited: %v: %s", err, stderr.String())
	case <-time.After(1500 * time.Millisecond):
	}
	out := host.exec(t, "ip", "-d", "link", "show", l.Tap)
	p.Signal(syscall.SIGKILL)
	<-done
	if !strings.Contains(out, "LOWER_UP") {
		t.Errorf("tap has no carrier while qemu holds it:\n%s", out)
	}
}
