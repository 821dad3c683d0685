package qemu

import (
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/vmm"
)

// File names inside a VM's runtime directory.
const (
	QMPSocketName   = "qmp.sock"
	AgentSocketName = "agent.sock"
)

// AgentPortName is the virtio-serial port name the guest agent looks for
// under /sys/class/virtio-ports/*/name.
const AgentPortName = "banger.agent"

// ProcessPrefix starts the name (-name, and the process name QEMU sets
// with prctl, which the kernel truncates to 15 bytes) of every VMM banger
// starts, so that reconcile can find orphans: /proc/PID/cmdline holds
// "-name banger-<id>,process=banger-<id>".
const ProcessPrefix = "banger-"

// BaseKernelArgs returns the arguments that come first on every guest
// command line; Spec.KernelArgs follow (so a later duplicate wins where
// the kernel or the agent lets it).
func BaseKernelArgs() []string {
	return []string{
		"console=ttyS0", "quiet", "pci=off",
		"root=/dev/vda", "rw", "rootfstype=ext4",
		"panic=-1", // with -no-reboot: a guest panic ends the QEMU process
	}
}

// maxSocketPath is sun_path's size minus its terminating NUL.
const maxSocketPath = 107

// Prop is one key=value property of an option's value.
type Prop struct{ Key, Value string }

// Opt is one QEMU command-line option, for example
// {Name: "root-drive", Flag: "-drive", Props: [{id root} {file ...}]}.
// Name is banger's handle on it, unique within Args, so that a later step
// (warm start, debugging) can find, change or drop it. Head is the
// unnamed first part of the value ("microvm", "tap", a path, "512"), put
// on the command line as is; Prop values have their commas doubled, as
// QEMU's option parser wants. An Opt with neither Head nor Props is a bare
// flag ("-no-reboot").
type Opt struct {
	Name  string
	Flag  string
	Head  string
	Props []Prop
}

// Value renders the option's value as QEMU parses it.
func (o Opt) Value() string {
	var b strings.Builder
	b.WriteString(o.Head)
	for i, p := range o.Props {
		if i > 0 || o.Head != "" {
			b.WriteByte(',')
		}
		b.WriteString(p.Key)
		b.WriteByte('=')
		b.WriteString(strings.ReplaceAll(p.Value, ",", ",,"))
	}
	return b.String()
}

// Prop returns the value of property key.
func (o Opt) Prop(key string) (string, bool) {
	for _, p := range o.Props {
		if p.Key == key {
			return p.Value, true
		}
	}
	return "", false
}

// Args is a QEMU command line as an ordered list of named options.
//
// Warm starts are small edits of the cold-boot Args (BuildArgs makes
// them when Spec.SnapshotDir or Spec.Restore is set): for a template,
//
//	a.Insert("smp", Opt{Name: "ram", Flag: "-object", Head: "memory-backend-file",
//		Props: []Prop{{"id", "ram0"}, {"size", "256M"}, {"mem-path", T}, {"share", "on"}}})
//	a.SetProp("machine", "memory-backend", "ram0")
//
// and for a clone the same with share=off plus
// a.Add(Opt{Name: "incoming", Flag: "-incoming", Head: "defer"}), then QMP
// migrate-set-capabilities x-ignore-shared + migrate-incoming + cont.
type Args struct {
	Binary string
	Opts   []Opt
}

// Argv renders the command line.
func (a Args) Argv() []string {
	argv := []string{a.Binary}
	for _, o := range a.Opts {
		argv = append(argv, o.Flag)
		if v := o.Value(); v != "" {
			argv = append(argv, v)
		}
	}
	return argv
}

// Add appends o. Names must be unique; Add panics on a duplicate, which is
// a programming error.
func (a *Args) Add(o Opt) {
	if a.index(o.Name) >= 0 {
		panic("qemu: duplicate option name " + o.Name)
	}
	a.Opts = append(a.Opts, o)
}

// Insert puts o right after the option named after.
func (a *Args) Insert(after string, o Opt) error {
	if a.index(o.Name) >= 0 {
		return fmt.Errorf("qemu: duplicate option name %s", o.Name)
	}
	i := a.index(after)
	if i < 0 {
		return fmt.Errorf("qemu: no option named %s", after)
	}
	a.Opts = append(a.Opts[:i+1], append([]Opt{o}, a.Opts[i+1:]...)...)
	return nil
}

// Get returns the option named name.
func (a Args) Get(name string) (Opt, bool) {
	if i := a.index(name); i >= 0 {
		return a.Opts[i], true
	}
	return Opt{}, false
}

// Remove drops the option named name, if any.
func (a *Args) Remove(name string) {
	if i := a.index(name); i >= 0 {
		a.Opts = append(a.Opts[:i], a.Opts[i+1:]...)
	}
}

// SetProp sets (or adds) property key of the option named name.
func (a *Args) SetProp(name, key, value string) error {
	i := a.index(name)
	if i < 0 {
		return fmt.Errorf("qemu: no option named %s", name)
	}
	o := &a.Opts[i]
	for j := range o.Props {
		if o.Props[j].Key == key {
			o.Props[j].Value = value
			return nil
		}
	}
	o.Props = append(o.Props, Prop{key, value})
	return nil
}

func (a Args) index(name string) int {
	for i, o := range a.Opts {
		if o.Name == name {
			return i
		}
	}
	return -1
}

// Config is what BuildArgs needs to know of the host.
type Config struct {
	Binary string // default "qemu-system-x86_64"
	Accel  string // AccelKVM or AccelTCG
	// TSCkHz is the host TSC rate; under TCG it is passed to the guest as
	// tsc_early_khz so that the guest does not calibrate against the
	// emulated PIT, which hangs on a busy host. 0: not passed.
	TSCkHz int64
}

var (
	idRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)
	tapRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,15}$`)
)

// QMPSocket and AgentSocket are the sockets of a VM whose runtime
// directory is dir.
func QMPSocket(dir string) string   { return filepath.Join(dir, QMPSocketName) }
func AgentSocket(dir string) string { return filepath.Join(dir, AgentSocketName) }

// KernelCmdline is the guest command line BuildArgs passes.
func KernelCmdline(spec vmm.Spec, cfg Config) string {
	args := BaseKernelArgs()
	if cfg.Accel != AccelKVM && cfg.TSCkHz > 0 {
		args = append(args, "tsc_early_khz="+strconv.FormatInt(cfg.TSCkHz, 10))
	}
	args = append(args, spec.KernelArgs...)
	return strings.Join(args, " ")
}

// BuildArgs turns spec into a QEMU command line for a -M microvm guest
// booted directly from spec.Kernel. It is pure: it touches no file.
func BuildArgs(spec vmm.Spec, cfg Config) (Args, error) {
	if err := validate(spec, cfg); err != nil {
		return Args{}, err
	}
	bin := cfg.Binary
	if bin == "" {
		bin = "qemu-system-x86_64"
	}
	a := Args{Binary: bin}
	name := ProcessPrefix + spec.ID
	a.Add(Opt{Name: "name", Flag: "-name", Head: name, Props: []Prop{{"process", name}}})
	a.Add(Opt{Name: "msg", Flag: "-msg", Props: []Prop{{"timestamp", "on"}}})
	a.Add(Opt{Name: "nodefaults", Flag: "-nodefaults"})
	a.Add(Opt{Name: "no-user-config", Flag: "-no-user-config"})
	a.Add(Opt{Name: "display", Flag: "-display", Head: "none"})
	// ACPI describes the virtio-mmio devices to the guest (Debian's kernel
	// has no virtio_mmio.device= support); the RTC gives it the wall clock.
	a.Add(Opt{Name: "machine", Flag: "-machine", Head: "microvm", Props: []Prop{
		{"acpi", "on"}, {"pit", "on"}, {"rtc", "on"},
	}})
	if cfg.Accel == AccelKVM {
		a.Add(Opt{Name: "accel", Flag: "-accel", Head: "kvm"})
		a.Add(Opt{Name: "cpu", Flag: "-cpu", Head: "host"})
	} else {
		a.Add(Opt{Name: "accel", Flag: "-accel", Head: "tcg", Props: []Prop{{"thread", "multi"}}})
		a.Add(Opt{Name: "cpu", Flag: "-cpu", Head: "max"})
	}
	a.Add(Opt{Name: "smp", Flag: "-smp", Head: strconv.Itoa(spec.VCPUs)})
	a.Add(Opt{Name: "memory", Flag: "-m", Head: strconv.Itoa(spec.MemoryMiB) + "M"})
	a.Add(Opt{Name: "kernel", Flag: "-kernel", Head: spec.Kernel})
	if spec.Initrd != "" {
		a.Add(Opt{Name: "initrd", Flag: "-initrd", Head: spec.Initrd})
	}
	a.Add(Opt{Name: "append", Flag: "-append", Head: KernelCmdline(spec, cfg)})

	addDisk := func(id string, d vmm.Disk) {
		props := []Prop{{"id", id}, {"file", d.Path}, {"format", d.Format}, {"if", "none"}, {"cache", "writeback"}}
		if d.ReadOnly {
			props = append(props, Prop{"readonly", "on"})
		}
		a.Add(Opt{Name: id + "-drive", Flag: "-drive", Props: props})
		a.Add(Opt{Name: id + "-device", Flag: "-device", Head: "virtio-blk-device", Props: []Prop{{"drive", id}}})
	}
	addDisk("root", spec.Root)
	for i, d := range spec.Disks {
		addDisk("disk"+strconv.Itoa(i+1), d)
	}
	for i, n := range spec.NICs {
		id := "net" + strconv.Itoa(i)
		mac, _ := net.ParseMAC(n.MAC) // validated
		if n.Tap == "" {
			// A NIC slot with no host side (a template's): QEMU warns
			// "has no peer" and the guest sees a NIC without a cable.
			a.Add(Opt{Name: id + "-device", Flag: "-device", Head: "virtio-net-device", Props: []Prop{
				{"mac", mac.String()},
			}})
			continue
		}
		a.Add(Opt{Name: id + "-netdev", Flag: "-netdev", Head: "tap", Props: []Prop{
			{"id", id}, {"ifname", n.Tap}, {"script", "no"}, {"downscript", "no"},
		}})
		a.Add(Opt{Name: id + "-device", Flag: "-device", Head: "virtio-net-device", Props: []Prop{
			{"netdev", id}, {"mac", mac.String()},
		}})
	}
	a.Add(Opt{Name: "rng-object", Flag: "-object", Head: "rng-random", Props: []Prop{{"id", "rng0"}, {"filename", "/dev/urandom"}}})
	a.Add(Opt{Name: "rng-device", Flag: "-device", Head: "virtio-rng-device", Props: []Prop{{"rng", "rng0"}}})

	a.Add(Opt{Name: "serial-bus", Flag: "-device", Head: "virtio-serial-device"})
	a.Add(Opt{Name: "agent-chardev", Flag: "-chardev", Head: "socket", Props: []Prop{
		{"id", "agent"}, {"path", AgentSocket(spec.RuntimeDir)}, {"server", "on"}, {"wait", "off"},
	}})
	a.Add(Opt{Name: "agent-port", Flag: "-device", Head: "virtserialport", Props: []Prop{
		{"chardev", "agent"}, {"name", AgentPortName},
	}})
	// A file chardev with append=on keeps the console of earlier boots;
	// -serial file: would truncate it.
	a.Add(Opt{Name: "console-chardev", Flag: "-chardev", Head: "file", Props: []Prop{
		{"id", "console"}, {"path", spec.ConsoleLog}, {"append", "on"},
	}})
	a.Add(Opt{Name: "serial", Flag: "-serial", Head: "chardev:console"})
	a.Add(Opt{Name: "qmp-chardev", Flag: "-chardev", Head: "socket", Props: []Prop{
		{"id", "qmp"}, {"path", QMPSocket(spec.RuntimeDir)}, {"server", "on"}, {"wait", "off"},
	}})
	a.Add(Opt{Name: "qmp", Flag: "-mon", Props: []Prop{{"chardev", "qmp"}, {"mode", "control"}}})
	// A guest power-off, reboot or panic (panic=-1) ends the process.
	a.Add(Opt{Name: "no-reboot", Flag: "-no-reboot"})

	// Warm starts. A template keeps its guest RAM in a file it shares
	// (the file is the RAM, so a snapshot need not copy it); a clone maps
	// the same file privately (copy-on-write: it never writes the file)
	// and waits for its device state (-incoming defer, then QMP
	// migrate-incoming; see Backend.Start).
	switch {
	case spec.SnapshotDir != "":
		addRAMFile(&a, spec.MemoryMiB, SnapshotRAM(spec.SnapshotDir), true)
	case spec.Restore != nil:
		addRAMFile(&a, spec.MemoryMiB, SnapshotRAM(spec.Restore.Dir), false)
		a.Add(Opt{Name: "incoming", Flag: "-incoming", Head: "defer"})

	}
	return a, nil
}

func addRAMFile(a *Args, memMiB int, path string, share bool) {
	onOff := map[bool]string{true: "on", false: "off"}
	_ = a.Insert("memory", Opt{Name: "ram", Flag: "-object", Head: "memory-backend-file", Props: []Prop{
		{"id", "ram0"}, {"size", strconv.Itoa(memMiB) + "M"}, {"mem-path", path}, {"share", onOff[share]},
	}})
	_ = a.SetProp("machine", "memory-backend", "ram0")
}

func validate(spec vmm.Spec, cfg Config) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("qemu spec: %s: %w", fmt.Sprintf(format, a...), errdefs.ErrInvalidArgument)
	}
	if !idRE.MatchString(spec.ID) {
		return bad("id %q must be 1-63 letters, digits, '_', '.' or '-'", spec.ID)
	}
	if spec.VCPUs < 1 || spec.VCPUs > 255 {
		return bad("vcpus %d out of range 1-255", spec.VCPUs)
	}
	if spec.MemoryMiB < 64 {
		return bad("memory %d MiB: at least 64 MiB", spec.MemoryMiB)
	}
	if cfg.Accel != AccelKVM && cfg.Accel != AccelTCG {
		return bad("accelerator %q: want kvm or tcg", cfg.Accel)
	}
	for what, p := range map[string]string{"kernel": spec.Kernel, "runtime dir": spec.RuntimeDir, "console log": spec.ConsoleLog, "vmm log": spec.VMMLog} {
		if p == "" {
			return bad("%s not set", what)
		}
	}
	if spec.Initrd != "" && strings.Contains(spec.Initrd, ",") {
		// QEMU 7.2 splits -initrd on commas (several initrds).
		return bad("initrd path %q contains a comma", spec.Initrd)
	}
	for _, a := range spec.KernelArgs {
		if a == "" || strings.ContainsAny(a, " \t\n") {
			return bad("kernel argument %q is empty or contains white space", a)
		}
	}
	disks := append([]vmm.Disk{spec.Root}, spec.Disks...)
	for i, d := range disks {
		if d.Path == "" {
			return bad("disk %d has no path", i)
		}
		if d.Format != "raw" && d.Format != "qcow2" {
			return bad("disk %s: format %q, want raw or qcow2", d.Path, d.Format)
		}
	}
	if len(disks) > 16 {
		return bad("%d disks: at most 16", len(disks))
	}
	for _, n := range spec.NICs {
		if n.Tap != "" && !tapRE.MatchString(n.Tap) {
			return bad("tap name %q must be 1-15 letters, digits, '_', '.' or '-'", n.Tap)
		}
		if _, err := net.ParseMAC(n.MAC); err != nil {
			return bad("mac %q: %v", n.MAC, err)
		}
	}
	for _, s := range []string{QMPSocket(spec.RuntimeDir), AgentSocket(spec.RuntimeDir)} {
		if len(s) > maxSocketPath {
			return bad("socket path %s is %d bytes, longer than the %d a unix socket allows", s, len(s), maxSocketPath)
		}
	}
	if spec.Restore != nil && spec.SnapshotDir != "" {
		return bad("a VM cannot be both restored and snapshotted (a clone is never a template)")
	}
	if spec.Restore != nil && !filepath.IsAbs(spec.Restore.Dir) || spec.SnapshotDir != "" && !filepath.IsAbs(spec.SnapshotDir) {
		return bad("snapshot directory must be an absolute path")
	}
	return nil
}
