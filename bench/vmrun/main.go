// Command vmrun benchmarks a VM's life end to end against raw QEMU, in one
// run on one host (issues 3 and 4), and prints a table of medians (with
// min and max):
//
//   - `banger vm run --rm -- true`, the CLI's wall time;
//   - raw: qemu-system-x86_64 started directly with the same kernel, the
//     same composed initrd (this build's agent + the image's modules), a
//     fresh qcow2 overlay of the same rootfs and the argv banger's QEMU
//     backend builds, timed from process start to the agent answering a
//     ping, then agent Shutdown and process exit;
//   - host-side create overhead: a cold create (through the API, so its
//     progress events can be timed) minus its guest boot portion, the time
//     between the "boot" event (sent just before the VMM is started) and
//     the "ready" event (the agent answered);
//   - stop → start → exec-ready against a cold create → exec-ready;
//   - warm `vm run --rm -- true` and warm creates: served by a ready spare
//     clone (vm.spares = 1), back to back, and with vm.spares = 0 (a
//     template restore per create);
//   - one cached `banger image build` (the cold build is not re-measured).
//
// Everything runs under an isolated BANGER_HOME (a temporary directory),
// with the shared test image (internal/image/imagetest) imported as
// "default". Binaries come from $BANGER_TEST_BIN or are built with
// `make build` into the temporary directory.
//
//	go run ./bench/vmrun [-n 5] [-skip-build]
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/client"
	"github.com/banger-sh/banger/internal/agent"
	"github.com/banger-sh/banger/internal/agentbin"
	"github.com/banger-sh/banger/internal/disk"
	"github.com/banger-sh/banger/internal/image/imagetest"
	"github.com/banger-sh/banger/internal/initrd"
	"github.com/banger-sh/banger/internal/system"
	"github.com/banger-sh/banger/internal/vmm"
	"github.com/banger-sh/banger/internal/vmm/qemu"
)

func main() {
	n := flag.Int("n", 5, "runs per measurement (at least 5 for the report)")
	skipBuild := flag.Bool("skip-build", false, "skip the cached `banger image build` measurement")
	rawNIC := flag.Bool("raw-nic", true, "give the raw VM a virtio-net NIC (user-mode, restricted) as banger's VMs have one (a tap)")
	flag.Parse()
	b := &bench{runs: *n, rawNIC: *rawNIC}
	err := b.run(!*skipBuild)
	b.cleanup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmrun:", err)
		os.Exit(1)
	}
}

type bench struct {
	runs   int
	rawNIC bool
	home   string
	bin    string
	img    string // the test image's directory
	cl     *client.Client
	rows   []row
}

type row struct {
	name  string
	vals  []time.Duration
	note  string
	fixed string // a single figure instead of vals
}

func (b *bench) environ() []string {
	return []string{"BANGER_HOME=" + b.home, "BANGER_BANGERD=" + filepath.Join(b.bin, "bangerd")}
}

// banger runs the CLI and returns its stdout.
func (b *bench) banger(args ...string) (string, error) {
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	_, err := system.RunOpts(ctx, system.Opts{Env: b.environ(), Stdout: &out, Stderr: &errb},
		append([]string{filepath.Join(b.bin, "banger")}, args...)...)
	if err != nil {
		return out.String(), fmt.Errorf("banger %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

func (b *bench) timed(args ...string) (time.Duration, error) {
	t0 := time.Now()
	_, err := b.banger(args...)
	return time.Since(t0), err
}

// templateKey is the key of the default image's (only) template.
func (b *bench) templateKey() (string, error) {
	var im api.Image
	out, err := b.banger("image", "show", "--json", "default")
	if err != nil {
		return "", err
	}
	if err := json.Unmarshal([]byte(out), &im); err != nil {
		return "", err
	}
	if len(im.Templates) != 1 {
		return "", fmt.Errorf("image default has %d templates, want 1", len(im.Templates))
	}
	return im.Templates[0].Key, nil
}

// waitSpare waits until the template has a ready spare clone.
func (b *bench) waitSpare(key string) error {
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		var im api.Image
		out, err := b.banger("image", "show", "--json", "default")
		if err != nil {
			return err
		}
		if err := json.Unmarshal([]byte(out), &im); err != nil {
			return err
		}
		for _, t := range im.Templates {
			if t.Key == key && t.Spare == "ready" {
				return nil
			}
		}
	}
	return fmt.Errorf("no spare clone of template %s after a minute", key)
}

// restartWithSpares restarts the daemon with vm.spares = n.
func (b *bench) restartWithSpares(n int) error {
	p := filepath.Join(b.home, "config", "config.toml")
	cfg, _ := os.ReadFile(p)
	if err := os.WriteFile(p, append(cfg, fmt.Sprintf("\n[vm]\nspares = %d\n", n)...), 0o644); err != nil {
		return err
	}
	if _, err := b.banger("daemon", "stop"); err != nil {
		return err
	}
	_, err := b.banger("daemon", "start")
	return err
}

func (b *bench) run(imageBuild bool) error {
	var err error
	if b.home, err = os.MkdirTemp("", "bgbench"); err != nil {
		return err
	}
	// Its own bridge, taps, nftables table and DNS port, so that nothing
	// meets a user's real banger; dropped if this build has no such keys.
	cfg := "[network]\nsubnet = \"172.31.251.0/24\"\ndns_port = 42169\nbridge = \"bgbench0\"\ntap_prefix = \"bgbt\"\nnft_table = \"bangerbench\"\n"
	os.MkdirAll(filepath.Join(b.home, "config"), 0o755)
	os.WriteFile(filepath.Join(b.home, "config", "config.toml"), []byte(cfg), 0o644)
	b.bin = os.Getenv("BANGER_TEST_BIN")
	if b.bin == "" {
		b.bin = filepath.Join(b.home, "bin")
		root, _ := filepath.Abs(".")
		fmt.Fprintln(os.Stderr, "building into", b.bin)
		if _, err := system.RunOpts(context.Background(), system.Opts{Dir: root}, "make", "build", "BIN="+b.bin); err != nil {
			return fmt.Errorf("make build (run from the repository's root): %w", err)
		}
	}
	if _, err := b.banger("config", "show"); err != nil {
		fmt.Fprintln(os.Stderr, "this build does not take the isolating network config; running without it:", err)
		os.Remove(filepath.Join(b.home, "config", "config.toml"))
	}
	if b.img, err = testImage(); err != nil {
		return err
	}
	if _, err := b.banger("image", "import", "default", "--kernel", filepath.Join(b.img, "vmlinux"),
		"--rootfs", filepath.Join(b.img, "rootfs.ext4"), "--modules", filepath.Join(b.img, "modules")); err != nil {
		return err
	}
	if _, err := b.banger("daemon", "start"); err != nil {
		return err
	}
	b.cl = client.New(filepath.Join(b.home, "run", "bangerd.sock"))
	// Warm-up (composes and caches the initrd; page cache), not counted.
	if _, err := b.banger("vm", "run", "--rm", "--", "true"); err != nil {
		return err
	}
	initrdPath, err := b.composeInitrd()
	if err != nil {
		return err
	}
	if _, _, err := b.raw(initrdPath, -1); err != nil { // warm-up
		return err
	}

	var vmRun, rawTotal, rawReady, create, boot, overhead, coldReady, restart, stopT, startT, startBoot []time.Duration
	for i := range b.runs {
		// banger and raw alternate which goes first, so that neither
		// always gets the quieter moment.
		for k := range 2 {
			if (i+k)%2 == 0 {
				d, err := b.timed("vm", "run", "--rm", "--cold", "--", "true")
				if err != nil {
					return err
				}
				vmRun = append(vmRun, d)
			} else {
				total, ready, err := b.raw(initrdPath, i)
				if err != nil {
					return err
				}
				rawTotal, rawReady = append(rawTotal, total), append(rawReady, ready)
			}
		}

		c, err := b.coldCreate(fmt.Sprintf("bench%d", i))
		if err != nil {
			return err
		}
		create, boot, overhead = append(create, c.create), append(boot, c.boot), append(overhead, c.create-c.boot)
		coldReady = append(coldReady, c.create+c.exec)

		s, err := b.stopStart(fmt.Sprintf("bench%d", i))
		if err != nil {
			return err
		}
		restart, stopT, startT = append(restart, s.stop+s.start+s.exec), append(stopT, s.stop), append(startT, s.start)
		startBoot = append(startBoot, s.boot)
		fmt.Fprintf(os.Stderr, "  vm run %s, raw %s (ready %s), create %s (boot %s), stop %s, start %s (boot %s), exec %s\n",
			ms(vmRun[i]), ms(rawTotal[i]), ms(rawReady[i]), ms(c.create), ms(c.boot), ms(s.stop), ms(s.start), ms(s.boot), ms(s.exec))
		if err := b.cl.DeleteVM(context.Background(), fmt.Sprintf("bench%d", i), true); err != nil {
			return err
		}
	}
	// Warm starts: the template of this shape, then the same command,
	// served by a spare clone (vm.spares = 1, the default: each run waits
	// until the next spare is ready, as when commands are not back to
	// back), back to back (the next run waits for the spare being made),
	// and with no spares (vm.spares = 0: a restore per create).
	if _, err := b.banger("image", "warm", "default"); err != nil {
		return err
	}
	key, err := b.templateKey()
	if err != nil {
		return err
	}
	if _, err := b.banger("vm", "run", "--rm", "--", "true"); err != nil { // warm-up
		return err
	}
	var warmRun, warmB2B, warmNoSpare []time.Duration
	for range b.runs {
		if err := b.waitSpare(key); err != nil {
			return err
		}
		d, err := b.timed("vm", "run", "--rm", "--", "true")
		if err != nil {
			return err
		}
		warmRun = append(warmRun, d)
	}
	if err := b.waitSpare(key); err != nil {
		return err
	}
	for range b.runs {
		d, err := b.timed("vm", "run", "--rm", "--", "true")
		if err != nil {
			return err
		}
		warmB2B = append(warmB2B, d)
	}
	var warmCreate, warmCreateNoSpare []time.Duration
	for i := range b.runs {
		if err := b.waitSpare(key); err != nil {
			return err
		}
		name := fmt.Sprintf("warm%d", i)
		t0 := time.Now()
		if _, err := b.cl.CreateVM(context.Background(), api.CreateVMRequest{Name: name}, nil); err != nil {
			return err
		}
		warmCreate = append(warmCreate, time.Since(t0))
		if err := b.cl.DeleteVM(context.Background(), name, true); err != nil {
			return err
		}
	}
	if err := b.restartWithSpares(0); err != nil {
		return err
	}
	for range b.runs {
		d, err := b.timed("vm", "run", "--rm", "--", "true")
		if err != nil {
			return err
		}
		warmNoSpare = append(warmNoSpare, d)
	}
	for i := range b.runs {
		name := fmt.Sprintf("warmns%d", i)
		t0 := time.Now()
		if _, err := b.cl.CreateVM(context.Background(), api.CreateVMRequest{Name: name}, nil); err != nil {
			return err
		}
		warmCreateNoSpare = append(warmCreateNoSpare, time.Since(t0))
		if err := b.cl.DeleteVM(context.Background(), name, true); err != nil {
			return err
		}
	}
	b.add("banger vm run --rm --cold -- true (CLI, end to end)", vmRun, "cold boot")
	nic := "no NIC"
	if b.rawNIC {
		nic = "user-mode virtio-net NIC"
	}
	b.add("raw qemu: start → agent ping → shutdown → exit", rawTotal, nic)
	b.add("raw qemu: start → agent ping", rawReady, "guest boot, raw")
	b.rows = append(b.rows, row{name: "ratio vm run / raw (medians)", fixed: fmt.Sprintf("%.2f×", ratio(vmRun, rawTotal)), note: "target ≤ 1.15×"})
	b.add("vm run − raw (difference of the medians)", nil, "")
	b.rows[len(b.rows)-1].fixed = ms(median(vmRun) - median(rawTotal))
	var diff []time.Duration
	for i := range vmRun {
		diff = append(diff, vmRun[i]-rawTotal[i])
	}
	b.add("vm run − raw, paired per run", diff, "less exposed to other tenants' load")
	b.add("banger vm run --rm -- true, warm, spare clone ready", warmRun, "vm.spares = 1 (default)")
	b.rows = append(b.rows, row{name: "ratio warm (spare) / cold vm run (medians)", fixed: fmt.Sprintf("%.2f×", ratio(warmRun, vmRun)), note: "target ≤ 0.12×"})
	b.add("banger vm run --rm -- true, warm, back to back", warmB2B, "waits for the spare being made")
	b.add("banger vm run --rm -- true, warm, no spare", warmNoSpare, "vm.spares = 0: restore per run")
	b.rows = append(b.rows, row{name: "ratio warm (no spare) / cold vm run (medians)", fixed: fmt.Sprintf("%.2f×", ratio(warmNoSpare, vmRun))})
	b.add("warm create, spare clone (API, returns when identity applied)", warmCreate, "")
	b.add("warm create, no spare (API, restore + identity)", warmCreateNoSpare, "")
	b.add("cold create (API, returns when agent ready)", create, "")
	b.add("  of which guest boot (event boot → ready)", boot, "VMM start → agent answered")
	b.add("  host-side create overhead (create − boot)", overhead, "target ≤ 50 ms")
	b.add("cold create → exec-ready (create + exec true)", coldReady, "API create + CLI exec")
	b.add("stop → start → exec-ready (clean stop)", restart, "API stop + API start + CLI exec")
	b.add("  of which stop (agent power-off, VMM exit)", stopT, "")
	b.add("  of which start (returns when agent ready)", startT, "")
	b.add("    of which guest boot (event boot → ready)", startBoot, "")
	b.rows = append(b.rows, row{name: "ratio stop→start→exec / cold create→exec", fixed: fmt.Sprintf("%.2f×", ratio(restart, coldReady))})

	if imageBuild {
		d, err := b.timed("image", "build", "benchimg")
		note := "cached: debootstrap + kernel .deb from the build cache"
		if err != nil {
			note = "failed: " + firstLine(err.Error())
		}
		b.rows = append(b.rows, row{name: "image build benchimg (one run)", fixed: d.Round(100 * time.Millisecond).String(), note: note})
		b.banger("image", "rm", "benchimg")
	}
	b.rows = append(b.rows, row{name: "image build cold", fixed: "not re-measured", note: "see internal/image's figures"})
	b.print()
	return nil
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 100 {
		s = s[:100]
	}
	return s
}

// composeInitrd composes the initrd banger composes: this build's agent
// as /init plus the image's modules.
func (b *bench) composeInitrd() (string, error) {
	bin, err := agentbin.Binary()
	if err != nil {
		return "", err
	}
	p := filepath.Join(b.home, "raw-initrd.cpio")
	return p, initrd.Compose(p, filepath.Join(b.img, "modules"), bin)
}

// raw boots the image with QEMU directly: the argv of banger's backend
// (no NIC), a fresh overlay. It returns process start → exit and process
// start → agent ready.
func (b *bench) raw(initrdPath string, i int) (total, ready time.Duration, err error) {
	ctx := context.Background()
	dir := filepath.Join(b.home, fmt.Sprintf("raw%d", i+1))
	rt := filepath.Join(dir, "rt")
	if err := os.MkdirAll(rt, 0o700); err != nil {
		return 0, 0, err
	}
	defer os.RemoveAll(dir)
	root := filepath.Join(dir, "root.qcow2")
	if err := disk.CreateOverlay(ctx, filepath.Join(b.img, "rootfs.ext4"), "raw", root, 4<<30); err != nil {
		return 0, 0, err
	}
	spec := vmm.Spec{
		ID: fmt.Sprintf("raw%d", i+1), VCPUs: 1, MemoryMiB: 512,
		Kernel: filepath.Join(b.img, "vmlinux"), Initrd: initrdPath,
		Root:       vmm.Disk{Path: root, Format: "qcow2"},
		RuntimeDir: rt, ConsoleLog: filepath.Join(dir, "console.log"), VMMLog: filepath.Join(dir, "vmm.log"),
	}
	argv, err := qemu.New().CommandLine(spec)
	if err != nil {
		return 0, 0, err
	}
	if b.rawNIC {
		argv = append(argv, "-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-device,netdev=n0,mac=52:54:00:12:34:56")
	}
	logf, err := os.Create(spec.VMMLog)
	if err != nil {
		return 0, 0, err
	}
	defer logf.Close()
	t0 := time.Now()
	p, err := system.Start(system.Opts{Stdout: logf, Stderr: logf}, argv...)
	if err != nil {
		return 0, 0, err
	}
	exited := make(chan error, 1)
	go func() { exited <- p.Wait() }()
	fail := func(err error) (time.Duration, time.Duration, error) {
		p.Signal(syscall.SIGKILL)
		<-exited
		con, _ := os.ReadFile(spec.ConsoleLog)
		return 0, 0, fmt.Errorf("raw qemu: %w; console: %s", err, tail(con))
	}
	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	var c *agent.Client
	for c == nil {
		select {
		case err := <-exited:
			exited <- err
			return fail(fmt.Errorf("exited during boot: %v", err))
		case <-wctx.Done():
			return fail(wctx.Err())
		default:
		}
		c = dialPing(wctx, qemu.AgentSocket(rt))
		if c == nil {
			time.Sleep(10 * time.Millisecond)
		}
	}
	ready = time.Since(t0)
	if err := c.Shutdown(wctx); err != nil {
		c.Close()
		return fail(fmt.Errorf("shutdown: %w", err))
	}
	select {
	case <-exited:
	case <-wctx.Done():
		c.Close()
		return fail(errors.New("did not exit after the agent's shutdown"))
	}
	total = time.Since(t0)
	c.Close()
	return total, ready, nil
}

// dialPing connects to the agent and pings it; nil when it is not ready.
func dialPing(ctx context.Context, sock string) *agent.Client {
	actx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(actx, "unix", sock)
	if err != nil {
		return nil
	}
	c, err := agent.Dial(actx, conn)
	if err != nil {
		conn.Close()
		return nil
	}
	if _, err := c.Ping(actx); err != nil {
		c.Close()
		return nil
	}
	return c
}

type createTimes struct{ create, boot, exec time.Duration }

// coldCreate creates a VM through the API, timing its progress events,
// then runs `true` in it through the CLI.
func (b *bench) coldCreate(name string) (createTimes, error) {
	var ct createTimes
	var tBoot, tReady time.Time
	t0 := time.Now()
	_, err := b.cl.CreateVM(context.Background(), api.CreateVMRequest{Name: name, Cold: true}, func(p api.Progress) {
		switch p.Phase {
		case "boot":
			tBoot = time.Now()
		case "ready":
			tReady = time.Now()
		}
	})
	ct.create = time.Since(t0)
	if err != nil {
		return ct, fmt.Errorf("create %s: %w", name, err)
	}
	if tBoot.IsZero() || tReady.IsZero() {
		return ct, fmt.Errorf("create %s: no boot/ready progress events", name)
	}
	ct.boot = tReady.Sub(tBoot)
	ct.exec, err = b.timed("vm", "exec", name, "--", "true")
	return ct, err
}

type stopStartTimes struct{ stop, start, boot, exec time.Duration }

// stopStart stops a VM cleanly and starts it through the API (as
// coldCreate creates), then runs `true` in it through the CLI.
func (b *bench) stopStart(name string) (stopStartTimes, error) {
	var s stopStartTimes
	ctx := context.Background()
	t0 := time.Now()
	if _, err := b.cl.StopVM(ctx, name, api.StopVMRequest{}); err != nil {
		return s, fmt.Errorf("stop %s: %w", name, err)
	}
	s.stop = time.Since(t0)
	t0 = time.Now()
	var tBoot, tReady time.Time
	if _, err := b.cl.StartVM(ctx, name, func(p api.Progress) {
		switch p.Phase {
		case "boot":
			tBoot = time.Now()
		case "ready":
			tReady = time.Now()
		}
	}); err != nil {
		return s, fmt.Errorf("start %s: %w", name, err)
	}
	s.start = time.Since(t0)
	if !tBoot.IsZero() && !tReady.IsZero() {
		s.boot = tReady.Sub(tBoot)
	}
	var err error
	s.exec, err = b.timed("vm", "exec", name, "--", "true")
	return s, err
}

func (b *bench) add(name string, vals []time.Duration, note string) {
	b.rows = append(b.rows, row{name: name, vals: vals, note: note})
}

func median(v []time.Duration) time.Duration {
	if len(v) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), v...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ratio(a, b []time.Duration) float64 {
	if median(b) == 0 {
		return 0
	}
	return float64(median(a)) / float64(median(b))
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond)) }

func (b *bench) print() {
	host, _ := os.Hostname()
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("\nbanger vmrun benchmark — %s, %s, %d runs each, QEMU accel %s, %d CPUs, load average at the end %s\n\n",
		host, time.Now().UTC().Format(time.RFC3339), b.runs, qemu.New().Accel().Accel, runtime.NumCPU(), strings.Join(strings.Fields(string(load))[:3], " "))
	w := 0
	for _, r := range b.rows {
		w = max(w, len([]rune(r.name)))
	}
	fmt.Printf("%-*s  %10s  %10s  %10s  %s\n", w, "measurement", "median", "min", "max", "note")
	fmt.Printf("%s\n", strings.Repeat("-", w+50))
	for _, r := range b.rows {
		pad := w - len([]rune(r.name))
		if r.fixed != "" || len(r.vals) == 0 {
			fmt.Printf("%s%s  %10s  %10s  %10s  %s\n", r.name, strings.Repeat(" ", pad), r.fixed, "", "", r.note)
			continue
		}
		lo, hi := r.vals[0], r.vals[0]
		for _, v := range r.vals {
			lo, hi = min(lo, v), max(hi, v)
		}
		fmt.Printf("%s%s  %10s  %10s  %10s  %s\n", r.name, strings.Repeat(" ", pad), ms(median(r.vals)), ms(lo), ms(hi), r.note)
	}
}

// cleanup deletes every VM of this run, stops its daemon and removes its
// home; a VMM that survives all that is killed.
func (b *bench) cleanup() {
	if b.home == "" {
		return
	}
	if b.bin != "" {
		if out, err := b.banger("vm", "ls", "-q"); err == nil {
			for _, n := range strings.Fields(out) {
				b.banger("vm", "delete", "--force", n)
			}
		}
		b.banger("daemon", "stop")
	}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(cmd, []byte(b.home)) {
			var pid int
			fmt.Sscanf(e.Name(), "%d", &pid)
			if pid > 0 && pid != os.Getpid() {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	os.RemoveAll(b.home)
}

func tail(b []byte) string {
	if len(b) > 800 {
		b = b[len(b)-800:]
	}
	return string(b)
}

// testImage returns the shared test image's directory, building it when
// missing (as the tests do).
func testImage() (string, error) {
	return imagetest.Ensure(context.Background(), func(format string, a ...any) { fmt.Fprintf(os.Stderr, format+"\n", a...) })
}
