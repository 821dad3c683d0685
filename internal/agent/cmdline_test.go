package agent

import (
	"reflect"
	"testing"
	"time"
)

func TestParseCmdline(t *testing.T) {
	def := ParseCmdline("")
	if def.RootFSType != "ext4" || def.Transport != TransportVirtioSerial || def.PortName != DefaultPortName ||
		def.VsockPort != DefaultVsockPort || def.RootWait != 10*time.Second || def.Root != "" || def.ReadOnly {
		t.Errorf("defaults: %+v", def)
	}
	for _, tc := range []struct {
		in   string
		want func(*BootConfig)
	}{
		{"console=ttyS0 root=/dev/vda rw quiet", func(c *BootConfig) { c.Root = "/dev/vda" }},
		{"root=/dev/vdb ro rootfstype=xfs rootflags=noatime", func(c *BootConfig) {
			c.Root, c.ReadOnly, c.RootFSType, c.RootFlags = "/dev/vdb", true, "xfs", "noatime"
		}},
		{"ro rw", func(c *BootConfig) {}},
		{"banger.transport=vsock banger.vsock_port=52 banger.debug", func(c *BootConfig) {
			c.Transport, c.VsockPort, c.Debug = "vsock", 52, true
		}},
		{"banger.hostname=dev1 banger.port=other banger.rootwait=2.5", func(c *BootConfig) {
			c.Hostname, c.PortName, c.RootWait = "dev1", "other", 2500*time.Millisecond
		}},
		{`foo="a b c" banger.hostname="x"` + "\n", func(c *BootConfig) { c.Hostname = "x" }},
		{"banger.vsock_port=-1 banger.rootwait=abc", func(c *BootConfig) {}},
	} {
		want := ParseCmdline("")
		tc.want(&want)
		if got := ParseCmdline(tc.in); !reflect.DeepEqual(got, want) {
			t.Errorf("ParseCmdline(%q) = %+v, want %+v", tc.in, got, want)
		}
	}
}

func TestSplitCmdline(t *testing.T) {
	got := splitCmdline(`a  b="c d" "e f"g h` + "\n")
	want := []string{"a", "b=c d", "e fg", "h"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("%q", got)
	}
}
