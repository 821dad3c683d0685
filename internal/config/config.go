// Package config reads banger's configuration file,
// $XDG_CONFIG_HOME/banger/config.toml (see internal/paths). Every key is
// optional; Defaults documents the value used when a key is absent. An
// unknown key or a bad value is an error naming the file, the line and the
// key.
package config

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// Config is the whole configuration.
type Config struct {
	// Backend is "auto", "qemu" or "firecracker". auto picks Firecracker
	// when it can run (binary + hardware KVM), else QEMU.
	Backend string  `toml:"backend"`
	VM      VM      `toml:"vm"`
	Network Network `toml:"network"`
	Daemon  Daemon  `toml:"daemon"`
}

// VM holds defaults for new VMs.
type VM struct {
	Image     string `toml:"image"`      // image used when --image is not given
	VCPUs     int    `toml:"vcpus"`      // 1..64
	MemoryMiB int    `toml:"memory_mib"` // 128..65536
	Disk      string `toml:"disk"`       // root disk size, e.g. "4G"; at least the image's
	// Spares is how many clones of recently used VM shapes bangerd keeps
	// restored ahead of demand (0..8; 0: none). Each costs ~60 MiB (PSS)
	// and under 1% of a CPU while idle; a create it serves is ready in
	// ~40 ms instead of ~275 ms (measured under TCG, bench/vmrun).
	Spares int `toml:"spares"`
}

// Network holds the bridge and DNS settings.
type Network struct {
	Subnet    string `toml:"subnet"`     // IPv4 CIDR of banger's bridge
	DNSPort   int    `toml:"dns_port"`   // UDP+TCP port of banger's DNS server
	DNSDomain string `toml:"dns_domain"` // VMs answer as NAME.DOMAIN
	Egress    string `toml:"egress"`     // default --net: "nat", "none" or "shared"
	Bridge    string `toml:"bridge"`     // name of banger's bridge
	TapPrefix string `toml:"tap_prefix"` // taps are TapPrefix + N
	NFTable   string `toml:"nft_table"`  // banger's nftables table
	// Allow lists IPv4 networks (CIDR) or addresses that nat and shared
	// guests may reach although banger blocks them by default: the
	// host's private, link-local (cloud metadata) and routed networks.
	// The host's own addresses stay closed whatever it says.
	Allow []string `toml:"allow"`
}

// Daemon holds bangerd's own settings.
type Daemon struct {
	LogMaxMiB int `toml:"log_max_mib"` // the log is rotated past this size
}

// Defaults is the configuration with no file.
func Defaults() Config {
	return Config{
		Backend: "auto",
		VM:      VM{Image: "default", VCPUs: 1, MemoryMiB: 512, Disk: "4G", Spares: 1},
		Network: Network{Subnet: "172.30.0.0/24", DNSPort: 42069, DNSDomain: "vm", Egress: "nat", Bridge: "bgr0", TapPrefix: "bgt", NFTable: "banger", Allow: []string{}},
		Daemon:  Daemon{LogMaxMiB: 10},
	}
}

// Error is a configuration error at a place in the file.
type Error struct {
	File string
	Line int // 0 when unknown
	Key  string
	Msg  string
}

func (e *Error) Error() string {
	loc := e.File
	if e.Line > 0 {
		loc = fmt.Sprintf("%s:%d", e.File, e.Line)
	}
	if e.Key != "" {
		return fmt.Sprintf("%s: %s: %s", loc, e.Key, e.Msg)
	}
	return fmt.Sprintf("%s: %s", loc, e.Msg)
}

// Load reads path; a missing file yields Defaults.
func Load(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return Defaults(), nil
	}
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, b)
}

// Parse parses the contents of a config file named path.
func Parse(path string, data []byte) (Config, error) {
	c := Defaults()
	lines := keyLines(string(data))
	// A generic decode first, so that a value of the wrong type is reported
	// with its key and line rather than the decoder's free text.
	var generic map[string]any
	gmd, err := toml.Decode(string(data), &generic)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return Config{}, &Error{File: path, Line: pe.Position.Line, Key: pe.LastKey, Msg: pe.Message}
		}
		return Config{}, &Error{File: path, Msg: err.Error()}
	}
	want := fieldTypes(reflect.TypeOf(c), "")
	for _, k := range gmd.Keys() {
		ks := k.String()
		if exp, ok := want[ks]; ok && gmd.Type(k...) != exp {
			return Config{}, &Error{File: path, Line: lines[ks], Key: ks, Msg: fmt.Sprintf("must be of type %s, not %s", strings.ToLower(exp), strings.ToLower(gmd.Type(k...)))}
		}
	}
	md, err := toml.Decode(string(data), &c)
	if err != nil {
		return Config{}, &Error{File: path, Msg: err.Error()}
	}
	if und := md.Undecoded(); len(und) > 0 {
		k := und[0].String()
		return Config{}, &Error{File: path, Line: lines[k], Key: k, Msg: "unknown key"}
	}
	if key, msg := c.validate(); key != "" {
		return Config{}, &Error{File: path, Line: lines[key], Key: key, Msg: msg}
	}
	return c, nil
}

// Validate checks a configuration built in code.
func (c Config) Validate() error {
	if key, msg := c.validate(); key != "" {
		return &Error{File: "config", Key: key, Msg: msg}
	}
	return nil
}

func (c Config) validate() (key, msg string) {
	switch c.Backend {
	case "auto", "qemu", "firecracker":
	default:
		return "backend", fmt.Sprintf("%q is not one of auto, qemu, firecracker", c.Backend)
	}
	if c.VM.Image == "" {
		return "vm.image", "must not be empty"
	}
	if c.VM.VCPUs < 1 || c.VM.VCPUs > 64 {
		return "vm.vcpus", fmt.Sprintf("%d is not between 1 and 64", c.VM.VCPUs)
	}
	if c.VM.MemoryMiB < 128 || c.VM.MemoryMiB > 65536 {
		return "vm.memory_mib", fmt.Sprintf("%d is not between 128 and 65536", c.VM.MemoryMiB)
	}
	if _, err := ParseSize(c.VM.Disk); err != nil {
		return "vm.disk", err.Error()
	}
	if c.VM.Spares < 0 || c.VM.Spares > 8 {
		return "vm.spares", fmt.Sprintf("%d is not between 0 and 8", c.VM.Spares)
	}
	p, err := netip.ParsePrefix(c.Network.Subnet)
	if err != nil || !p.Addr().Is4() || !p.Addr().IsPrivate() || p.Bits() > 29 {
		return "network.subnet", fmt.Sprintf("%q is not a private IPv4 CIDR of /29 or larger", c.Network.Subnet)
	}
	if c.Network.DNSPort < 1 || c.Network.DNSPort > 65535 {
		return "network.dns_port", fmt.Sprintf("%d is not a port", c.Network.DNSPort)
	}
	if !dnsLabel.MatchString(c.Network.DNSDomain) {
		return "network.dns_domain", fmt.Sprintf("%q is not a DNS domain", c.Network.DNSDomain)
	}
	switch c.Network.Egress {
	case "nat", "none", "shared":
	default:
		return "network.egress", fmt.Sprintf("%q is not one of nat, none, shared", c.Network.Egress)
	}
	if !ifName.MatchString(c.Network.Bridge) || len(c.Network.Bridge) > 15 {
		return "network.bridge", fmt.Sprintf("%q is not an interface name (letters, digits, '-', at most 15)", c.Network.Bridge)
	}
	if !ifName.MatchString(c.Network.TapPrefix) || len(c.Network.TapPrefix) > 9 {
		return "network.tap_prefix", fmt.Sprintf("%q is not a tap prefix (letters, digits, '-', at most 9)", c.Network.TapPrefix)
	}
	if !nftName.MatchString(c.Network.NFTable) || len(c.Network.NFTable) > 64 {
		return "network.nft_table", fmt.Sprintf("%q is not an nftables table name", c.Network.NFTable)
	}
	for _, a := range c.Network.Allow {
		p, err := netip.ParsePrefix(a)
		if err != nil {
			var addr netip.Addr
			if addr, err = netip.ParseAddr(a); err == nil {
				p = netip.PrefixFrom(addr, addr.BitLen())
			}
		}
		if err != nil || !p.Addr().Is4() {
			return "network.allow", fmt.Sprintf("%q is not an IPv4 address or CIDR", a)
		}
	}
	if c.Daemon.LogMaxMiB < 1 {
		return "daemon.log_max_mib", "must be at least 1"
	}
	return "", ""
}

var (
	ifName  = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9-]*$`)
	nftName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]*$`)
)

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$`)

// fieldTypes maps each dotted key of a config struct to its TOML type name
// as MetaData.Type reports it.
func fieldTypes(t reflect.Type, prefix string) map[string]string {
	out := map[string]string{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		key := prefix + f.Tag.Get("toml")
		switch f.Type.Kind() {
		case reflect.Struct:
			out[key] = "Hash"
			for k, v := range fieldTypes(f.Type, key+".") {
				out[k] = v
			}
		case reflect.Int:
			out[key] = "Integer"
		case reflect.String:
			out[key] = "String"
		case reflect.Bool:
			out[key] = "Bool"
		case reflect.Slice:
			out[key] = "Array"
		}
	}
	return out
}

// keyLines maps each dotted key ("vm.vcpus") to the line it is set on.
// Enough TOML for banger's flat tables: [table] headers and key = value.
func keyLines(src string) map[string]int {
	out := map[string]int{}
	table := ""
	for i, line := range strings.Split(src, "\n") {
		l := strings.TrimSpace(line)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]") {
			table = strings.Trim(strings.TrimSpace(strings.Trim(l, "[]")), `"`)
			if _, ok := out[table]; !ok {
				out[table] = i + 1
			}
			continue
		}
		k, _, ok := strings.Cut(l, "=")
		if !ok {
			continue
		}
		k = strings.Trim(strings.TrimSpace(k), `"`)
		if table != "" {
			k = table + "." + k
		}
		if _, ok := out[k]; !ok {
			out[k] = i + 1
		}
	}
	return out
}

// ParseSize parses a size such as "512M", "4G", "1.5G" or a byte count.
// Units are binary (K = 1024).
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(strings.ToUpper(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "I")
	mult := int64(1)
	if t != "" {
		switch t[len(t)-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult > 1 {
			t = t[:len(t)-1]
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	// !(f > 0) also refuses NaN; Inf and sizes past MaxSize would overflow
	// int64 (found by FuzzParseSize: "NaN", "Inf" and "1e30G" were taken).
	if err != nil || !(f > 0) || math.IsInf(f, 0) {
		return 0, fmt.Errorf("%q is not a size like 512M or 4G", s)
	}
	n := f * float64(mult)
	if n > MaxSize {
		return 0, fmt.Errorf("%q is larger than the largest size, 1P", s)
	}
	if n < 1 {
		return 0, fmt.Errorf("%q is less than one byte", s)
	}
	return int64(n), nil
}

// MaxSize is the largest size ParseSize takes (1 PiB).
const MaxSize = 1 << 50

// Example is a commented config file listing every key with its default.
const Example = `# banger configuration. Every key is optional; shown are the defaults.
backend = "auto"        # auto | qemu | firecracker

[vm]
image = "default"       # image for new VMs
vcpus = 1
memory_mib = 512
disk = "4G"             # root disk size (copy-on-write over the image)
spares = 1              # clones kept restored ahead of demand (0: none)

[network]
subnet = "172.30.0.0/24" # banger's bridge
dns_port = 42069         # DNS for NAME.vm on the bridge and 127.0.0.1
dns_domain = "vm"
egress = "nat"           # default for --net: nat | none | shared
bridge = "bgr0"          # banger's bridge (created and owned by bangerd)
tap_prefix = "bgt"       # VM taps are named tap_prefix + N
nft_table = "banger"     # banger's nftables table (inet and bridge)
allow = []               # networks nat/shared guests may reach although blocked
                         # by default (private, link-local, the host's routes),
                         # e.g. ["192.168.1.0/24", "169.254.169.254"]

[daemon]
log_max_mib = 10         # bangerd.log is rotated past this size
`
