// Package freshroot proves the setup half of the README's first command on
// a machine that has nothing: a minimal Debian root made by debootstrap
// (--variant=minbase: no git, no ssh, no qemu, no kmod, no Go), with this
// host's apt configuration and nothing else of it. In that root, banger
// doctor must FAIL naming the missing packages; scripts/setup-host must
// then install everything; afterwards every program of banger's registry
// resolves there and doctor fails on none of them.
//
// This is the test that would have caught kmod (depmod) missing from
// setup-host: it does not trust the machine it runs on to have anything.
//
// The minbase root is built once per machine into
// $BANGER_TEST_CACHE/freshroot (as a tar), with the packages and the Go
// toolchain setup-host downloads, so a rerun costs an unpack and an
// install, not the downloads.
package freshroot

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/banger-sh/banger/internal/image"
	"github.com/banger-sh/banger/internal/image/imagetest"
	"github.com/banger-sh/banger/internal/system"
)

func TestSetupHostOnAFreshDebianRoot(t *testing.T) {
	if testing.Short() {
		t.Skip("runs debootstrap and apt-get: not run with -short")
	}
	if os.Geteuid() != 0 {
		t.Fatal("needs root (debootstrap, chroot): make test runs as root")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	cache, err := filepath.Abs(filepath.Join(imagetest.CacheDir(), "freshroot"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		t.Fatal(err)
	}
	unlock := lock(t, filepath.Join(cache, ".lock"))
	defer unlock()

	base := minbase(t, ctx, cache)
	root := filepath.Join(t.TempDir(), "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, ctx, "tar", "--extract", "--numeric-owner", "--file", base, "-C", root)
	prepareRoot(t, ctx, root, cache)

	// Before: doctor FAILs on every program the root lacks, naming its
	// package, and passes those it has. A bare root lacks at least qemu,
	// kmod's depmod, git and debootstrap.
	before := doctor(t, ctx, root)
	missing := map[string]bool{}
	for _, p := range system.Programs(system.ScopeRun, system.ScopeBuild) {
		_, err := chrootErr(ctx, root, "sh", "-c", resolves, "sh", p.Name)
		missing[p.Name] = err != nil
		c, ok := before[p.Name]
		switch {
		case !ok:
			t.Errorf("doctor did not check %s", p.Name)
		case missing[p.Name] && (c.Status != "FAIL" || !strings.Contains(c.Fix, "apt-get install "+p.Package)):
			t.Errorf("before setup, %s is missing and doctor says %+v (want FAIL naming %s)", p.Name, c, p.Package)
		case !missing[p.Name] && c.Status != "PASS":
			t.Errorf("before setup, %s is there and doctor says %+v", p.Name, c)
		}
	}
	for _, n := range []string{"qemu-system-x86_64", "depmod", "git", "debootstrap"} {
		if !missing[n] {
			t.Errorf("the fresh root already has %s: it is not a bare root", n)
		}
	}

	// The setup step of the README's first command, as written.
	out := chroot(t, ctx, root, "env", "BANGER_SETUP_CACHE=/var/cache/banger-setup", "/src/banger/scripts/setup-host")
	t.Logf("setup-host:\n%s", out)

	// After: every registered program resolves in the fresh root.
	optional := map[string]bool{}
	for _, p := range system.Programs() {
		if p.Self() {
			continue
		}
		if p.Optional() {
			// Not in Debian (firecracker): setup-host does not install
			// it; doctor only warns (checked below).
			optional[p.Name] = true
			continue
		}
		if _, err := chrootErr(ctx, root, "sh", "-c", resolves, "sh", p.Name); err != nil {
			t.Errorf("after setup-host, %s (package %q) does not resolve in the fresh root: %v", p.Name, p.Package, err)
		}
	}
	if v := chroot(t, ctx, root, "go", "env", "GOVERSION"); !strings.HasPrefix(strings.TrimSpace(v), "go") {
		t.Errorf("go env GOVERSION: %q", v)
	}
	after := doctor(t, ctx, root)
	for name, c := range after {
		switch {
		case c.Program && optional[name]:
			if c.Status == "FAIL" {
				t.Errorf("after setup, doctor FAILs on the optional %s: %+v", name, c)
			}
		case c.Program && c.Status != "PASS":
			t.Errorf("after setup, doctor on %s: %+v", name, c)
		}
	}
	saveCaches(t, ctx, root, cache)
}

// minbase returns a tar of `debootstrap --variant=minbase` of the suite
// banger's images use, from the host's mirror, building it on first use.
func minbase(t *testing.T, ctx context.Context, cache string) string {
	tarball := filepath.Join(cache, image.DefaultSuite+"-minbase.tar")
	if st, err := os.Stat(tarball); err == nil && st.Size() > 0 {
		return tarball
	}
	start := time.Now()
	tmp, err := os.MkdirTemp(cache, ".build-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	target := filepath.Join(tmp, "root")
	debs := filepath.Join(cache, "debootstrap")
	if err := os.MkdirAll(debs, 0o755); err != nil {
		t.Fatal(err)
	}
	run(t, ctx, "unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private",
		"debootstrap", "--variant=minbase", "--cache-dir="+debs, image.DefaultSuite, target, image.HostMirror(image.DefaultSuite))
	part := tarball + ".part"
	run(t, ctx, "tar", "--create", "--numeric-owner", "--file", part, "-C", target, ".")
	if err := os.Rename(part, tarball); err != nil {
		t.Fatal(err)
	}
	t.Logf("built the minbase root in %s", time.Since(start).Round(time.Second))
	return tarball
}

// prepareRoot gives the root what a fresh host of this kind has besides
// its packages: name resolution, the host's apt configuration (sources,
// keys, options: how this machine reaches Debian) and its local TLS roots
// (/usr/local/share/ca-certificates: how it reaches https; ca-certificates
// adds them when setup-host installs it). Then the three files of
// banger that setup-host reads, and the package and toolchain downloads of
// earlier runs (kept by apt and setup-host as on any host).
func prepareRoot(t *testing.T, ctx context.Context, root, cache string) {
	run(t, ctx, "cp", "--dereference", "/etc/resolv.conf", filepath.Join(root, "etc", "resolv.conf"))
	if err := os.RemoveAll(filepath.Join(root, "etc", "apt")); err != nil {
		t.Fatal(err)
	}
	run(t, ctx, "cp", "-a", "/etc/apt", filepath.Join(root, "etc", "apt"))
	if _, err := os.Stat("/usr/local/share/ca-certificates"); err == nil {
		run(t, ctx, "cp", "-a", "--no-target-directory", "/usr/local/share/ca-certificates", filepath.Join(root, "usr", "local", "share", "ca-certificates"))
	}
	// Keep what apt downloads (this host's Docker-style configuration
	// deletes it), so the next run need not download it again.
	keep := "#clear DPkg::Post-Invoke;\nBinary::apt::APT::Keep-Downloaded-Packages \"true\";\nAPT::Keep-Downloaded-Packages \"true\";\n"
	if err := os.WriteFile(filepath.Join(root, "etc", "apt", "apt.conf.d", "zz-banger-test-keep"), []byte(keep), 0o644); err != nil {
		t.Fatal(err)
	}
	src, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"scripts/setup-host", "internal/system/programs.txt", "go.mod"} {
		dst := filepath.Join(root, "src", "banger", f)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		run(t, ctx, "cp", "-p", filepath.Join(src, f), dst)
	}
	// banger itself, for doctor: the binary make test built, or a fresh one.
	bin := os.Getenv("BANGER_TEST_BIN")
	if bin == "" {
		bin = t.TempDir()
		run(t, ctx, "go", "build", "-C", src, "-o", filepath.Join(bin, "banger"), "./cmd/banger")
	}
	run(t, ctx, "cp", filepath.Join(bin, "banger"), filepath.Join(root, "usr", "local", "bin", "banger"))
	// debootstrap leaves the root's own packages in its apt cache; a fresh
	// host's is empty.
	if err := os.RemoveAll(filepath.Join(root, "var", "cache", "apt", "archives")); err != nil {
		t.Fatal(err)
	}
	for _, d := range []struct{ from, to string }{
		{filepath.Join(cache, "archives"), filepath.Join(root, "var", "cache", "apt", "archives")},
		{filepath.Join(cache, "setup"), filepath.Join(root, "var", "cache", "banger-setup")},
	} {
		if err := os.MkdirAll(d.from, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(d.to, 0o755); err != nil {
			t.Fatal(err)
		}
		run(t, ctx, "cp", "-a", "--link", "--no-target-directory", d.from, d.to)
	}
}

// saveCaches keeps this run's downloads for the next.
func saveCaches(t *testing.T, ctx context.Context, root, cache string) {
	for _, d := range []struct{ from, to string }{
		{filepath.Join(root, "var", "cache", "apt", "archives"), filepath.Join(cache, "archives")},
		{filepath.Join(root, "var", "cache", "banger-setup"), filepath.Join(cache, "setup")},
	} {
		entries, _ := os.ReadDir(d.from)
		for _, e := range entries {
			if !e.Type().IsRegular() {
				continue
			}
			dst := filepath.Join(d.to, e.Name())
			if _, err := os.Stat(dst); err == nil {
				continue
			}
			if err := os.Link(filepath.Join(d.from, e.Name()), dst); err != nil {
				run(t, ctx, "cp", filepath.Join(d.from, e.Name()), dst)
			}
		}
	}
}

// resolves is a shell test that $1, a registered program, resolves on PATH
// (or, for a file the registry lists, exists).
const resolves = `case "$1" in /*) test -e "$1";; *) command -v "$1" >/dev/null;; esac`

type check struct {
	Status  string
	Fix     string
	Program bool
}

// doctor runs banger doctor --json in the root and returns its checks by
// name.
func doctor(t *testing.T, ctx context.Context, root string) map[string]check {
	t.Helper()
	out, _ := chrootErr(ctx, root, "env", "BANGER_HOME=/tmp/banger-doctor", "banger", "doctor", "--json")
	var r struct {
		Checks []struct {
			Name    string          `json:"name"`
			Status  string          `json:"status"`
			Fix     string          `json:"fix"`
			Program json.RawMessage `json:"program"`
		} `json:"checks"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("banger doctor --json in the fresh root: %v\n%s", err, out)
	}
	m := map[string]check{}
	for _, c := range r.Checks {
		m[c.Name] = check{Status: c.Status, Fix: c.Fix, Program: len(c.Program) > 0 && string(c.Program) != "null"}
	}
	return m
}

// chroot runs argv in the root, in its own mount and pid namespaces with
// /proc mounted, as root with a fresh host's PATH (and /usr/local/go/bin,
// which the Makefile adds).
func chroot(t *testing.T, ctx context.Context, root string, argv ...string) string {
	t.Helper()
	out, err := chrootErr(ctx, root, argv...)
	if err != nil {
		t.Fatalf("in the fresh root: %v\n%s", err, out)
	}
	return string(out)
}

func chrootErr(ctx context.Context, root string, argv ...string) ([]byte, error) {
	full := append([]string{"unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private",
		"chroot", root, "/bin/sh", "-c", `mount -t proc proc /proc && exec "$@"`, "sh",
		"env", "-i", "HOME=/root", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/local/go/bin"}, argv...)
	var out strings.Builder
	_, err := system.RunOpts(ctx, system.Opts{Stdout: &out, Stderr: &out}, full...)
	return []byte(out.String()), err
}

func run(t *testing.T, ctx context.Context, argv ...string) {
	t.Helper()
	if out, err := system.Run(ctx, argv...); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

// lock serialises test binaries sharing the cache.
func lock(t *testing.T, path string) func() {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(fmt.Errorf("lock %s: %w", path, err))
	}
	return func() { f.Close() }
}
