package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestMissingFileIsDefaults(t *testing.T) {
	c, err := Load(filepath.Join(t.TempDir(), "none.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c, Defaults()) {
		t.Fatalf("got %+v", c)
	}
}

func TestExampleParsesToDefaults(t *testing.T) {
	c, err := Parse("example.toml", []byte(Example))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c, Defaults()) {
		t.Fatalf("Example differs from Defaults: %+v", c)
	}
}

func TestOverrides(t *testing.T) {
	c, err := Parse("c.toml", []byte("backend = \"qemu\"\n[vm]\nvcpus = 4\ndisk = \"10G\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Backend != "qemu" || c.VM.VCPUs != 4 || c.VM.Disk != "10G" || c.VM.MemoryMiB != 512 {
		t.Fatalf("got %+v", c)
	}
	if c, err := Parse("c.toml", []byte("[network]\nallow = [\"192.168.1.0/24\", \"169.254.169.254\"]\n")); err != nil || !reflect.DeepEqual(c.Network.Allow, []string{"192.168.1.0/24", "169.254.169.254"}) {
		t.Errorf("allow: %+v %v", c.Network.Allow, err)
	}
	for _, e := range []string{"nat", "none", "shared"} {
		c, err := Parse("c.toml", []byte("[network]\negress = \""+e+"\"\n"))
		if err != nil || c.Network.Egress != e {
			t.Errorf("egress %s: %+v %v", e, c.Network, err)
		}
	}
}

func TestErrorsNameFileLineKey(t *testing.T) {
	for _, tc := range []struct {
		src      string
		line     int
		key      string
		contains string
	}{
		{"[vm]\nvcpus = 2\ncpus = 3\n", 3, "vm.cpus", "unknown key"},
		{"backend = \"qemu\"\nbogus = 1\n", 2, "bogus", "unknown key"},
		{"\n[vm]\nvcpus = 0\n", 3, "vm.vcpus", "between 1 and 64"},
		{"backend = \"xen\"\n", 1, "backend", "not one of"},
		{"[network]\nsubnet = \"8.8.8.0/24\"\n", 2, "network.subnet", "private"},
		{"[network]\ndns_port = 70000\n", 2, "network.dns_port", "not a port"},
		{"[network]\negress = \"bridge\"\n", 2, "network.egress", "not one of nat, none, shared"},
		{"[vm]\ndisk = \"big\"\n", 2, "vm.disk", "not a size"},
		{"[vm]\nvcpus = \"two\"\n", 2, "vm.vcpus", "must be of type integer, not string"},
		{"vm = 3\n", 1, "vm", "must be of type hash"},
		{"[vm\nvcpus = 2\n", 2, "", "to end table name"},
		{"[network]\nallow = [\"10.0.0.0/8\", \"nope\"]\n", 2, "network.allow", "not an IPv4 address or CIDR"},
		{"[network]\nallow = [\"fd00::/8\"]\n", 2, "network.allow", "not an IPv4 address or CIDR"},
		{"[network]\nallow = \"10.0.0.0/8\"\n", 2, "network.allow", "must be of type array, not string"},
	} {
		_, err := Parse("/etc/c.toml", []byte(tc.src))
		var ce *Error
		if !errors.As(err, &ce) {
			t.Errorf("%q: error %v is not a *config.Error", tc.src, err)
			continue
		}
		if ce.File != "/etc/c.toml" || ce.Line != tc.line || (tc.key != "" && ce.Key != tc.key) || !strings.Contains(ce.Error(), tc.contains) {
			t.Errorf("%q: got %q (line %d key %q), want line %d key %q containing %q", tc.src, ce.Error(), ce.Line, ce.Key, tc.line, tc.key, tc.contains)
		}
	}
}

func TestLoadReadsFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "config.toml")
	os.WriteFile(p, []byte("[vm]\nmemory_mib = 1024\n"), 0o644)
	c, err := Load(p)
	if err != nil || c.VM.MemoryMiB != 1024 {
		t.Fatalf("%+v %v", c, err)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"512M": 512 << 20, "4G": 4 << 30, "4GiB": 4 << 30, "1.5G": 3 << 29, "1024": 1024, "2k": 2048} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "G", "-1G", "abc", "0"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) succeeded", bad)
		}
	}
}
