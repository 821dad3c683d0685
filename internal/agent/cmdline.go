package agent

import (
	"strconv"
	"strings"
	"time"
)

// Kernel command-line options the agent understands.
//
//	root=/dev/vda            root device (a /dev path); none: stay in the initramfs
//	rootfstype=ext4          root filesystem type (default ext4)
//	rootflags=...            mount data for the root filesystem
//	ro | rw                  mount root read-only / read-write (default rw)
//	banger.rootwait=10       seconds to wait for the root device (default 10)
//	banger.hostname=NAME     hostname to set at boot (default: /etc/hostname, else "banger")
//	banger.transport=virtio-serial | vsock   (default virtio-serial)
//	banger.port=banger.agent virtio-serial port name (default banger.agent)
//	banger.vsock_port=1024   vsock port to listen on (default 1024)
//	banger.debug             log debug lines to the console
type BootConfig struct {
	Root       string
	RootFSType string
	RootFlags  string
	ReadOnly   bool
	RootWait   time.Duration
	Hostname   string
	Transport  string
	PortName   string
	VsockPort  uint32
	Debug      bool
}

// Transports.
const (
	TransportVirtioSerial = "virtio-serial"
	TransportVsock        = "vsock"
)

// DefaultPortName is the virtio-serial port name the agent serves on.
const DefaultPortName = "banger.agent"

// DefaultVsockPort is the vsock port the agent listens on.
const DefaultVsockPort = 1024

// ParseCmdline parses a kernel command line (the contents of /proc/cmdline).
func ParseCmdline(s string) BootConfig {
	c := BootConfig{
		RootFSType: "ext4",
		RootWait:   10 * time.Second,
		Transport:  TransportVirtioSerial,
		PortName:   DefaultPortName,
		VsockPort:  DefaultVsockPort,
	}
	for _, f := range splitCmdline(s) {
		k, v, hasV := strings.Cut(f, "=")
		switch k {
		case "root":
			c.Root = v
		case "rootfstype":
			c.RootFSType = v
		case "rootflags":
			c.RootFlags = v
		case "ro":
			c.ReadOnly = true
		case "rw":
			c.ReadOnly = false
		case "banger.rootwait":
			if n, err := strconv.ParseFloat(v, 64); err == nil && n >= 0 {
				c.RootWait = time.Duration(n * float64(time.Second))
			}
		case "banger.hostname":
			c.Hostname = v
		case "banger.transport":
			c.Transport = v
		case "banger.port":
			c.PortName = v
		case "banger.vsock_port":
			if n, err := strconv.ParseUint(v, 10, 32); err == nil {
				c.VsockPort = uint32(n)
			}
		case "banger.debug":
			c.Debug = !hasV || v == "1" || v == "true"
		}
	}
	return c
}

// splitCmdline splits on spaces, keeping double-quoted parts together
// (the kernel's rule) and dropping the quotes.
func splitCmdline(s string) []string {
	var out []string
	var cur strings.Builder
	inQuote, any := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			any = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n'):
			if any {
				out = append(out, cur.String())
				cur.Reset()
				any = false
			}
		default:
			cur.WriteRune(r)
			any = true
		}
	}
	if any {
		out = append(out, cur.String())
	}
	return out
}
