package doctor

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/banger-sh/banger/internal/config"
	"github.com/banger-sh/banger/internal/network"
	"github.com/banger-sh/banger/internal/paths"
	"github.com/banger-sh/banger/internal/system"
)

// fakeHost builds a fake root and an Env around it. tools lists the
// programs that exist.
func fakeHost(t *testing.T, tools ...string) (Env, string) {
	t.Helper()
	root := t.TempDir()
	have := map[string]bool{}
	for _, tl := range tools {
		have[tl] = true
	}
	l, _ := paths.Resolve(func(k string) string {
		if k == "BANGER_HOME" {
			return filepath.Join(root, "home")
		}
		return ""
	}, 0)
	return Env{
		Root: root,
		LookPath: func(n string) (string, error) {
			if have[n] {
				return "/usr/bin/" + n, nil
			}
			return "", fmt.Errorf("%s not found", n)
		},
		Layout: l, Config: config.Defaults(),
		DaemonPID: func() int { return 0 },
		FreeBytes: func(string) (uint64, error) { return 100 << 30, nil },
		PortFree:  func(int) bool { return true },
	}, root
}

// allTools is every registered program.
var allTools = func() []string {
	var out []string
	for _, p := range system.Programs() {
		out = append(out, p.Name)
	}
	return out
}()

func touch(t *testing.T, p string) {
	t.Helper()
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.WriteFile(p, nil, 0o666); err != nil {
		t.Fatal(err)
	}
}

func find(r Report, name string) Check {
	for _, c := range r.Checks {
		if c.Name == name {
			return c
		}
	}
	return Check{}
}

func TestKVMAbsentFallsBackToTCG(t *testing.T) {
	e, _ := fakeHost(t, allTools...)
	r := Run(context.Background(), e)
	if c := find(r, "kvm"); c.Status != Warn || !strings.Contains(c.Detail, "no /dev/kvm") {
		t.Fatalf("kvm check: %+v", c)
	}
	if r.Backend != "qemu" || r.Accel != "tcg" || r.Failed() {
		t.Fatalf("backend %q accel %q failed=%v\n%s", r.Backend, r.Accel, r.Failed(), Format(r))
	}
}

func TestPVMOnlyKVMIsReported(t *testing.T) {
	e, root := fakeHost(t, allTools...)
	touch(t, filepath.Join(root, "dev", "kvm"))
	os.MkdirAll(filepath.Join(root, "sys", "module", "kvm_pvm"), 0o755)
	r := Run(context.Background(), e)
	c := find(r, "kvm")
	if c.Status != Warn || !strings.Contains(c.Detail, "PVM") || !strings.Contains(c.Detail, "software emulation") {
		t.Fatalf("kvm check: %+v", c)
	}
	if r.Backend != "qemu" || r.Accel != "tcg" || !strings.Contains(r.Why, "PVM") {
		t.Fatalf("backend line: %s", Format(r))
	}
}

func TestStandardKVMWithFirecrackerPicksFirecracker(t *testing.T) {
	e, root := fakeHost(t, append(allTools, "firecracker")...)
	touch(t, filepath.Join(root, "dev", "kvm"))
	os.MkdirAll(filepath.Join(root, "sys", "module", "kvm_intel"), 0o755)
	r := Run(context.Background(), e)
	if find(r, "kvm").Status != Pass || r.Backend != "firecracker" || find(r, "firecracker").Status != Pass {
		t.Fatalf("%s", Format(r))
	}
}

func TestMissingToolFailsWithFix(t *testing.T) {
	e, _ := fakeHost(t, "qemu-img", "mkfs.ext4", "git")
	r := Run(context.Background(), e)
	c := find(r, "qemu-system-x86_64")
	if c.Status != Fail || c.Fix != "apt-get install qemu-system-x86" {
		t.Fatalf("qemu check: %+v", c)
	}
	if find(r, "debootstrap").Status != Fail || find(r, "firecracker").Status != Warn {
		t.Fatalf("%s", Format(r))
	}
	if !r.Failed() || r.Backend != "" {
		t.Fatalf("report should fail with no backend:\n%s", Format(r))
	}
	if !strings.Contains(Format(r), "no backend can run") {
		t.Fatalf("%s", Format(r))
	}
}

// TestEveryRegisteredProgramIsChecked: doctor on a host missing any one
// program of the registry FAILs naming its package (WARNs for the test
// suite's own tools), and the other checks do not fail.
func TestEveryRegisteredProgramIsChecked(t *testing.T) {
	for _, p := range system.Programs() {
		if p.Self() {
			continue
		}
		var others []string
		for _, n := range allTools {
			if n != p.Name {
				others = append(others, n)
			}
		}
		e, _ := fakeHost(t, others...)
		r := Run(context.Background(), e)
		c := find(r, p.Name)
		want := Fail
		if !p.In(system.ScopeRun, system.ScopeBuild) {
			want = Warn
		}
		if c.Status != want || (p.Package != "" && !strings.Contains(c.Fix, "apt-get install "+p.Package)) {
			t.Errorf("%s missing: %+v", p.Name, c)
		}
		out := Format(r)
		if !strings.Contains(out, p.Name) || (p.Package != "" && !strings.Contains(out, p.Package)) {
			t.Errorf("%s missing: the report does not name it and its package:\n%s", p.Name, out)
		}
		for _, o := range r.Checks {
			if o.Name != p.Name && o.Status == Fail {
				t.Errorf("%s missing: %s fails too: %+v", p.Name, o.Name, o)
			}
		}
	}
	e, _ := fakeHost(t, allTools...)
	out := Format(Run(context.Background(), e))
	if !strings.Contains(out, "programs") || strings.Contains(out, "FAIL") {
		t.Errorf("all installed:\n%s", out)
	}
}

func TestStoreMissingIsPassUnreadableIsFail(t *testing.T) {
	e, _ := fakeHost(t, allTools...)
	r := Run(context.Background(), e)
	if c := find(r, "store"); c.Status != Pass || !strings.Contains(c.Detail, "will be created on first daemon start") {
		t.Fatalf("missing store: %+v", c)
	}
	os.MkdirAll(e.Layout.State, 0o755)
	os.WriteFile(e.Layout.StoreFile(), []byte(strings.Repeat("not sqlite ", 100)), 0o600)
	r = Run(context.Background(), e)
	if c := find(r, "store"); c.Status != Fail || c.Fix == "" {
		t.Fatalf("corrupt store: %+v", c)
	}
	if !r.Failed() {
		t.Fatal("report with a corrupt store did not fail")
	}
}

func TestDNSPortTakenByOtherFailsByOursPasses(t *testing.T) {
	e, _ := fakeHost(t, allTools...)
	e.PortFree = func(int) bool { return false }
	if c := find(Run(context.Background(), e), "dns-port"); c.Status != Fail || !strings.Contains(c.Fix, "network.dns_port") {
		t.Fatalf("%+v", c)
	}
	e.DaemonPID = func() int { return 4242 }
	if c := find(Run(context.Background(), e), "dns-port"); c.Status != Pass || !strings.Contains(c.Detail, "4242") {
		t.Fatalf("%+v", c)
	}
}

func TestLowDiskFails(t *testing.T) {
	e, _ := fakeHost(t, allTools...)
	e.FreeBytes = func(string) (uint64, error) { return 1 << 30, nil }
	if c := find(Run(context.Background(), e), "disk-state"); c.Status != Fail {
		t.Fatalf("%+v", c)
	}
}

// TestRealHost runs doctor against this machine. It asserts only what is
// true of every host it can run on: a report with every check and a backend
// line; on a PVM host (like the CI machines) it must say so.
func TestRealHost(t *testing.T) {
	home := t.TempDir()
	l, _ := paths.Resolve(func(k string) string {
		if k == "BANGER_HOME" {
			return home
		}
		return ""
	}, os.Geteuid())
	r := Run(context.Background(), HostEnv(l, config.Defaults(), func() int { return 0 }))
	t.Logf("\n%s", Format(r))
	if len(r.Checks) < 14 {
		t.Fatalf("only %d checks", len(r.Checks))
	}
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil {
		if c := find(r, "kvm"); !strings.Contains(c.Detail, "PVM") || r.Accel != "tcg" {
			t.Fatalf("PVM host not detected: %+v accel %s", c, r.Accel)
		}
	}
}

func TestHostForwardDrop(t *testing.T) {
	e, _ := fakeHost(t, allTools...)
	if c := find(Run(context.Background(), e), "host-forward"); c.Name != "" {
		t.Fatalf("checked without ForwardDrops: %+v", c)
	}
	e.Config.Network.Bridge = "br-test"
	var own string
	var drops []network.ForwardDrop
	var err error
	e.ForwardDrops = func(t string) ([]network.ForwardDrop, error) { own = t; return drops, err }
	if c := find(Run(context.Background(), e), "host-forward"); c.Status != Pass || own != "banger" {
		t.Fatalf("no drop: %+v (own table %q)", c, own)
	}
	for _, tc := range []struct {
		drop    network.ForwardDrop
		details string
		fixes   []string
	}{
		{network.ForwardDrop{Family: "ip", Table: "filter", Chain: "FORWARD", DockerUser: true}, "table ip filter chain FORWARD",
			[]string{"iptables -I DOCKER-USER -i br-test -j ACCEPT", "iptables -I DOCKER-USER -o br-test -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"}},
		{network.ForwardDrop{Family: "ip", Table: "filter", Chain: "FORWARD"}, "table ip filter chain FORWARD",
			[]string{"iptables -I FORWARD -i br-test -j ACCEPT", "iptables -I FORWARD -o br-test -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"}},
		{network.ForwardDrop{Family: "inet", Table: "fw", Chain: "fwd"}, "table inet fw chain fwd",
			[]string{`nft insert rule inet fw fwd iifname "br-test" accept`, `nft insert rule inet fw fwd oifname "br-test" ct state established,related accept`}},
	} {
		drops = []network.ForwardDrop{tc.drop}
		r := Run(context.Background(), e)
		c := find(r, "host-forward")
		if c.Status != Warn || !strings.Contains(c.Detail, tc.details) || !strings.Contains(c.Detail, "br-test") {
			t.Errorf("%v: %+v", tc.drop, c)
		}
		for _, f := range tc.fixes {
			if !strings.Contains(c.Fix, f) {
				t.Errorf("%v: fix %q lacks %q", tc.drop, c.Fix, f)
			}
		}
		if r.Failed() {
			t.Errorf("a FORWARD drop failed the report:\n%s", Format(r))
		}
	}
	drops, err = nil, fmt.Errorf("list nftables chains: %w", syscall.EPERM)
	if c := find(Run(context.Background(), e), "host-forward"); c.Status != Warn || !strings.Contains(c.Fix, "root") {
		t.Fatalf("not root: %+v", c)
	}
}

// TestDoctorSaysWhyNotFirecracker: on this project's kind of machine
// (PVM-only KVM, no firecracker binary) doctor names the backend and why
// Firecracker is not used, and the missing binary only WARNs (optional,
// not in Debian).
func TestDoctorSaysWhyNotFirecracker(t *testing.T) {
	var tools []string
	for _, tl := range allTools {
		if tl != "firecracker" {
			tools = append(tools, tl)
		}
	}
	e, root := fakeHost(t, tools...)
	touch(t, filepath.Join(root, "dev", "kvm"))
	os.MkdirAll(filepath.Join(root, "sys", "module", "kvm_pvm"), 0o755)
	r := Run(context.Background(), e)
	c := find(r, "firecracker")
	if c.Status != Warn || !strings.Contains(c.Detail, "optional") || strings.Contains(c.Fix, "apt-get") {
		t.Errorf("firecracker check: %+v", c)
	}
	if r.Failed() || r.Backend != "qemu" || !strings.Contains(r.NotFirecracker, "PVM") {
		t.Fatalf("%+v\n%s", r, Format(r))
	}
	out := Format(r)
	if !strings.Contains(out, "backend") || !strings.Contains(out, "firecracker needs hardware KVM") {
		t.Errorf("report does not say why not firecracker:\n%s", out)
	}

	// Forced qemu on a host where firecracker could run: still says so.
	e2, root2 := fakeHost(t, append(tools, "firecracker")...)
	touch(t, filepath.Join(root2, "dev", "kvm"))
	os.MkdirAll(filepath.Join(root2, "sys", "module", "kvm_pvm"), 0o755)
	e2.Config.Backend = "qemu"
	r2 := Run(context.Background(), e2)
	if out := Format(r2); !strings.Contains(out, "not firecracker: firecracker needs hardware KVM") {
		t.Errorf("forced qemu report lacks the firecracker reason:\n%s", out)
	}
}
