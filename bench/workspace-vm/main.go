// Command workspace-vm benchmarks shipping a work tree into real VMs and
// bringing edits back (issues 5 and 12, "Benchmark"), in one run, on each
// tree of -repos (default: a clone of this checkout, then GOROOT/src
// committed into a temporary repository, ~11,500 files), at each -vcpus
// shape, and prints a table of medians (with min and max) with the
// baselines measured in the same run:
//
//   - main job: what `banger vm run --rm REPO -- true` adds over
//     `banger vm run --rm -- true` (paired per round); target ≤ 0.25 s on
//     this repository, ≤ 2.0 s on the Go tree;
//   - export of an unchanged workspace (`workspace export VM --out F`, what
//     --rm runs); target ≤ 0.15 s / ≤ 1.0 s;
//   - the first `git status` in the guest against the second (guest clock);
//     target ≤ 1.3x;
//   - with -prepare: `banger workspace prepare VM REPO --path DIR` into a
//     running VM made for it (untimed `vm create`; prepare attaches a work
//     disk to its empty slot, one per VM) against the naive `git archive
//     HEAD | banger vm exec VM -- tar -x -C DIR` (fresh DIRs of one VM);
//     target ≥ 2x faster; also after a file was edited just before (the
//     CLI's cached work disk cannot serve: it is built), as for the main job;
//   - on a tree with ≥ 1,000 .go files: export of 1,000 files changed in
//     the guest against `git add -A -N . && git diff --binary` run natively
//     in the guest through `banger vm exec` (raw, and with the fixed cost
//     of a `vm exec VM -- true` subtracted from both); target ≤ 1.0x;
//   - where the time goes: the host-side work-disk build, `vm create
//     --workspace`, `vm exec true`, the delete.
//
// Everything runs under an isolated BANGER_HOME (its own bridge, taps,
// nftables table, subnet and DNS port) with the shared test image
// (internal/image/imagetest) imported as "default"; binaries come from
// $BANGER_TEST_BIN or are built with `make build` into the temporary
// directory (run it from the repository's root). Every VM it creates is
// deleted and its daemon stopped at the end, also on Ctrl-C.
//
//	go run ./bench/workspace-vm [-runs 5] [-vcpus 1,2] [-repos self,goroot] [-prepare=false] [-probe] [-keep]
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/banger-sh/banger/internal/image/imagetest"
	"github.com/banger-sh/banger/internal/system"
	"github.com/banger-sh/banger/internal/workspace"
)

func main() {
	runs := flag.Int("runs", 3, "runs per measurement (median reported; at least 3 for the report)")
	vcpus := flag.String("vcpus", "1,2", "comma-separated VM shapes (vCPUs) to measure")
	repos := flag.String("repos", "self,goroot", "comma-separated trees: self (a clone of this checkout), goroot (GOROOT/src committed), or a repository path")
	probe := flag.Bool("probe", false, "also probe where prepare's time goes (one run)")
	prep := flag.Bool("prepare", true, "also measure workspace prepare against the naive pipeline (slow on a large tree)")
	keep := flag.Bool("keep", false, "keep the temporary directory (BANGER_HOME, repository)")
	pause := flag.Duration("pause", time.Second, "pause before each timed step (lets writeback settle)")
	flag.Parse()
	var shapes []int
	for _, s := range strings.Split(*vcpus, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "workspace-vm: -vcpus %q: want e.g. 1,2\n", *vcpus)
			os.Exit(2)
		}
		shapes = append(shapes, n)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	b := &bench{runs: *runs, pause: *pause, prepare: *prep, probeOn: *probe}
	err := b.run(ctx, shapes, strings.Split(*repos, ","))
	stop()
	b.cleanup(*keep)
	b.print()
	if err != nil {
		fmt.Fprintln(os.Stderr, "workspace-vm:", err)
		os.Exit(1)
	}
}

type bench struct {
	runs    int
	pause   time.Duration
	tmp     string
	home    string
	bin     string
	repo    string
	kind    string // self, goroot, path
	prepare bool
	probeOn bool
	vms     map[string]bool // VMs that may exist (deleted at the end)
	rows    []row
	notes   []string
}

type row struct {
	what    string
	vals    []time.Duration
	ratio   string
	target  string
	verdict string
	section bool // a heading
}

var gitEnv = []string{
	"GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1",
	"GIT_AUTHOR_NAME=bench", "GIT_AUTHOR_EMAIL=bench@localhost",
	"GIT_COMMITTER_NAME=bench", "GIT_COMMITTER_EMAIL=bench@localhost",
}

func (b *bench) environ() []string {
	return []string{"BANGER_HOME=" + b.home, "BANGER_BANGERD=" + filepath.Join(b.bin, "bangerd")}
}

func (b *bench) bangerPath() string { return filepath.Join(b.bin, "banger") }

// banger runs the CLI and returns its stdout.
func (b *bench) banger(ctx context.Context, args ...string) (string, error) {
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	defer cancel()
	_, err := system.RunOpts(ctx, system.Opts{Env: b.environ(), Stdout: &out, Stderr: &errb},
		append([]string{b.bangerPath()}, args...)...)
	if err != nil {
		return out.String(), fmt.Errorf("banger %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// timed pauses, then times fn.
func (b *bench) timed(fn func() error) (time.Duration, error) {
	time.Sleep(b.pause)
	t0 := time.Now()
	err := fn()
	return time.Since(t0), err
}

func (b *bench) timedBanger(ctx context.Context, args ...string) (time.Duration, string, error) {
	var out string
	d, err := b.timed(func() error {
		var err error
		out, err = b.banger(ctx, args...)
		return err
	})
	return d, out, err
}

func (b *bench) log(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
}

func (b *bench) run(ctx context.Context, shapes []int, repos []string) error {
	var err error
	if b.tmp, err = os.MkdirTemp("", "bgwsbench"); err != nil {
		return err
	}
	b.home = filepath.Join(b.tmp, "home")
	b.vms = map[string]bool{}
	if err := b.isolate(); err != nil {
		return err
	}
	b.bin = os.Getenv("BANGER_TEST_BIN")
	if b.bin == "" {
		b.bin = filepath.Join(b.tmp, "bin")
	}
	// Also in this process's own environment: a banger started by a shell
	// pipeline below must never reach the user's real home.
	for _, kv := range b.environ() {
		k, v, _ := strings.Cut(kv, "=")
		os.Setenv(k, v)
	}
	if os.Getenv("BANGER_TEST_BIN") == "" {
		root, _ := filepath.Abs(".")
		b.log("building into %s", b.bin)
		if _, err := system.RunOpts(ctx, system.Opts{Dir: root}, "make", "build", "BIN="+b.bin); err != nil {
			return fmt.Errorf("make build (run from the repository's root): %w", err)
		}
	}
	img, err := testImage()
	if err != nil {
		return err
	}
	if _, err := b.banger(ctx, "image", "import", "default", "--kernel", filepath.Join(img, "vmlinux"),
		"--rootfs", filepath.Join(img, "rootfs.ext4"), "--modules", filepath.Join(img, "modules")); err != nil {
		return err
	}
	if _, err := b.banger(ctx, "daemon", "start"); err != nil {
		return err
	}
	for _, r := range repos {
		if err := b.tree(ctx, strings.TrimSpace(r), shapes); err != nil {
			return err
		}
	}
	return nil
}

// tree measures everything on one tree.
func (b *bench) tree(ctx context.Context, kind string, shapes []int) error {
	b.kind = kind
	if err := b.makeRepo(ctx, kind); err != nil {
		return err
	}
	set, err := workspace.List(ctx, b.repo, workspace.ListOptions{})
	if err != nil {
		return err
	}
	b.notes = append(b.notes, fmt.Sprintf("tree %s: %s: %d files, %d MiB of content", kind, b.repo, len(set.Files), set.TotalSize>>20))
	b.rows = append(b.rows, row{what: fmt.Sprintf("== tree %s (%d files) ==", kind, len(set.Files)), section: true})

	// Host floor.
	var floor []time.Duration
	for range b.runs {
		d, err := b.timed(func() error {
			_, err := system.RunOpts(ctx, system.Opts{Dir: b.repo},
				"sh", "-c", "git ls-files -z | tar --null -T - -c | cat >/dev/null")
			return err
		})
		if err != nil {
			return err
		}
		floor = append(floor, d)
	}
	b.rows = append(b.rows, row{what: "host floor: git ls-files -z | tar --null -T - -c | cat >/dev/null", vals: floor, ratio: "(floor)"})
	b.log("host floor %s", secs(median(floor)))

	for _, n := range shapes {
		if err := b.shape(ctx, n, floor); err != nil {
			return err
		}
	}
	return nil
}

// shape measures everything on VMs with n vCPUs.
func (b *bench) shape(ctx context.Context, n int, floor []time.Duration) error {
	vc := strconv.Itoa(n)
	b.rows = append(b.rows, row{what: fmt.Sprintf("-- %d vCPU, 512 MiB (QEMU TCG) --", n), section: true})
	// Warm-up, not counted: composes/caches the initrd, warms page cache.
	b.log("[%d vCPU] warm-up", n)
	if _, err := b.banger(ctx, "vm", "run", "--rm", "--vcpu", vc, "--", "true"); err != nil {
		return err
	}
	if _, err := b.banger(ctx, "vm", "run", "--rm", "--vcpu", vc, b.repo, "--", "true"); err != nil {
		return err
	}
	naiveVM := fmt.Sprintf("naive%d", n)
	if b.prepare {
		b.vms[naiveVM] = true
		if _, err := b.banger(ctx, "vm", "create", naiveVM, "--vcpu", vc); err != nil {
			return err
		}
	}
	var runTrue, runWS, added, addedEdited, naive, prepare, prepareEdited []time.Duration
	var hostBuild, createWS, execTrue, status1, status2, status1Guest, status2Guest, cleanExport, del []time.Duration
	for i := range b.runs {
		// Main job, paired: vm run of true, then of git status with REPO
		// (the order alternates between rounds).
		var dTrue, dWS time.Duration
		for k := range 2 {
			if (i+k)%2 == 0 {
				d, _, err := b.timedBanger(ctx, "vm", "run", "--rm", "--vcpu", vc, "--", "true")
				if err != nil {
					return err
				}
				dTrue = d
			} else {
				d, _, err := b.timedBanger(ctx, "vm", "run", "--rm", "--vcpu", vc, b.repo, "--", "true")
				if err != nil {
					return err
				}
				dWS = d
			}
		}
		runTrue, runWS, added = append(runTrue, dTrue), append(runWS, dWS), append(added, dWS-dTrue)
		// The same with a file edited just before (the CLI's cached work
		// disk does not serve: it is built), then an untimed run that
		// records the edited tree's disk for the next round's cached run.
		if err := b.editFile(i); err != nil {
			return err
		}
		dEd, _, err := b.timedBanger(ctx, "vm", "run", "--rm", "--vcpu", vc, b.repo, "--", "true")
		if err != nil {
			return err
		}
		addedEdited = append(addedEdited, dEd-dTrue)
		time.Sleep(1100 * time.Millisecond) // past the cache's racy second
		if _, err := b.banger(ctx, "vm", "run", "--rm", "--vcpu", vc, b.repo, "--", "true"); err != nil {
			return err
		}

		if b.prepare {
			if err := b.prepareRound(ctx, i, vc, naiveVM, &naive, &prepare, &prepareEdited); err != nil {
				return err
			}
		}
		b.log("[%d vCPU] round %d: vm run true %s, vm run REPO true %s (adds %s)",
			n, i+1, secs(dTrue), secs(dWS), secs(dWS-dTrue))

		// Where the main job's time goes.
		d, err := b.timed(func() error {
			s, err := workspace.List(ctx, b.repo, workspace.ListOptions{})
			if err != nil {
				return err
			}
			dest := filepath.Join(b.tmp, "work.ext4")
			defer os.Remove(dest)
			_, err = workspace.BuildDisk(ctx, b.repo, s, workspace.DiskOptions{Dest: dest})
			return err
		})
		if err != nil {
			return err
		}
		hostBuild = append(hostBuild, d)
		ws := fmt.Sprintf("ws%d-%d", n, i)
		b.vms[ws] = true
		d, _, err = b.timedBanger(ctx, "vm", "create", ws, "--vcpu", vc, "--workspace", b.repo)
		if err != nil {
			return err
		}
		createWS = append(createWS, d)
		d, _, err = b.timedBanger(ctx, "vm", "exec", ws, "--", "true")
		if err != nil {
			return err
		}
		execTrue = append(execTrue, d)
		var guest time.Duration
		d, _, err = b.timed2(func() error {
			var err error
			guest, err = b.guestTime(ctx, ws, "cd /root/repo && git status >/dev/null")
			return err
		})
		if err != nil {
			return err
		}
		status1, status1Guest = append(status1, d), append(status1Guest, guest)
		d, _, err = b.timed2(func() error {
			var err error
			guest, err = b.guestTime(ctx, ws, "cd /root/repo && git status >/dev/null")
			return err
		})
		if err != nil {
			return err
		}
		status2, status2Guest = append(status2, d), append(status2Guest, guest)
		if out, err := b.banger(ctx, "vm", "exec", ws, "--cwd", "/root/repo", "--", "git", "status", "--porcelain"); err != nil || strings.TrimSpace(out) != "" {
			return fmt.Errorf("the shipped tree is not clean: %v\n%s", err, out)
		}
		patch := filepath.Join(b.tmp, "clean.patch")
		d, _, err = b.timedBanger(ctx, "workspace", "export", ws, "--out", patch)
		if err != nil {
			return err
		}
		if st, err := os.Stat(patch); err != nil || st.Size() != 0 {
			return fmt.Errorf("clean export of %s is not empty: %v %v", ws, st, err)
		}
		cleanExport = append(cleanExport, d)
		d, _, err = b.timedBanger(ctx, "vm", "delete", ws)
		if err != nil {
			return err
		}
		delete(b.vms, ws)
		del = append(del, d)
		b.log("[%d vCPU] round %d: host build %s, create --workspace %s, exec true %s, first git status %s (guest %s), second %s, clean export %s, delete %s",
			n, i+1, secs(hostBuild[i]), secs(createWS[i]), secs(execTrue[i]), secs(status1[i]), secs(status1Guest[i]), secs(status2[i]), secs(cleanExport[i]), secs(del[i]))
	}
	target := func(ok bool) string {
		if ok {
			return "met"
		}
		return "MISSED"
	}
	// The targets of issue 12.
	mainT, cleanT := 0.25, 0.15
	if b.kind != "self" {
		mainT, cleanT = 2.0, 1.0
	}
	b.rows = append(b.rows,
		row{what: "vm run --rm -- true", vals: runTrue, ratio: "(baseline)"},
		row{what: "vm run --rm REPO -- true", vals: runWS},
		row{what: "MAIN JOB: added by REPO (paired difference)", vals: added,
			target: fmt.Sprintf("≤ %.2f s", mainT), verdict: target(median(added).Seconds() <= mainT)},
		row{what: "  the same, a file edited just before (disk built, not cached)", vals: addedEdited,
			target: fmt.Sprintf("≤ %.2f s", mainT), verdict: target(median(addedEdited).Seconds() <= mainT)},
		row{what: "UNCHANGED EXPORT: workspace export VM --out F (as --rm does)", vals: cleanExport,
			target: fmt.Sprintf("≤ %.2f s", cleanT), verdict: target(median(cleanExport).Seconds() <= cleanT)},
		row{what: "second git status in guest (guest clock)", vals: status2Guest, ratio: "(baseline)"},
		row{what: "FIRST GIT STATUS in guest (guest clock)", vals: status1Guest,
			ratio: fmt.Sprintf("%.2fx second", ratio(status1Guest, status2Guest)), target: "≤ 1.3x", verdict: target(ratio(status1Guest, status2Guest) <= 1.3)},
	)
	if b.prepare {
		rP := ratio(naive, prepare)
		b.rows = append(b.rows,
			row{what: "naive: git archive HEAD | vm exec VM -- tar -x -C DIR", vals: naive,
				ratio: fmt.Sprintf("(baseline); %.1fx floor", ratio(naive, floor))},
			row{what: "RUNNING VM: workspace prepare VM REPO --path DIR", vals: prepare,
				ratio: fmt.Sprintf("%.2fx faster than naive; %.1fx floor", rP, ratio(prepare, floor)), target: "≥ 2x faster", verdict: target(rP >= 2)},
			row{what: "  the same, a file edited just before (disk built, not cached)", vals: prepareEdited,
				ratio: fmt.Sprintf("%.2fx faster than naive", ratio(naive, prepareEdited)), target: "≥ 2x faster", verdict: target(ratio(naive, prepareEdited) >= 2)})
	}
	b.rows = append(b.rows,
		row{what: "  breakdown: host List + BuildDisk (in process)", vals: hostBuild},
		row{what: "  breakdown: vm create --workspace REPO (CLI, incl. build)", vals: createWS},
		row{what: "  breakdown: vm exec VM -- true", vals: execTrue},
		row{what: "  breakdown: first git status (vm exec wall)", vals: status1},
		row{what: "  breakdown: second git status (vm exec wall)", vals: status2},
		row{what: "  breakdown: vm delete", vals: del},
	)
	if b.prepare && b.probeOn {
		if err := b.probe(ctx, n, naiveVM); err != nil {
			return err
		}
	}
	if goFiles, _ := system.RunOpts(ctx, system.Opts{Dir: b.repo}, "sh", "-c", "git ls-files -- '*.go' | wc -l"); atoi(goFiles) >= 1000 {
		if err := b.exportBench(ctx, n); err != nil {
			return err
		}
	} else {
		b.notes = append(b.notes, fmt.Sprintf("tree %s: fewer than 1,000 .go files: no 1,000-file export measured", b.kind))
	}
	if !b.prepare {
		return nil
	}
	if _, err := b.banger(ctx, "vm", "delete", "--force", naiveVM); err != nil {
		return err
	}
	delete(b.vms, naiveVM)
	return nil
}

// prepareRound times the naive pipeline into a fresh directory of the
// running VM naiveVM, and workspace prepare into a running VM created for
// it (untimed: a VM holds one prepared workspace).
func (b *bench) prepareRound(ctx context.Context, i int, vcpus, naiveVM string, naive, prepare, prepareEdited *[]time.Duration) error {
	dir := fmt.Sprintf("/root/naive%d", i)
	if _, err := b.banger(ctx, "vm", "exec", naiveVM, "--", "mkdir", "-p", dir); err != nil {
		return err
	}
	d, err := b.timed(func() error {
		_, err := system.RunOpts(ctx, system.Opts{Dir: b.repo, Env: append(b.environ(), gitEnv...)}, "sh", "-c",
			`set -e; git archive HEAD | "$0" vm exec "$1" -- tar -x -C "$2"`, b.bangerPath(), naiveVM, dir)
		return err
	})
	if err != nil {
		return fmt.Errorf("naive: %w", err)
	}
	*naive = append(*naive, d)
	if err := b.checkCount(ctx, naiveVM, dir, false); err != nil {
		return err
	}
	for k, into := range []*[]time.Duration{prepare, prepareEdited} {
		if k == 1 {
			if err := b.editFile(i); err != nil {
				return err
			}
		}
		prepVM := fmt.Sprintf("prep%s-%d-%d", vcpus, i, k)
		b.vms[prepVM] = true
		if _, err := b.banger(ctx, "vm", "create", prepVM, "--vcpu", vcpus); err != nil {
			return err
		}
		pdir := fmt.Sprintf("/root/prep%d", i)
		d, _, err := b.timedBanger(ctx, "workspace", "prepare", prepVM, b.repo, "--path", pdir)
		if err != nil {
			return err
		}
		*into = append(*into, d)
		if err := b.checkCount(ctx, prepVM, pdir, true); err != nil {
			return err
		}
		if _, err := b.banger(ctx, "vm", "delete", "--force", prepVM); err != nil {
			return err
		}
		delete(b.vms, prepVM)
	}
	b.log("round %d: naive %s; prepare %s, after an edit %s", i+1, secs((*naive)[i]), secs((*prepare)[i]), secs((*prepareEdited)[i]))
	return nil
}

// editFile appends a line to a tracked text file of the tree and commits
// it: the tree then differs from its last shipped disk.
func (b *bench) editFile(round int) error {
	name := ""
	for _, n := range []string{"README.md", "go/build/doc.go"} {
		if _, err := os.Stat(filepath.Join(b.repo, n)); err == nil {
			name = n
			break
		}
	}
	if name == "" { // another repository: its first regular file
		set, err := workspace.List(context.Background(), b.repo, workspace.ListOptions{})
		if err != nil {
			return err
		}
		for _, f := range set.Files {
			if f.Mode.IsRegular() {
				name = f.Path
				break
			}
		}
	}
	f, err := os.OpenFile(filepath.Join(b.repo, name), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("edit a file of the tree: %w", err)
	}
	_, err = fmt.Fprintf(f, "\n// bench edit %d\n", round)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	// Committed: the shipped tree stays clean (the rounds check that).
	_, err = system.RunOpts(context.Background(), system.Opts{Dir: b.repo, Env: gitEnv}, "git", "commit", "-q", "-a", "-m", fmt.Sprintf("bench edit %d", round))
	return err
}

func (b *bench) timed2(fn func() error) (time.Duration, string, error) {
	d, err := b.timed(fn)
	return d, "", err
}

// guestTime runs script in the guest and returns how long it took by the
// guest's clock.
func (b *bench) guestTime(ctx context.Context, vm, script string) (time.Duration, error) {
	out, err := b.banger(ctx, "vm", "exec", vm, "--", "sh", "-c",
		`a=$(date +%s%N); sh -c "$1" || exit $?; z=$(date +%s%N); echo $((z-a))`, "sh", script)
	if err != nil {
		return 0, err
	}
	ns, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("guest time: %q: %w", out, err)
	}
	return time.Duration(ns), nil
}

// checkCount verifies (untimed) that dir in the VM holds the tree's files,
// removes it and syncs the guest so that writeback does not land in the
// next step.
func (b *bench) checkCount(ctx context.Context, vm, dir string, withGit bool) error {
	out, err := b.banger(ctx, "vm", "exec", vm, "--", "sh", "-c",
		`find "$1" -path "$1/.git" -prune -o ! -type d -print | wc -l; sync`, "sh", dir)
	if err != nil {
		return err
	}
	got, _ := strconv.Atoi(strings.TrimSpace(out))
	want, err := system.RunOpts(ctx, system.Opts{Dir: b.repo}, "sh", "-c", "git ls-files | wc -l")
	if err != nil {
		return err
	}
	w, _ := strconv.Atoi(strings.TrimSpace(string(want)))
	if got != w {
		return fmt.Errorf("%s:%s holds %d files, want %d", vm, dir, got, w)
	}
	if withGit {
		if _, err := b.banger(ctx, "vm", "exec", vm, "--cwd", dir, "--", "git", "log", "-1", "--format=%H"); err != nil {
			return err
		}
	}
	// The guest's root filesystem is small: remove the tree again.
	_, err = b.banger(ctx, "vm", "exec", vm, "--", "sh", "-c", `rm -rf -- "$1"; sync`, "sh", dir)
	return err
}

// exportBench times the export of 1,000 files changed in the guest against
// git diff --binary run natively there.
func (b *bench) exportBench(ctx context.Context, n int) error {
	vc := strconv.Itoa(n)
	vm := fmt.Sprintf("exp%d", n)
	b.vms[vm] = true
	if _, err := b.banger(ctx, "vm", "create", vm, "--vcpu", vc, "--workspace", b.repo); err != nil {
		return err
	}
	out, err := b.banger(ctx, "vm", "exec", vm, "--cwd", "/root/repo", "--", "sh", "-c",
		`git ls-files -- '*.go' | head -n 1000 | while IFS= read -r f; do printf '\n// edited in the guest\n' >> "$f"; done; sync; git status --porcelain | wc -l`)
	if err != nil {
		return err
	}
	if strings.TrimSpace(out) != "1000" {
		return fmt.Errorf("%s: %q files changed, want 1000", vm, strings.TrimSpace(out))
	}
	native := []string{"vm", "exec", vm, "--", "sh", "-c", "cd /root/repo && git add -A -N . >/dev/null; git diff --binary > /dev/null"}
	patch := filepath.Join(b.tmp, "export.patch")
	export := []string{"workspace", "export", vm, "--out", patch}
	// Warm-up (page cache in the guest), not counted.
	if _, err := b.banger(ctx, native...); err != nil {
		return err
	}
	if _, err := b.banger(ctx, export...); err != nil {
		return err
	}
	var tTrue, tNative, tExport, nNative, nExport, gNative, gExport []time.Duration
	for i := range b.runs {
		d, _, err := b.timedBanger(ctx, "vm", "exec", vm, "--", "true")
		if err != nil {
			return err
		}
		tTrue = append(tTrue, d)
		for k := range 2 {
			if (i+k)%2 == 0 {
				d, _, err := b.timedBanger(ctx, native...)
				if err != nil {
					return err
				}
				tNative = append(tNative, d)
			} else {
				d, _, err := b.timedBanger(ctx, export...)
				if err != nil {
					return err
				}
				tExport = append(tExport, d)
			}
		}
		nNative, nExport = append(nNative, tNative[i]-d), append(nExport, tExport[i]-d)
		// The same two, timed by the guest's clock (no exec/CLI cost).
		g, err := b.guestTime(ctx, vm, "cd /root/repo && git add -A -N . >/dev/null; git diff --binary > /dev/null")
		if err != nil {
			return err
		}
		gNative = append(gNative, g)
		g, err = b.guestTime(ctx, vm, "sh -c "+shq(workspace.ExportCommand("/root/repo")[2])+" banger-export /root/repo >/dev/null")
		if err != nil {
			return err
		}
		gExport = append(gExport, g)
		b.log("[%d vCPU] export round %d: exec true %s, native %s, export %s; guest clock: native %s, export script %s",
			n, i+1, secs(tTrue[i]), secs(tNative[i]), secs(tExport[i]), secs(gNative[i]), secs(gExport[i]))
	}
	data, err := os.ReadFile(patch)
	if err != nil {
		return err
	}
	files := bytes.Count(data, []byte("\ndiff --git ")) + map[bool]int{true: 1}[bytes.HasPrefix(data, []byte("diff --git "))]
	b.notes = append(b.notes, fmt.Sprintf("%d vCPU: the exported patch has %d files, %d KiB", n, files, len(data)>>10))
	if files != 1000 {
		return fmt.Errorf("exported patch has %d files, want 1000", files)
	}
	verdict := func(r float64) string {
		if r <= 1.0 {
			return "met"
		}
		return "MISSED"
	}
	r, rn := ratio(tExport, tNative), ratio(nExport, nNative)
	b.rows = append(b.rows,
		row{what: "vm exec VM -- true (fixed cost)", vals: tTrue},
		row{what: "native in guest: vm exec VM -- git add -A -N; git diff --binary", vals: tNative, ratio: "(baseline)"},
		row{what: "EXPORT 1,000 changed: workspace export VM --out F", vals: tExport,
			ratio: fmt.Sprintf("%.2fx native", r), target: "≤ 1.0x", verdict: verdict(r)},
		row{what: "  native minus exec true", vals: nNative, ratio: "(baseline)"},
		row{what: "  export minus exec true", vals: nExport,
			ratio: fmt.Sprintf("%.2fx native", rn), target: "≤ 1.0x", verdict: verdict(rn)},
		row{what: "  guest clock: git add -A -N; git diff --binary", vals: gNative, ratio: "(baseline)"},
		row{what: "  guest clock: banger's export script", vals: gExport,
			ratio: fmt.Sprintf("%.2fx native", ratio(gExport, gNative))},
	)
	if _, err := b.banger(ctx, "vm", "delete", "--force", vm); err != nil {
		return err
	}
	delete(b.vms, vm)
	return nil
}

// probe measures, once, where the time of workspace prepare goes: the
// transport of banger's own tar stream (workspace.TarStream) into the
// guest, and its extraction in the guest from a local file by GNU tar, by
// the agent's put-tar code path (every call through an os.Root:
// untarprobe -mode root) and by the same calls on plain paths.
//
// Measured 2026-11-25 (1 vCPU, same VM, idle host): GNU tar 7.3 s with
// 5,299 guest context switches (/proc/stat ctxt); the Go code on plain
// paths 31.3 s with 409,582, with GOGC=off no faster: the Go runtime's
// threads ping-pong on the single vCPU around syscalls that emulation
// makes slow, and os.Root's per-component resolution doubles the count.
func (b *bench) probe(ctx context.Context, n int, vm string) error {
	probe := filepath.Join(b.tmp, "untarprobe")
	if _, err := os.Stat(probe); err != nil {
		root, _ := filepath.Abs(".")
		if _, err := system.RunOpts(ctx, system.Opts{Dir: root, Env: []string{"CGO_ENABLED=0"}},
			"go", "build", "-o", probe, "./bench/workspace-vm/untarprobe"); err != nil {
			return err
		}
	}
	tarPath := filepath.Join(b.tmp, "prepare.tar")
	var tarSize int64
	d, err := b.timed(func() error {
		f, err := os.Create(tarPath)
		if err != nil {
			return err
		}
		defer f.Close()
		s, err := workspace.List(ctx, b.repo, workspace.ListOptions{})
		if err != nil {
			return err
		}
		if _, err := workspace.TarStream(ctx, b.repo, s, f); err != nil {
			return err
		}
		st, err := f.Stat()
		tarSize = st.Size()
		return err
	})
	if err != nil {
		return err
	}
	b.rows = append(b.rows, row{what: "  prepare, where: host List + TarStream to a file (1 run)", vals: []time.Duration{d}, ratio: fmt.Sprintf("%d MiB of tar", tarSize>>20)})
	feed := func(file string, args ...string) (time.Duration, error) {
		return b.timed(func() error {
			f, err := os.Open(file)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = system.RunOpts(ctx, system.Opts{Env: b.environ(), Stdin: f}, append([]string{b.bangerPath(), "vm", "exec", vm, "--"}, args...)...)
			return err
		})
	}
	if _, err := feed(probe, "sh", "-c", "cat > /root/untarprobe && chmod +x /root/untarprobe"); err != nil {
		return err
	}
	dc, err := feed(tarPath, "sh", "-c", "cat > /dev/null")
	if err != nil {
		return err
	}
	df, err := feed(tarPath, "sh", "-c", "cat > /root/prepare.tar && sync")
	if err != nil {
		return err
	}
	b.rows = append(b.rows,
		row{what: "  prepare, where: tar | vm exec VM -- cat >/dev/null (1 run)", vals: []time.Duration{dc}, ratio: "transport only"},
		row{what: "  prepare, where: tar | vm exec VM -- cat >FILE; sync (1 run)", vals: []time.Duration{df}})
	for _, m := range []struct{ what, cmd string }{
		{"guest GNU tar -xf FILE (no channel)", `tar -xf /root/prepare.tar -C "$1"`},
		{"guest put-tar code, os.Root (as the agent) < FILE", `/root/untarprobe -mode root "$1" </root/prepare.tar >/dev/null`},
		{"guest put-tar code, plain paths < FILE", `/root/untarprobe -mode plain "$1" </root/prepare.tar >/dev/null`},
	} {
		dir := "/root/probe"
		g, err := b.guestTime(ctx, vm, "mkdir -p "+dir+" && set -- "+dir+" && "+m.cmd)
		if err != nil {
			return fmt.Errorf("%s: %w", m.what, err)
		}
		if _, err := b.banger(ctx, "vm", "exec", vm, "--", "sh", "-c", "rm -rf "+dir+"; sync"); err != nil {
			return err
		}
		b.rows = append(b.rows, row{what: "  prepare, where: " + m.what + " (1 run, guest clock)", vals: []time.Duration{g}})
		b.log("[%d vCPU] probe: %s: %s", n, m.what, secs(g))
	}
	_, err = b.banger(ctx, "vm", "exec", vm, "--", "rm", "-f", "/root/prepare.tar", "/root/untarprobe")
	return err
}

func atoi(b []byte) int { n, _ := strconv.Atoi(strings.TrimSpace(string(b))); return n }

func shq(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func (b *bench) makeRepo(ctx context.Context, kind string) error {
	switch kind {
	case "goroot":
	case "self":
		root, err := filepath.Abs(".")
		if err != nil {
			return err
		}
		b.repo = filepath.Join(b.tmp, "self")
		_, err = system.RunOpts(ctx, system.Opts{Env: gitEnv}, "git", "clone", "-q", root, b.repo)
		return err
	default:
		b.repo = kind
		return nil
	}
	out, err := system.Run(ctx, "go", "env", "GOROOT")
	if err != nil {
		return err
	}
	src := filepath.Join(strings.TrimSpace(string(out)), "src")
	b.repo = filepath.Join(b.tmp, "repo")
	b.log("committing %s into %s", src, b.repo)
	if err := os.MkdirAll(b.repo, 0o755); err != nil {
		return err
	}
	if _, err := system.Run(ctx, "cp", "-a", src+"/.", b.repo+"/"); err != nil {
		return err
	}
	for _, argv := range [][]string{
		{"git", "init", "-q"}, {"git", "add", "-A"}, {"git", "-c", "gc.auto=0", "commit", "-q", "-m", "src"}, {"git", "gc", "-q"},
	} {
		if _, err := system.RunOpts(ctx, system.Opts{Dir: b.repo, Env: gitEnv}, argv...); err != nil {
			return err
		}
	}
	return nil
}

// isolate gives this run's daemon its own bridge, taps, nftables table,
// subnet and DNS port.
func (b *bench) isolate() error {
	n := 210 + os.Getpid()%30
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	port := c.LocalAddr().(*net.UDPAddr).Port
	c.Close()
	cfg := fmt.Sprintf("[network]\nsubnet = \"172.31.%d.0/24\"\ndns_port = %d\nbridge = \"bgws%d\"\ntap_prefix = \"bgws%dt\"\nnft_table = \"banger_wsbench_%d\"\n", n, port, n, n, n)
	if err := os.MkdirAll(filepath.Join(b.home, "config"), 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(b.home, "config", "config.toml"), []byte(cfg), 0o644)
}

// testImage returns the shared test image's directory, building it when
// missing (as the tests do).
func testImage() (string, error) {
	return imagetest.Ensure(context.Background(), func(format string, a ...any) { fmt.Fprintf(os.Stderr, format+"\n", a...) })
}

// cleanup deletes every VM this run created and stops its daemon.
func (b *bench) cleanup(keep bool) {
	if b.home == "" || b.bin == "" {
		if b.tmp != "" && !keep {
			os.RemoveAll(b.tmp)
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for vm := range b.vms {
		if _, err := b.banger(ctx, "vm", "delete", "--force", vm); err != nil && !strings.Contains(err.Error(), "not found") {
			fmt.Fprintln(os.Stderr, "cleanup:", err)
		}
	}
	if out, err := b.banger(ctx, "vm", "ls", "-q"); err == nil && strings.TrimSpace(out) != "" {
		for _, vm := range strings.Fields(out) {
			b.banger(ctx, "vm", "delete", "--force", vm)
		}
	}
	if _, err := b.banger(ctx, "daemon", "stop"); err != nil {
		fmt.Fprintln(os.Stderr, "cleanup:", err)
	}
	if keep {
		fmt.Fprintln(os.Stderr, "kept", b.tmp)
		return
	}
	if err := os.RemoveAll(b.tmp); err != nil && !errors.Is(err, os.ErrNotExist) {
		fmt.Fprintln(os.Stderr, "cleanup:", err)
	}
}

func (b *bench) print() {
	if len(b.rows) == 0 {
		return
	}
	fmt.Println()
	for _, n := range b.notes {
		fmt.Println(n)
	}
	fmt.Printf("medians of %d runs, seconds\n\n", b.runs)
	f := "%-66s %7s %7s %7s  %-42s %-12s %s\n"
	fmt.Printf(f, "what", "median", "min", "max", "ratio vs baseline", "target", "verdict")
	for _, r := range b.rows {
		if r.section {
			fmt.Println(r.what)
			continue
		}
		s := sorted(r.vals)
		fmt.Printf(f, r.what, secs(median(s)), secs(s[0]), secs(s[len(s)-1]), r.ratio, r.target, r.verdict)
	}
}

func sorted(ds []time.Duration) []time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s
}

func median(ds []time.Duration) time.Duration {
	s := sorted(ds)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// ratio is median(a) / median(b).
func ratio(a, b []time.Duration) float64 {
	return median(a).Seconds() / median(b).Seconds()
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2f", d.Seconds()) }
