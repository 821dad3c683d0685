package qemu

import (
	"errors"
	"strings"
	"testing"

	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/vmm"
)

func typicalSpec() vmm.Spec {
	return vmm.Spec{
		ID:         "a1b2c3",
		VCPUs:      2,
		MemoryMiB:  512,
		Kernel:     "/img/vmlinux",
		Initrd:     "/img/initrd.img",
		KernelArgs: []string{"init=/sbin/banger-agent"},
		Root:       vmm.Disk{Path: "/vms/a1b2c3/root.qcow2", Format: "qcow2"},
		Disks:      []vmm.Disk{{Path: "/vms/a1b2c3/work.ext4", Format: "raw"}, {Path: "/img/ro,odd.img", Format: "raw", ReadOnly: true}},
		NICs:       []vmm.NIC{{Tap: "bg-a1b2c3", MAC: "02:BA:00:00:00:01"}},
		RuntimeDir: "/run/banger/vm/a1b2c3",
		ConsoleLog: "/vms/a1b2c3/console.log",
		VMMLog:     "/vms/a1b2c3/vmm.log",
	}
}

func TestBuildArgsGolden(t *testing.T) {
	minimal := vmm.Spec{
		ID: "m", VCPUs: 1, MemoryMiB: 256, Kernel: "/k",
		Root:       vmm.Disk{Path: "/r.qcow2", Format: "qcow2"},
		RuntimeDir: "/run/x", ConsoleLog: "/c.log", VMMLog: "/v.log",
	}
	cases := []struct {
		name string
		spec vmm.Spec
		cfg  Config
		want []string
	}{
		{
			name: "typical tcg",
			spec: typicalSpec(),
			cfg:  Config{Accel: AccelTCG, TSCkHz: 2600000},
			want: []string{
				"qemu-system-x86_64",
				"-name", "banger-a1b2c3,process=banger-a1b2c3",
				"-msg", "timestamp=on",
				"-nodefaults",
				"-no-user-config",
				"-display", "none",
				"-machine", "microvm,acpi=on,pit=on,rtc=on",
				"-accel", "tcg,thread=multi",
				"-cpu", "max",
				"-smp", "2",
				"-m", "512M",
				"-kernel", "/img/vmlinux",
				"-initrd", "/img/initrd.img",
				"-append", "console=ttyS0 quiet pci=off root=/dev/vda rw rootfstype=ext4 panic=-1 tsc_early_khz=2600000 init=/sbin/banger-agent",
				"-drive", "id=root,file=/vms/a1b2c3/root.qcow2,format=qcow2,if=none,cache=writeback",
				"-device", "virtio-blk-device,drive=root",
				"-drive", "id=disk1,file=/vms/a1b2c3/work.ext4,format=raw,if=none,cache=writeback",
				"-device", "virtio-blk-device,drive=disk1",
				"-drive", "id=disk2,file=/img/ro,,odd.img,format=raw,if=none,cache=writeback,readonly=on",
				"-device", "virtio-blk-device,drive=disk2",
				"-netdev", "tap,id=net0,ifname=bg-a1b2c3,script=no,downscript=no",
				"-device", "virtio-net-device,netdev=net0,mac=02:ba:00:00:00:01",
				"-object", "rng-random,id=rng0,filename=/dev/urandom",
				"-device", "virtio-rng-device,rng=rng0",
				"-device", "virtio-serial-device",
				"-chardev", "socket,id=agent,path=/run/banger/vm/a1b2c3/agent.sock,server=on,wait=off",
				"-device", "virtserialport,chardev=agent,name=banger.agent",
				"-chardev", "file,id=console,path=/vms/a1b2c3/console.log,append=on",
				"-serial", "chardev:console",
				"-chardev", "socket,id=qmp,path=/run/banger/vm/a1b2c3/qmp.sock,server=on,wait=off",
				"-mon", "chardev=qmp,mode=control",
				"-no-reboot",
			},
		},
		{
			name: "minimal kvm",
			spec: minimal,
			cfg:  Config{Binary: "/opt/qemu/bin/qemu-system-x86_64", Accel: AccelKVM, TSCkHz: 2600000},
			want: []string{
				"/opt/qemu/bin/qemu-system-x86_64",
				"-name", "banger-m,process=banger-m",
				"-msg", "timestamp=on",
				"-nodefaults",
				"-no-user-config",
				"-display", "none",
				"-machine", "microvm,acpi=on,pit=on,rtc=on",
				"-accel", "kvm",
				"-cpu", "host",
				"-smp", "1",
				"-m", "256M",
				"-kernel", "/k",
				"-append", "console=ttyS0 quiet pci=off root=/dev/vda rw rootfstype=ext4 panic=-1",
				"-drive", "id=root,file=/r.qcow2,format=qcow2,if=none,cache=writeback",
				"-device", "virtio-blk-device,drive=root",
				"-object", "rng-random,id=rng0,filename=/dev/urandom",
				"-device", "virtio-rng-device,rng=rng0",
				"-device", "virtio-serial-device",
				"-chardev", "socket,id=agent,path=/run/x/agent.sock,server=on,wait=off",
				"-device", "virtserialport,chardev=agent,name=banger.agent",
				"-chardev", "file,id=console,path=/c.log,append=on",
				"-serial", "chardev:console",
				"-chardev", "socket,id=qmp,path=/run/x/qmp.sock,server=on,wait=off",
				"-mon", "chardev=qmp,mode=control",
				"-no-reboot",
			},
		},
		{
			name: "tcg without a known TSC rate",
			spec: minimal,
			cfg:  Config{Accel: AccelTCG},
			want: nil, // checked below: no tsc_early_khz
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, err := BuildArgs(c.spec, c.cfg)
			if err != nil {
				t.Fatal(err)
			}
			got := a.Argv()
			if c.want == nil {
				if strings.Contains(strings.Join(got, " "), "tsc_early_khz") {
					t.Errorf("tsc_early_khz passed without a rate: %q", got)
				}
				return
			}
			if strings.Join(got, "\n") != strings.Join(c.want, "\n") {
				t.Errorf("argv mismatch\n got: %q\nwant: %q", got, c.want)
				for i := range min(len(got), len(c.want)) {
					if got[i] != c.want[i] {
						t.Errorf("first difference at %d: %q vs %q", i, got[i], c.want[i])
						break
					}
				}
			}
		})
	}
}

func TestBuildArgsInvalid(t *testing.T) {
	mod := func(f func(*vmm.Spec)) vmm.Spec { s := typicalSpec(); f(&s); return s }
	cases := map[string]vmm.Spec{
		"empty id":         mod(func(s *vmm.Spec) { s.ID = "" }),
		"comma in id":      mod(func(s *vmm.Spec) { s.ID = "a,b" }),
		"zero vcpus":       mod(func(s *vmm.Spec) { s.VCPUs = 0 }),
		"tiny memory":      mod(func(s *vmm.Spec) { s.MemoryMiB = 16 }),
		"no kernel":        mod(func(s *vmm.Spec) { s.Kernel = "" }),
		"no root":          mod(func(s *vmm.Spec) { s.Root = vmm.Disk{} }),
		"bad format":       mod(func(s *vmm.Spec) { s.Disks[0].Format = "vmdk" }),
		"long tap":         mod(func(s *vmm.Spec) { s.NICs[0].Tap = "tap-name-too-long" }),
		"bad mac":          mod(func(s *vmm.Spec) { s.NICs[0].MAC = "zz" }),
		"space in arg":     mod(func(s *vmm.Spec) { s.KernelArgs = []string{"a b"} }),
		"no runtime dir":   mod(func(s *vmm.Spec) { s.RuntimeDir = "" }),
		"long socket path": mod(func(s *vmm.Spec) { s.RuntimeDir = "/" + strings.Repeat("x", 100) }),
		"no console log":   mod(func(s *vmm.Spec) { s.ConsoleLog = "" }),
	}
	for name, spec := range cases {
		if _, err := BuildArgs(spec, Config{Accel: AccelTCG}); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: got %v, want ErrInvalidArgument", name, err)
		}
	}
	if _, err := BuildArgs(typicalSpec(), Config{Accel: "hvf"}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("bad accel: %v", err)
	}
	s := typicalSpec()
	s.Restore = &vmm.Snapshot{Dir: "/t"}
	s.SnapshotDir = "/u"
	if _, err := BuildArgs(s, Config{Accel: AccelTCG}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("restore + snapshot: %v, want ErrInvalidArgument", err)
	}
	s.SnapshotDir = ""
	s.Restore.Dir = "rel"
	if _, err := BuildArgs(s, Config{Accel: AccelTCG}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("relative restore dir: %v, want ErrInvalidArgument", err)
	}
}

// TestArgsEdits exercises the Args editing API (as BuildArgs uses it for
// warm starts).
func TestArgsEdits(t *testing.T) {
	a, err := BuildArgs(typicalSpec(), Config{Accel: AccelTCG})
	if err != nil {
		t.Fatal(err)
	}
	err = a.Insert("memory", Opt{Name: "ram", Flag: "-object", Head: "memory-backend-file", Props: []Prop{
		{"id", "ram0"}, {"size", "512M"}, {"mem-path", "/t/ram"}, {"share", "on"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.SetProp("machine", "memory-backend", "ram0"); err != nil {
		t.Fatal(err)
	}
	if err := a.SetProp("machine", "pit", "off"); err != nil {
		t.Fatal(err)
	}
	a.Add(Opt{Name: "incoming", Flag: "-incoming", Head: "defer"})
	a.Remove("rng-device")
	a.Remove("no-such-option")
	got := strings.Join(a.Argv(), " ")
	for _, want := range []string{
		"-m 512M -object memory-backend-file,id=ram0,size=512M,mem-path=/t/ram,share=on -kernel",
		"-machine microvm,acpi=on,pit=off,rtc=on,memory-backend=ram0 ",
		"-no-reboot -incoming defer",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("argv lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "virtio-rng-device") {
		t.Error("Remove did not remove")
	}
	if o, ok := a.Get("machine"); !ok || o.Head != "microvm" {
		t.Errorf("Get(machine) = %+v %v", o, ok)
	}
	if v, _ := mustGet(t, a, "qmp-chardev").Prop("path"); v != "/run/banger/vm/a1b2c3/qmp.sock" {
		t.Errorf("qmp path %q", v)
	}
	if err := a.Insert("nope", Opt{Name: "x"}); err == nil {
		t.Error("Insert after a missing option succeeded")
	}
	if err := a.Insert("memory", Opt{Name: "ram"}); err == nil {
		t.Error("Insert of a duplicate name succeeded")
	}
	if err := a.SetProp("nope", "k", "v"); err == nil {
		t.Error("SetProp on a missing option succeeded")
	}
}

func mustGet(t *testing.T, a Args, name string) Opt {
	t.Helper()
	o, ok := a.Get(name)
	if !ok {
		t.Fatalf("no option %s", name)
	}
	return o
}

// TestBuildArgsWarm: a template keeps its RAM in a shared file in its
// snapshot dir; a clone maps the same file privately and waits for its
// device state; a NIC without a tap is a slot with no host side.
func TestBuildArgsWarm(t *testing.T) {
	tpl := typicalSpec()
	tpl.SnapshotDir = "/t"
	tpl.NICs[0].Tap = ""
	clone := typicalSpec()
	clone.Restore = &vmm.Snapshot{Dir: "/t"}
	cases := []struct {
		name      string
		spec      vmm.Spec
		want, not []string
	}{
		{"template", tpl, []string{
			"-m 512M -object memory-backend-file,id=ram0,size=512M,mem-path=/t/ram,share=on -kernel",
			"-machine microvm,acpi=on,pit=on,rtc=on,memory-backend=ram0 ",
			"-device virtio-net-device,mac=02:ba:00:00:00:01 ",
		}, []string{"-incoming", "-netdev"}},
		{"clone", clone, []string{
			"-m 512M -object memory-backend-file,id=ram0,size=512M,mem-path=/t/ram,share=off -kernel",
			"-machine microvm,acpi=on,pit=on,rtc=on,memory-backend=ram0 ",
			"-netdev tap,id=net0,ifname=bg-a1b2c3,",
			"-no-reboot -incoming defer",
		}, []string{"share=on"}},
	}
	for _, c := range cases {
		a, err := BuildArgs(c.spec, Config{Accel: AccelTCG})
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		got := strings.Join(a.Argv(), " ")
		for _, w := range c.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: argv lacks %q:\n%s", c.name, w, got)
			}
		}
		for _, w := range c.not {
			if strings.Contains(got, w) {
				t.Errorf("%s: argv has %q:\n%s", c.name, w, got)
			}
		}
	}
}
