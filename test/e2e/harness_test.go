// Package e2e drives the real banger and bangerd binaries against real
// VMs (QEMU; TCG on hosts without usable KVM). Every test runs under an
// isolated BANGER_HOME, so a user's real banger state is never touched.
//
// The binaries come from $BANGER_TEST_BIN (make test sets it) or are built
// into a temporary directory with `make build`. The guest image is the
// shared test image from internal/image/imagetest (built once per machine
// into $BANGER_TEST_CACHE), imported as "default".
package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"banger/internal/image/imagetest"
	"banger/internal/system"
)

type harness struct {
	home string
	bin  string
}

var (
	setupOnce sync.Once
	shared    *harness
	setupErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if shared != nil {
		shared.teardown()
	}
	os.Exit(code)
}

// env returns the shared harness, setting it up on first use: binaries,
// an isolated home, the test image imported as "default".
func env(t *testing.T) *harness {
	t.Helper()
	if testing.Short() {
		t.Skip("boots real VMs: not run with -short")
	}
	setupOnce.Do(func() {
		h := &harness{}
		if h.home, setupErr = os.MkdirTemp("", "bge2e"); setupErr != nil {
			return
		}
		shared = h
		h.bin = os.Getenv("BANGER_TEST_BIN")
		if h.bin == "" {
			h.bin = filepath.Join(h.home, "bin")
			root, _ := filepath.Abs("../..")
			if _, err := system.RunOpts(context.Background(), system.Opts{Dir: root}, "make", "build", "BIN="+h.bin); err != nil {
				setupErr = err
				return
			}
		}
		img := imagetest.TestImage(t)
		out, code := h.run(t, nil, "image", "import", "default",
			"--kernel", filepath.Join(img, "vmlinux"), "--rootfs", filepath.Join(img, "rootfs.ext4"), "--modules", filepath.Join(img, "modules"))
		if code != 0 {
			setupErr = fmt.Errorf("image import: exit %d: %s", code, out.stderr)
		}
	})
	if setupErr != nil {
		t.Fatalf("e2e setup: %v", setupErr)
	}
	return shared
}

func (h *harness) environ() []string {
	return []string{"BANGER_HOME=" + h.home, "BANGER_BANGERD=" + filepath.Join(h.bin, "bangerd")}
}

type result struct {
	stdout, stderr string
}

// run runs banger with args and returns its output and exit code.
func (h *harness) run(t *testing.T, stdin io.Reader, args ...string) (result, int) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	_, err := system.RunOpts(ctx, system.Opts{Env: h.environ(), Stdin: stdin, Stdout: &out, Stderr: &errb},
		append([]string{filepath.Join(h.bin, "banger")}, args...)...)
	code := 0
	if err != nil {
		code = system.ExitCode(err)
		if code < 0 {
			t.Fatalf("banger %v: %v", args, err)
		}
	}
	return result{out.String(), errb.String()}, code
}

// must runs banger and fails the test unless it exits 0.
func (h *harness) must(t *testing.T, args ...string) string {
	t.Helper()
	r, code := h.run(t, nil, args...)
	if code != 0 {
		t.Fatalf("banger %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, r.stdout, r.stderr)
	}
	return r.stdout
}

// start starts banger in the background (for signal tests).
func (h *harness) start(t *testing.T, stdout, stderr io.Writer, args ...string) *system.Process {
	t.Helper()
	p, err := system.Start(system.Opts{Env: h.environ(), Stdout: stdout, Stderr: stderr},
		append([]string{filepath.Join(h.bin, "banger")}, args...)...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// vmmProcs lists live processes whose command line mentions this
// harness's home: the VMMs it started (and its daemon).
func (h *harness) vmmProcs() []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(b, []byte(h.home)) {
			continue
		}
		if bytes.Contains(b, []byte("qemu")) {
			out = append(out, e.Name()+": "+string(bytes.ReplaceAll(b, []byte{0}, []byte{' '}))[:80])
		}
	}
	return out
}

// assertNoLeftovers checks that no VM, VM directory, runtime directory or
// VMM process is left (other than the VMs named in keep).
func (h *harness) assertNoLeftovers(t *testing.T, keep ...string) {
	t.Helper()
	names := strings.Fields(h.must(t, "vm", "ls", "-q"))
	var extra []string
	for _, n := range names {
		found := false
		for _, k := range keep {
			found = found || k == n
		}
		if !found {
			extra = append(extra, n)
		}
	}
	if len(extra) > 0 {
		t.Errorf("VMs left behind: %v", extra)
	}
	if len(keep) == 0 {
		for _, d := range []string{filepath.Join(h.home, "state", "vms"), filepath.Join(h.home, "run", "vm")} {
			ents, _ := os.ReadDir(d)
			if len(ents) > 0 {
				t.Errorf("%s not empty: %d entries", d, len(ents))
			}
		}
		if p := h.vmmProcs(); len(p) > 0 {
			t.Errorf("VMM processes left: %v", p)
		}
	}
}

func (h *harness) teardown() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	env := system.Opts{Env: h.environ()}
	banger := filepath.Join(h.bin, "banger")
	if out, err := system.RunOpts(ctx, env, banger, "vm", "ls", "-q"); err == nil {
		for _, n := range strings.Fields(string(out)) {
			system.RunOpts(ctx, env, banger, "vm", "delete", "--force", n)
		}
	}
	system.RunOpts(ctx, env, banger, "daemon", "stop")
	// Last resort: nothing this run started may outlive it.
	for _, p := range h.vmmProcs() {
		var pid int
		fmt.Sscanf(p, "%d:", &pid)
		if pid > 0 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	os.RemoveAll(h.home)
}

var _ = errors.New

func exitCodeOf(err error) int {
	if err == nil {
		return 0
	}
	return system.ExitCode(err)
}
