// Package testhome makes throw-away banger homes for tests and examples
// that need a real daemon: a temporary BANGER_HOME whose daemon has its
// own bridge, taps, nftables table, subnet and DNS port (so that it never
// meets a user's real banger or another test run), with the shared test
// image imported as "default". It is for tests only.
package testhome

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/banger-sh/banger/internal/image/imagetest"
	"github.com/banger-sh/banger/internal/system"
)

// Home is one isolated banger home.
type Home struct {
	Dir    string // BANGER_HOME
	Bin    string // where banger and bangerd are
	Bridge string
}

// New makes a home under the system's temp dir. bin holds banger and
// bangerd (make build); slot (0-255) picks the subnet 172.31.slot.0/24
// and the link names, and must differ between homes that run at once.
func New(prefix, bin string, slot int) (*Home, error) {
	if _, err := os.Stat(filepath.Join(bin, "bangerd")); err != nil {
		return nil, fmt.Errorf("testhome: no bangerd in %s (make build): %w", bin, err)
	}
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return nil, err
	}
	h := &Home{Dir: dir, Bin: bin, Bridge: fmt.Sprintf("bgh%d", slot)}
	port, err := freeUDPPort()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	cfg := fmt.Sprintf("[network]\nsubnet = \"172.31.%d.0/24\"\ndns_port = %d\nbridge = %q\ntap_prefix = \"bgh%dt\"\nnft_table = \"banger_th_%d\"\n\n[vm]\nspares = 0\n",
		slot, port, h.Bridge, slot, slot)
	if err := os.MkdirAll(filepath.Join(dir, "config"), 0o755); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "config", "config.toml"), []byte(cfg), 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return h, nil
}

// Env is the environment that points banger (and client.FromEnv) at
// this home.
func (h *Home) Env() []string {
	return []string{"BANGER_HOME=" + h.Dir, "BANGER_BANGERD=" + filepath.Join(h.Bin, "bangerd")}
}

// Banger runs the CLI against this home.
func (h *Home) Banger(ctx context.Context, args ...string) ([]byte, error) {
	return system.RunOpts(ctx, system.Opts{Env: h.Env()}, append([]string{filepath.Join(h.Bin, "banger")}, args...)...)
}

// ImportTestImage builds the shared test image if needed and imports it
// as "default" (which starts the daemon).
func (h *Home) ImportTestImage(ctx context.Context, logf func(string, ...any)) error {
	img, err := imagetest.Ensure(ctx, logf)
	if err != nil {
		return err
	}
	_, err = h.Banger(ctx, "image", "import", "default", "--kernel", filepath.Join(img, "vmlinux"),
		"--rootfs", filepath.Join(img, "rootfs.ext4"), "--modules", filepath.Join(img, "modules"))
	return err
}

// Close deletes every VM, stops the daemon and removes the home. It
// reports what outlived the daemon (a bridge, a VMM process).
func (h *Home) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var errs []error
	if out, err := h.Banger(ctx, "vm", "ls", "-q"); err == nil {
		for _, n := range strings.Fields(string(out)) {
			if _, err := h.Banger(ctx, "vm", "delete", "--force", n); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if _, err := h.Banger(ctx, "daemon", "stop"); err != nil {
		errs = append(errs, err)
	}
	if _, err := net.InterfaceByName(h.Bridge); err == nil {
		errs = append(errs, fmt.Errorf("testhome: bridge %s outlived the daemon", h.Bridge))
	}
	os.RemoveAll(h.Dir)
	return errors.Join(errs...)
}

func freeUDPPort() (int, error) {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port, nil
}
