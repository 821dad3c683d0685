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
