package qemu

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeRoot makes a tree with the given files (path -> content; a path
// ending in "/" is a directory).
func fakeRoot(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, content := range files {
		full := filepath.Join(root, p)
		if strings.HasSuffix(p, "/") {
			if err := os.MkdirAll(full, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestDetectAccelAt(t *testing.T) {
	cases := []struct {
		name   string
		files  map[string]string
		accel  string
		cause  string
		reason string
	}{
		{"no kvm", map[string]string{"sys/module/": ""}, AccelTCG, CauseNoKVM, "no /dev/kvm"},
		{"pvm", map[string]string{"dev/kvm": "", "sys/module/kvm/": "", "sys/module/kvm_pvm/": ""}, AccelTCG, CausePVM, "PVM"},
		{"intel", map[string]string{"dev/kvm": "", "sys/module/kvm/": "", "sys/module/kvm_intel/": ""}, AccelKVM, CauseKVM, "kvm_intel"},
		{"amd", map[string]string{"dev/kvm": "", "sys/module/kvm_amd/": ""}, AccelKVM, CauseKVM, "kvm_amd"},
		{"built-in kvm", map[string]string{"dev/kvm": ""}, AccelKVM, CauseKVM, "KVM"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := DetectAccelAt(fakeRoot(t, c.files))
			if got.Accel != c.accel || got.Cause != c.cause || !strings.Contains(got.Reason, c.reason) {
				t.Errorf("got %+v, want %s (%s) with %q in the reason", got, c.accel, c.cause, c.reason)
			}
		})
	}
	if os.Geteuid() != 0 {
		root := fakeRoot(t, map[string]string{"dev/kvm": ""})
		if err := os.Chmod(filepath.Join(root, "dev/kvm"), 0); err != nil {
			t.Fatal(err)
		}
		if got := DetectAccelAt(root); got.Accel != AccelTCG || got.Cause != CauseNoAccess || !strings.Contains(got.Reason, "not readable") {
			t.Errorf("inaccessible /dev/kvm: %+v", got)
		}
	}
}

// TestDetectAccelHere pins what this project's machines are: /dev/kvm is
// PVM-only, so QEMU must use TCG.
func TestDetectAccelHere(t *testing.T) {
	got := DetectAccel()
	t.Logf("this host: %s (%s)", got.Accel, got.Reason)
	if _, err := os.Stat("/sys/module/kvm_pvm"); err == nil && got.Accel != AccelTCG {
		t.Errorf("PVM host detected as %+v", got)
	}
}

func TestHostTSCkHz(t *testing.T) {
	cpuinfo := "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu MHz\t\t: 2596.138\nflags\t\t: fpu tsc\n\nprocessor\t: 1\ncpu MHz\t\t: 1200.000\n"
	cases := []struct {
		name  string
		files map[string]string
		want  int64
	}{
		{"cpuinfo", map[string]string{"proc/cpuinfo": cpuinfo}, 2596138},
		{"sysfs wins", map[string]string{"proc/cpuinfo": cpuinfo, "sys/devices/system/cpu/cpu0/tsc_freq_khz": "2600123\n"}, 2600123},
		{"bad sysfs falls back", map[string]string{"proc/cpuinfo": cpuinfo, "sys/devices/system/cpu/cpu0/tsc_freq_khz": "junk"}, 2596138},
		{"no MHz line", map[string]string{"proc/cpuinfo": "processor\t: 0\n"}, 0},
		{"garbage MHz", map[string]string{"proc/cpuinfo": "cpu MHz : fast\n"}, 0},
		{"nothing", map[string]string{}, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := HostTSCkHzAt(fakeRoot(t, c.files)); got != c.want {
				t.Errorf("got %d, want %d", got, c.want)
			}
		})
	}
	t.Logf("this host: %d kHz", HostTSCkHz())
}

func TestParseStat(t *testing.T) {
	tail := " S 1 4242 4242 0 -1 4194560 100 0 0 0 10 5 0 0 20 0 3 0 987654 123456789 1000 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 17 1 0 0 0 0 0"
	cases := []struct {
		name string
		in   string
		want procStat
		bad  bool
	}{
		{"plain", "4242 (qemu-system-x86)" + tail, procStat{'S', 4242, 3, 987654}, false},
		{"spaces and parens in comm", "4242 (evil) S 1 2 3 (x)" + tail, procStat{'S', 4242, 3, 987654}, false},
		{"zombie", "7 (banger-t1) Z 1 7 7 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0", procStat{'Z', 7, 1, 55}, false},
		{"no comm", "4242 S 1", procStat{}, true},
		{"truncated", "4242 (q) S 1 2", procStat{}, true},
		{"bad starttime", "4242 (q) S 1 4242 4242 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 notanumber 0", procStat{}, true},
		{"empty", "", procStat{}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := parseStat([]byte(c.in))
			if c.bad {
				if err == nil {
					t.Errorf("parsed %+v, want error", got)
				}
				return
			}
			if err != nil || got != c.want {
				t.Errorf("got %+v, %v; want %+v", got, err, c.want)
			}
		})
	}
}

func TestProcAlive(t *testing.T) {
	p := proc{root: "/proc"}
	boot, err := p.bootID()
	if err != nil {
		t.Fatal(err)
	}
	self, err := p.stat(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := p.alive(os.Getpid(), self.StartTime, boot); !ok {
		t.Error("this process is not alive")
	}
	if _, ok := p.alive(os.Getpid(), self.StartTime+1, boot); ok {
		t.Error("wrong start time taken for the same process")
	}
	if _, ok := p.alive(os.Getpid(), self.StartTime, "other-boot"); ok {
		t.Error("wrong boot id taken for the same process")
	}
	if _, ok := p.alive(0, 0, boot); ok {
		t.Error("pid 0 alive")
	}
	// A fake /proc: pid 99 with a reused pid (different start time); pid
	// 98 exiting (main thread a zombie, 4 threads left); pid 97 exited.
	root := fakeRoot(t, map[string]string{
		"sys/kernel/random/boot_id": "b00t\n",
		"99/stat":                   "99 (bash) S 1 99 99 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777 0 0",
		"98/stat":                   "98 (qemu) Z 1 98 98 0 -1 0 0 0 0 0 0 0 0 0 20 0 4 0 777 0 0",
		"97/stat":                   "97 (qemu) Z 1 97 97 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777 0 0",
	})
	fp := proc{root: root}
	if _, ok := fp.alive(99, 777, "b00t"); !ok {
		t.Error("fake pid 99 not alive")
	}
	if _, ok := fp.alive(99, 776, "b00t"); ok {
		t.Error("reused pid taken for the VM")
	}
	if _, ok := fp.alive(98, 777, "b00t"); !ok {
		t.Error("process with a zombie main thread and live threads taken for gone")
	}
	if _, ok := fp.alive(97, 777, "b00t"); ok {
		t.Error("zombie taken for alive")
	}
	if _, ok := fp.alive(100, 777, "b00t"); ok {
		t.Error("missing pid alive")
	}
}

// TestCommandLineUsesHostProbes: the backend feeds the accelerator and TSC
// probes of its host root into BuildArgs.
func TestCommandLineUsesHostProbes(t *testing.T) {
	cpuinfo := "cpu MHz\t\t: 2596.138\n"
	pvm := fakeRoot(t, map[string]string{"dev/kvm": "", "sys/module/kvm_pvm/": "", "proc/cpuinfo": cpuinfo})
	kvm := fakeRoot(t, map[string]string{"dev/kvm": "", "sys/module/kvm_intel/": "", "proc/cpuinfo": cpuinfo})
	cases := []struct {
		b            *Backend
		want, absent []string
	}{
		{New(WithHostRoot(pvm)), []string{"-accel tcg,thread=multi", "-cpu max", "tsc_early_khz=2596138"}, []string{"kvm"}},
		{New(WithHostRoot(kvm)), []string{"-accel kvm", "-cpu host"}, []string{"tsc_early_khz", "tcg"}},
		{New(WithHostRoot(kvm), WithAccel(AccelTCG), WithBinary("/x/qemu")), []string{"/x/qemu ", "-accel tcg", "tsc_early_khz=2596138"}, nil},
	}
	for i, c := range cases {
		argv, err := c.b.CommandLine(typicalSpec())
		if err != nil {
			t.Fatal(err)
		}
		got := strings.Join(argv, " ")
		for _, w := range c.want {
			if !strings.Contains(got, w) {
				t.Errorf("case %d: argv lacks %q: %s", i, w, got)
			}
		}
		for _, n := range c.absent {
			if strings.Contains(got, n) {
				t.Errorf("case %d: argv has %q: %s", i, n, got)
			}
		}
	}
}

func TestAvailable(t *testing.T) {
	dir := t.TempDir()
	// Fakes keep the registered program's name (internal/system runs no
	// other), each in a directory of its own.
	fake := func(name, out string) string {
		p := filepath.Join(dir, name, DefaultBinary)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte("#!/bin/sh\necho '"+out+"'\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ctx := context.Background()
	cases := []struct {
		bin    string
		ok     bool
		reason string
	}{
		{fake("new", "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"), true, "QEMU 7.2.22"},
		{fake("old", "QEMU emulator version 5.2.0"), false, "needs 6.2"},
		{fake("odd", "hello"), false, "no version"},
		{filepath.Join(dir, "missing", DefaultBinary), false, "not found"},
	}
	for _, c := range cases {
		av := New(WithBinary(c.bin), WithAccel(AccelTCG)).Available(ctx)
		if av.OK != c.ok || !strings.Contains(av.Reason, c.reason) || av.Accel != AccelTCG {
			t.Errorf("%s: %+v, want ok=%v with %q", filepath.Base(filepath.Dir(c.bin)), av, c.ok, c.reason)
		}
	}
}
