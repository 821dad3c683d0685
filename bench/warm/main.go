// Command warm benchmarks warm starts (issue 6) at the level of the
// hypervisor backend and the template store, in one run on one host, and
// prints a table of medians (with min and max):
//
//   - restore floor: a clone's qemu start (its disks made beforehand) →
//     the agent answers a ping, through qemu.Backend.Start with
//     Spec.Restore and agent.Dial + Ping;
//   - clone create → ready through the API the VM manager uses:
//     Template.CloneRoot + an empty work image + Start(Restore) + agent
//     handshake + Configure(warm.Identity(...)) (fresh RNG seed,
//     clock, hostname, machine-id, MAC + address);
//   - spare clone → ready: the Configure of the clone's own identity on a
//     clone restored, configured with throw-away values and run `true`
//     beforehand (what a create served by vm.Manager's spare waits for,
//     host bookkeeping aside);
//   - cold create → ready: overlay + Start + wait for the agent +
//     Configure, the same guest shape;
//   - RSS and PSS (smaps_rollup) of idle clones (two running at once)
//     and of an idle cold-booted VM;
//   - idle CPU per VM over 10 s windows, clones and a cold VM.
//
// The guest is the shared test image (internal/image/imagetest) with this
// build's embedded agent (internal/agentbin), else one built from
// ./cmd/banger-agent. Everything lives in a temporary BANGER_HOME.
//
//	go run ./bench/warm [-n 5] [-idle 10s]
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/banger-sh/banger/internal/agent"
	"github.com/banger-sh/banger/internal/agentbin"
	"github.com/banger-sh/banger/internal/disk"
	"github.com/banger-sh/banger/internal/image"
	"github.com/banger-sh/banger/internal/image/imagetest"
	"github.com/banger-sh/banger/internal/initrd"
	"github.com/banger-sh/banger/internal/paths"
	"github.com/banger-sh/banger/internal/system"
	"github.com/banger-sh/banger/internal/vmm"
	"github.com/banger-sh/banger/internal/vmm/qemu"
	"github.com/banger-sh/banger/internal/vmm/vmmtest"
	"github.com/banger-sh/banger/internal/warm"
)

var verbose = flag.Bool("v", false, "print the phases of each create")

const (
	vcpus     = 1
	memMiB    = 256
	workBytes = 64 << 20
)

func main() {
	n := flag.Int("n", 5, "runs per measurement (at least 5 for the report)")
	idle := flag.Duration("idle", 10*time.Second, "idle CPU window")
	flag.Parse()
	b := &bench{runs: *n, idle: *idle, b: qemu.New()}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sig
		b.cleanup()
		os.Exit(130)
	}()
	err := b.run()
	b.cleanup()
	if err != nil {
		fmt.Fprintln(os.Stderr, "warm:", err)
		os.Exit(1)
	}
}

type bench struct {
	runs int
	idle time.Duration
	b    *qemu.Backend
	home string
	l    paths.Layout
	src  warm.Source
	tpl  *warm.Template
	disk disk.Strategy // cold VMs' roots, as the VM manager makes them

	mu  sync.Mutex
	vms []vmm.Handle
	seq int
}

type row struct {
	name string
	vals []float64
	unit string
	note string
}

func (r row) String() string {
	if len(r.vals) == 0 {
		return fmt.Sprintf("| %s | – | | | %s |", r.name, r.note)
	}
	v := append([]float64(nil), r.vals...)
	sort.Float64s(v)
	f := func(x float64) string {
		switch r.unit {
		case "ms":
			return fmt.Sprintf("%.0f ms", x)
		case "MiB":
			return fmt.Sprintf("%.1f MiB", x)
		case "%":
			return fmt.Sprintf("%.2f %%", x)
		}
		return fmt.Sprintf("%.2f", x)
	}
	return fmt.Sprintf("| %s | **%s** | %s | %s | %d | %s |", r.name, f(median(v)), f(v[0]), f(v[len(v)-1]), len(v), r.note)
}

func median(v []float64) float64 {
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func (b *bench) run() error {
	ctx := context.Background()
	if av := b.b.Available(ctx); !av.OK {
		return fmt.Errorf("qemu: %s", av.Reason)
	}
	var err error
	if b.home, err = os.MkdirTemp("", "bw"); err != nil {
		return err
	}
	if b.l, err = paths.Resolve(func(k string) string {
		if k == "BANGER_HOME" {
			return b.home
		}
		return ""
	}, os.Geteuid()); err != nil {
		return err
	}
	if err := b.l.Ensure(); err != nil {
		return err
	}
	imgDir, err := testImage()
	if err != nil {
		return err
	}
	man, err := image.Load(imgDir)
	if err != nil {
		return err
	}
	agentBin, agentDigest, how, err := agentBinary()
	if err != nil {
		return err
	}
	rd := filepath.Join(b.home, "initrd.img")
	mods := ""
	if man.Has(image.FileLoadOrder) {
		mods = man.Path(image.DirModules)
	}
	if err := initrd.Compose(rd, mods, agentBin); err != nil {
		return err
	}
	kernel := man.Path(image.FileVmlinux)
	if !man.Has(image.FileVmlinux) {
		kernel = man.Path(image.FileBzImage)
	}
	b.src = warm.Source{Kernel: kernel, Initrd: rd, RootBase: man.Path(image.FileRootfs), RootBaseFormat: "raw"}
	store := warm.NewStore(b.l, b.b, warm.StoreOptions{})
	sh, err := store.Complete(ctx, warm.Shape{
		ImageName: man.Name, ImageDigest: man.Digest, AgentDigest: agentDigest,
		VCPUs: vcpus, MemoryMiB: memMiB, WorkDiskBytes: workBytes, NICs: 1,
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "image %s (%s), agent %s, %s\n", man.Name, man.ShortDigest(), how, sh.VMM)
	if b.disk, err = disk.Choose(b.b.RootFormats(), b.home, disk.RealHost()); err != nil {
		return err
	}
	t0 := time.Now()
	if b.tpl, err = store.Build(ctx, sh, b.src); err != nil {
		return err
	}
	build := time.Since(t0)
	fmt.Fprintf(os.Stderr, "template %s built in %v (%d MiB on disk)\n", b.tpl.Key[:12], build.Round(time.Millisecond), b.tpl.Bytes()>>20)

	floor := row{name: "restore floor: qemu start → agent pong (disks made beforehand)", unit: "ms"}
	warm := row{name: "warm create → ready (CloneRoot, work image, Start, handshake, Configure identity)", unit: "ms"}
	cold := row{name: "cold create → ready (overlay, Start, boot, handshake, Configure)", unit: "ms"}
	spare := row{name: "spare clone → ready (Configure identity on a clone restored and rehearsed beforehand)", unit: "ms"}
	for i := 0; i < b.runs; i++ {
		d, h, err := b.floor(ctx)
		if err != nil {
			return fmt.Errorf("floor: %w", err)
		}
		b.kill(h)
		floor.vals = append(floor.vals, ms(d))
		d, h, _, err = b.warm(ctx)
		if err != nil {
			return fmt.Errorf("warm: %w", err)
		}
		b.kill(h)
		warm.vals = append(warm.vals, ms(d))
		d, h, _, err = b.cold(ctx)
		if err != nil {
			return fmt.Errorf("cold: %w", err)
		}
		b.kill(h)
		cold.vals = append(cold.vals, ms(d))
		d, h, err = b.spare(ctx)
		if err != nil {
			return fmt.Errorf("spare: %w", err)
		}
		b.kill(h)
		spare.vals = append(spare.vals, ms(d))
		fmt.Fprintf(os.Stderr, "round %d: floor %.0f ms, warm %.0f ms, cold %.0f ms, spare %.0f ms\n", i+1, floor.vals[i], warm.vals[i], cold.vals[i], spare.vals[i])
	}

	// Memory and idle CPU: two clones and one cold VM, idle together.
	rssW := row{name: "RSS, idle clone (2 running)", unit: "MiB"}
	pssW := row{name: "PSS, idle clone (2 running)", unit: "MiB"}
	rssC := row{name: "RSS, idle cold-booted VM", unit: "MiB"}
	pssC := row{name: "PSS, idle cold-booted VM", unit: "MiB"}
	cpuW := row{name: fmt.Sprintf("idle CPU per clone over %v", b.idle), unit: "%"}
	cpuC := row{name: fmt.Sprintf("idle CPU per cold VM over %v", b.idle), unit: "%"}
	for i := 0; i < b.runs; i++ {
		var clones []vmm.Handle
		for j := 0; j < 2; j++ {
			_, h, c, err := b.warm(ctx)
			if err != nil {
				return err
			}
			c.Close() // idle: no host connected, as between commands
			clones = append(clones, h)
		}
		_, ch, c, err := b.cold(ctx)
		if err != nil {
			return err
		}
		c.Close()
		time.Sleep(2 * time.Second)
		for _, h := range clones {
			m, err := vmmtest.MemoryOf(h.PID)
			if err != nil {
				return err
			}
			rssW.vals = append(rssW.vals, float64(m.RSS)/(1<<20))
			pssW.vals = append(pssW.vals, float64(m.PSS)/(1<<20))
		}
		m, err := vmmtest.MemoryOf(ch.PID)
		if err != nil {
			return err
		}
		rssC.vals = append(rssC.vals, float64(m.RSS)/(1<<20))
		pssC.vals = append(pssC.vals, float64(m.PSS)/(1<<20))
		all := append(append([]vmm.Handle(nil), clones...), ch)
		fr := make([]float64, len(all))
		var wg sync.WaitGroup
		for k, h := range all {
			wg.Add(1)
			go func() {
				defer wg.Done()
				fr[k], _ = vmmtest.CPUFraction(h.PID, b.idle)
			}()
		}
		wg.Wait()
		cpuW.vals = append(cpuW.vals, fr[0]*100, fr[1]*100)
		cpuC.vals = append(cpuC.vals, fr[2]*100)
		fmt.Fprintf(os.Stderr, "idle round %d: clone PSS %.0f/%.0f MiB, cold PSS %.0f MiB, CPU %.2f/%.2f/%.2f %%\n",
			i+1, pssW.vals[len(pssW.vals)-2], pssW.vals[len(pssW.vals)-1], pssC.vals[i], fr[0]*100, fr[1]*100, fr[2]*100)
		for _, h := range all {
			b.kill(h)
		}
	}

	fl, wm, cd := median(sorted(floor.vals)), median(sorted(warm.vals)), median(sorted(cold.vals))
	fmt.Printf("\nWarm starts, QEMU %s, %d vCPU, %d MiB, %s (medians of %d)\n\n", strings.Fields(sh.VMM)[1], vcpus, memMiB, b.tplAccel(), b.runs)
	fmt.Println("| measure | median | min | max | n | note |")
	fmt.Println("|---|---|---|---|---|---|")
	fmt.Printf("| template build (cold boot + snapshot + digests) | %.0f ms | | | 1 | %d MiB on disk |\n", ms(build), b.tpl.Bytes()>>20)
	for _, r := range []row{floor, warm, spare, cold, rssW, pssW, rssC, pssC, cpuW, cpuC} {
		fmt.Println(r)
	}
	sp := median(sorted(spare.vals))
	fmt.Printf("\nwarm / cold create→ready: %.3f× on demand, %.3f× from a spare (target ≤ 0.12×)\n", wm/cd, sp/cd)
	fmt.Printf("warm create→ready / restore floor: %.2f× on demand, %.2f× from a spare (target ≤ 1.5×)\n", wm/fl, sp/fl)
	fmt.Printf("PSS clone / cold: %.2f× (target ≤ 0.3×)\n", median(sorted(pssW.vals))/median(sorted(pssC.vals)))
	return nil
}

func sorted(v []float64) []float64 {
	v = append([]float64(nil), v...)
	sort.Float64s(v)
	return v
}

func (b *bench) tplAccel() string { return b.b.Accel().Accel }

// vmDir makes a short directory for one VM with an empty runtime dir.
func (b *bench) vmDir() (dir, rt string, err error) {
	b.mu.Lock()
	b.seq++
	n := b.seq
	b.mu.Unlock()
	dir = filepath.Join(b.home, fmt.Sprintf("v%d", n))
	rt = filepath.Join(dir, "run")
	return dir, rt, os.MkdirAll(rt, 0o700)
}

func (b *bench) spec(dir, rt string) vmm.Spec {
	return vmm.Spec{
		ID: "bw" + filepath.Base(dir), VCPUs: vcpus, MemoryMiB: memMiB,
		Kernel: b.src.Kernel, Initrd: b.src.Initrd,
		// Root: the template's CloneRoot (its strategy names the file).
		Disks:      []vmm.Disk{{Path: filepath.Join(dir, "work.img"), Format: "raw"}},
		NICs:       []vmm.NIC{{MAC: "02:ba:00:00:01:02"}},
		RuntimeDir: rt, ConsoleLog: filepath.Join(dir, "console.log"), VMMLog: filepath.Join(dir, "vmm.log"),
	}
}

func (b *bench) start(ctx context.Context, spec vmm.Spec) (vmm.Handle, error) {
	h, err := b.b.Start(ctx, spec)
	if err == nil {
		b.mu.Lock()
		b.vms = append(b.vms, h)
		b.mu.Unlock()
	}
	return h, err
}

func sparse(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Truncate(size)
}

// floor: disks made first, then qemu start → pong.
func (b *bench) floor(ctx context.Context) (time.Duration, vmm.Handle, error) {
	dir, rt, err := b.vmDir()
	if err != nil {
		return 0, vmm.Handle{}, err
	}
	spec := b.spec(dir, rt)
	spec.Restore = b.tpl.Snapshot()
	if spec.Root, err = b.tpl.CloneRoot(ctx, filepath.Join(dir, "root")); err != nil {
		return 0, vmm.Handle{}, err
	}
	if err := sparse(spec.Disks[0].Path, workBytes); err != nil {
		return 0, vmm.Handle{}, err
	}
	t0 := time.Now()
	h, err := b.start(ctx, spec)
	if err != nil {
		return 0, h, err
	}
	c, err := dial(ctx, b.b, h, 30*time.Second)
	if err != nil {
		return 0, h, err
	}
	d := time.Since(t0)
	c.Close()
	return d, h, nil
}

// warm: everything the VM manager does for a warm create, timed.
func (b *bench) warm(ctx context.Context) (time.Duration, vmm.Handle, *agent.Client, error) {
	dir, rt, err := b.vmDir()
	if err != nil {
		return 0, vmm.Handle{}, nil, err
	}
	t0 := time.Now()
	spec := b.spec(dir, rt)
	spec.Restore = b.tpl.Snapshot()
	if spec.Root, err = b.tpl.CloneRoot(ctx, filepath.Join(dir, "root")); err != nil {
		return 0, vmm.Handle{}, nil, err
	}
	if err := sparse(spec.Disks[0].Path, workBytes); err != nil {
		return 0, vmm.Handle{}, nil, err
	}
	tDisks := time.Since(t0)
	h, err := b.start(ctx, spec)
	if err != nil {
		return 0, h, nil, err
	}
	tStart := time.Since(t0)
	id, err := warm.Identity(spec.ID, &agent.NetConfig{Interface: "eth0", MAC: "02:ba:00:00:01:03", Address: "10.99.0.2/24"}, nil)
	if err != nil {
		return 0, h, nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := b.b.DialAgent(cctx, h)
	if err != nil {
		return 0, h, nil, err
	}
	c, err := agent.Dial(cctx, conn)
	if err != nil {
		return 0, h, nil, err
	}
	tDial := time.Since(t0)
	steps, err := c.ConfigureSteps(cctx, id)
	if err != nil {
		c.Close()
		return 0, h, nil, fmt.Errorf("configure clone identity: %w", err)
	}
	d := time.Since(t0)
	if *verbose {
		fmt.Fprintf(os.Stderr, "  warm: disks %v, Start %v, handshake %v, ready %v; guest steps:", ms(tDisks), ms(tStart), ms(tDial), ms(d))
		for _, s := range steps {
			fmt.Fprintf(os.Stderr, " %s %.1f", s.Name, float64(s.Micros)/1000)
		}
		fmt.Fprintln(os.Stderr)
	}
	return d, h, c, nil
}

// spare: what a create served by a spare clone waits for. The clone is
// restored and its identity step and an exec are rehearsed with
// throw-away values first (as vm.Manager does ahead of demand, untimed);
// then its own identity is applied (timed).
func (b *bench) spare(ctx context.Context) (time.Duration, vmm.Handle, error) {
	_, h, c, err := b.warm(ctx)
	if err != nil {
		return 0, h, err
	}
	defer c.Close()
	p, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"true"}, Stdin: strings.NewReader(""), Stdout: io.Discard, Stderr: io.Discard})
	if err != nil {
		return 0, h, err
	}
	if _, err := p.Wait(); err != nil {
		return 0, h, err
	}
	time.Sleep(200 * time.Millisecond) // idle, as a spare waits
	id, err := warm.Identity("spare-served", &agent.NetConfig{Interface: "eth0", MAC: "02:ba:00:00:01:04", Address: "10.99.0.3/24", Gateway: "10.99.0.1"}, nil)
	if err != nil {
		return 0, h, err
	}
	t0 := time.Now()
	steps, err := c.ConfigureSteps(ctx, id)
	d := time.Since(t0)
	if *verbose {
		fmt.Fprintf(os.Stderr, "  spare: ready %.1f ms; guest steps:", ms(d))
		for _, s := range steps {
			fmt.Fprintf(os.Stderr, " %s %.1f", s.Name, float64(s.Micros)/1000)
		}
		fmt.Fprintln(os.Stderr)
	}
	return d, h, err
}

func (b *bench) cold(ctx context.Context) (time.Duration, vmm.Handle, *agent.Client, error) {
	dir, rt, err := b.vmDir()
	if err != nil {
		return 0, vmm.Handle{}, nil, err
	}
	t0 := time.Now()
	spec := b.spec(dir, rt)
	root, err := disk.Make(ctx, b.disk, disk.Image{Path: b.src.RootBase, Format: disk.FormatRaw}, filepath.Join(dir, "root"), 0)
	if err != nil {
		return 0, vmm.Handle{}, nil, err
	}
	spec.Root = vmm.Disk{Path: root.Path, Format: root.Format}
	if err := sparse(spec.Disks[0].Path, workBytes); err != nil {
		return 0, vmm.Handle{}, nil, err
	}
	h, err := b.start(ctx, spec)
	if err != nil {
		return 0, h, nil, err
	}
	c, err := b.configure(ctx, h, spec.ID)
	return time.Since(t0), h, c, err
}

func (b *bench) configure(ctx context.Context, h vmm.Handle, name string) (*agent.Client, error) {
	t0 := time.Now()
	c, err := dial(ctx, b.b, h, 120*time.Second)
	if err != nil {
		return nil, err
	}
	if *verbose {
		defer func(t1 time.Time) {
			fmt.Fprintf(os.Stderr, "  agent pong after %v, Configure took %v\n", t1.Sub(t0), time.Since(t1))
		}(time.Now())
	}
	id, err := warm.Identity(name, &agent.NetConfig{Interface: "eth0", MAC: "02:ba:00:00:01:03", Address: "10.99.0.2/24"}, nil)
	if err != nil {
		c.Close()
		return nil, err
	}
	if err := c.Configure(ctx, id); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// dial connects to the agent and pings it, retrying until max.
func dial(ctx context.Context, be vmm.Backend, h vmm.Handle, max time.Duration) (*agent.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, max)
	defer cancel()
	for {
		conn, err := be.DialAgent(ctx, h)
		if err == nil {
			var c *agent.Client
			if c, err = agent.Dial(ctx, conn); err == nil {
				if _, err = c.Ping(ctx); err == nil {
					return c, nil
				}
				c.Close()
			}
		}
		if ctx.Err() != nil {
			return nil, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (b *bench) kill(h vmm.Handle) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.b.Kill(ctx, h); err != nil {
		fmt.Fprintln(os.Stderr, "kill:", err)
	}
}

func (b *bench) cleanup() {
	b.mu.Lock()
	vms := b.vms
	b.vms = nil
	b.mu.Unlock()
	for _, h := range vms {
		b.kill(h)
	}
	if b.home != "" {
		os.RemoveAll(b.home)
	}
}

// agentBinary is one built from ./cmd/banger-agent (as the tests do, so
// that the source under test runs), else the embedded one.
func agentBinary() (bin []byte, digest, how string, err error) {
	out := filepath.Join(os.TempDir(), fmt.Sprintf("banger-agent-%d", os.Getpid()))
	defer os.Remove(out)
	_, berr := system.RunOpts(context.Background(), system.Opts{Env: []string{"CGO_ENABLED=0"}},
		"go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, "./cmd/banger-agent")
	if berr == nil {
		if bin, err = os.ReadFile(out); err != nil {
			return nil, "", "", err
		}
		sum := sha256.Sum256(bin)
		return bin, hex.EncodeToString(sum[:]), "built from ./cmd/banger-agent", nil
	}
	if bin, err := agentbin.Binary(); err == nil {
		return bin, agentbin.Digest(), "embedded " + agentbin.Digest()[:12], nil
	}
	return nil, "", "", berr
}

// testImage returns the shared test image's directory, building it when
// missing (as the tests do).
func testImage() (string, error) {
	return imagetest.Ensure(context.Background(), func(format string, a ...any) { fmt.Fprintf(os.Stderr, format+"\n", a...) })
}
