package auto

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func host(t *testing.T, kvm string, tools ...string) Host {
	t.Helper()
	root := t.TempDir()
	if kvm != "" {
		os.MkdirAll(filepath.Join(root, "dev"), 0o755)
		os.WriteFile(filepath.Join(root, "dev", "kvm"), nil, 0o666)
		os.MkdirAll(filepath.Join(root, "sys", "module", kvm), 0o755)
	}
	return Host{Root: root, LookPath: func(n string) (string, error) {
		for _, tl := range tools {
			if tl == n {
				return "/usr/bin/" + n, nil
			}
		}
		return "", errors.New(n + ": not found")
	}}
}

func version(v string) func(context.Context, string) (string, error) {
	return func(context.Context, string) (string, error) { return v, nil }
}

func TestChoose(t *testing.T) {
	exe, _ := os.Executable() // an ELF file
	bz := filepath.Join(t.TempDir(), "bzImage")
	os.WriteFile(bz, []byte("MZ not an elf"), 0o644)
	for _, c := range []struct {
		name    string
		pref    string
		h       func() Host
		backend string
		accel   string
		reason  string // in Reason
		notFC   string // in NotFirecracker ("" : must be empty)
	}{
		{"no kvm", "auto", func() Host { return host(t, "", "qemu-system-x86_64", "firecracker") }, "qemu", "tcg", "no /dev/kvm", "no /dev/kvm"},
		{"PVM-only kvm (this machine)", "auto", func() Host { return host(t, "kvm_pvm", "qemu-system-x86_64", "firecracker") }, "qemu", "tcg", "PVM", "PVM-only"},
		{"hardware kvm, no binary", "auto", func() Host { return host(t, "kvm_intel", "qemu-system-x86_64") }, "qemu", "kvm", "no firecracker binary", "no firecracker binary"},
		{"hardware kvm + binary", "auto", func() Host { return host(t, "kvm_amd", "qemu-system-x86_64", "firecracker") }, "firecracker", "kvm", "firecracker can run", ""},
		{"version probed, new enough", "auto", func() Host {
			h := host(t, "kvm_intel", "firecracker")
			h.FirecrackerVersion = version("1.16.1")
			return h
		}, "firecracker", "kvm", "Firecracker 1.16.1", ""},
		{"too old", "auto", func() Host {
			h := host(t, "kvm_intel", "qemu-system-x86_64", "firecracker")
			h.FirecrackerVersion = version("1.7.0")
			return h
		}, "qemu", "kvm", "needs 1.16", "Firecracker 1.7.0"},
		{"version unreadable", "auto", func() Host {
			h := host(t, "kvm_intel", "qemu-system-x86_64", "firecracker")
			h.FirecrackerVersion = func(context.Context, string) (string, error) { return "", errors.New("exit status 1") }
			return h
		}, "qemu", "kvm", "does not tell its version", "exit status 1"},
		{"ELF kernel", "auto", func() Host {
			h := host(t, "kvm_intel", "firecracker")
			h.Kernel = exe
			return h
		}, "firecracker", "kvm", "hardware KVM", ""},
		{"bzImage kernel", "auto", func() Host {
			h := host(t, "kvm_intel", "qemu-system-x86_64", "firecracker")
			h.Kernel = bz
			return h
		}, "qemu", "kvm", "not an ELF vmlinux", "not an ELF vmlinux"},
		{"forced firecracker, cannot", "firecracker", func() Host { return host(t, "kvm_pvm", "qemu-system-x86_64", "firecracker") }, "", "", "backend = firecracker in the config, but", "PVM"},
		{"forced qemu on a firecracker host", "qemu", func() Host { return host(t, "kvm_intel", "qemu-system-x86_64", "firecracker") }, "qemu", "kvm", "backend = qemu", ""},
		{"nothing", "auto", func() Host { return host(t, "") }, "", "", "qemu-system-x86_64 is not installed", "no /dev/kvm"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ch := Choose(c.pref, c.h())
			if ch.Backend != c.backend || ch.Accel != c.accel || !strings.Contains(ch.Reason, c.reason) {
				t.Errorf("Choose = %+v, want %s/%s with %q", ch, c.backend, c.accel, c.reason)
			}
			if c.notFC == "" && ch.NotFirecracker != "" || !strings.Contains(ch.NotFirecracker, c.notFC) {
				t.Errorf("NotFirecracker = %q, want %q", ch.NotFirecracker, c.notFC)
			}
		})
	}
}
