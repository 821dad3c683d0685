package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/client"
	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/workspace"
)

func addVMCommands(root *cobra.Command, e *env) {
	vm := group(&cobra.Command{Use: "vm", Short: "Create, run, inspect and remove VMs"})
	vm.AddCommand(newVMCreateCmd(e), newVMListCmd(e), newVMShowCmd(e), newVMExecCmd(e), newVMRunCmd(e),
		newVMDeleteCmd(e), newVMStopCmd(e), newVMStartCmd(e), newVMRestartCmd(e), newVMSetCmd(e), newVMLogsCmd(e), newVMSSHCmd(e), newVMPortCmd(e),
		newVMCatCmd(e), newVMPutCmd(e), newVMDirCmd(e))
	root.AddCommand(vm, newImageCmd(e), newWorkspaceCmd(e), newRunCmd(e))
}

// progressPrinter shows a VM command's progress on stderr: a live line on
// a terminal; otherwise only long work (a first-use image build) and
// warnings; nothing when quiet.
func (e *env) progressPrinter(quiet bool) (client.Progress, func()) {
	if quiet {
		return e.progress(progressQuiet)
	}
	return e.progress(e.progressFor(false, false))
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n-1] + "…"
	}
	return s
}

type createFlags struct {
	workspace string
	untracked bool
	wsPath    string
	image     string
	vcpus     int
	mem       int
	disk      string
	net       string
	cold      bool
}

func (f *createFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.image, "image", "", "image to boot (default: the configured vm.image, built on first use)")
	cmd.Flags().IntVar(&f.vcpus, "vcpu", 0, "virtual CPUs (default: vm.vcpus from the config, 1)")
	cmd.Flags().IntVar(&f.mem, "mem", 0, "memory in MiB (default: vm.memory_mib from the config, 512)")
	cmd.Flags().StringVar(&f.disk, "disk", "", "root disk size, e.g. 8G (default: vm.disk from the config, 4G)")
	cmd.Flags().BoolVar(&f.cold, "cold", false, "boot cold even when a warm-start template exists")
	cmd.Flags().StringVar(&f.net, "net", "", "network: nat (the internet through the host, not the host's own or private networks: see network.allow), none (no egress), shared (nat, and reach the other shared VMs) or off (no NIC) (default: network.egress from the config, nat)")
}

func (f *createFlags) request(name string, cmd *cobra.Command) (api.CreateVMRequest, error) {
	req := api.CreateVMRequest{Name: name, Image: f.image, VCPUs: f.vcpus, MemoryMiB: f.mem, Disk: f.disk, Net: f.net, Cold: f.cold}
	// An explicit 0 is an error, not "the default".
	if cmd.Flags().Changed("vcpu") && f.vcpus < 1 {
		return req, errdefs.InvalidArgument(fmt.Sprintf("--vcpu %d: must be between 1 and 64", f.vcpus))
	}
	if cmd.Flags().Changed("mem") && f.mem < 1 {
		return req, errdefs.InvalidArgument(fmt.Sprintf("--mem %d: must be between 128 and 65536 MiB", f.mem))
	}
	return req, nil
}

func newVMCreateCmd(e *env) *cobra.Command {
	var f createFlags
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "create [NAME]",
		Short: "Create a VM and boot it; returns when its agent is ready",
		Args:  args(cobra.MaximumNArgs(1)),
		RunE: func(c *cobra.Command, a []string) error {
			name := ""
			if len(a) == 1 {
				name = a[0]
			}
			if f.workspace != "" {
				if err := checkGuestPath(f.wsPath); err != nil {
					return err
				}
			}
			req, err := f.request(name, c)
			if err != nil {
				return err
			}
			cl, err := e.client(c.Context())
			if err != nil {
				return err
			}
			if f.workspace != "" {
				ws, err := e.buildWorkDisk(c.Context(), cl, f.workspace, f.untracked, f.wsPath)
				if err != nil {
					return err
				}
				req.Workspace = ws
			}
			p, done := e.progressPrinter(jsonOut)
			v, err := cl.CreateVM(c.Context(), req, p)
			done()
			if err != nil {
				return err
			}
			if jsonOut {
				return printJSON(e.stdout, v)
			}
			fmt.Fprintf(e.stdout, "%s\n", v.Name)
			return nil
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print the VM as JSON")
	cmd.Flags().StringVar(&f.workspace, "workspace", "", "ship this repository into the VM on a work disk (see 'banger workspace')")
	cmd.Flags().BoolVar(&f.untracked, "include-untracked", false, "with --workspace: also ship untracked files that are not ignored")
	cmd.Flags().StringVar(&f.wsPath, "path", workspace.DefaultPath, "with --workspace: where the repository goes in the guest")
	return cmd
}

func newVMListCmd(e *env) *cobra.Command {
	var jsonOut, quiet bool
	cmd := &cobra.Command{
		Use: "ls", Aliases: []string{"list"}, Short: "List VMs with their state", Args: args(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := e.client(c.Context())
			if err != nil {
				return err
			}
			vms, err := cl.ListVMs(c.Context())
			if err != nil {
				return err
			}
			switch {
			case jsonOut:
				return printJSON(e.stdout, vms)
			case quiet:
				for _, v := range vms {
					fmt.Fprintln(e.stdout, v.Name)
				}
				return nil
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATE\tIMAGE\tVCPU\tMEM\tDISK\tIP\tUPTIME\tPID")
			for _, v := range vms {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%dM\t%s\t%s\t%s\t%s\n", v.Name, v.State, v.Image, v.VCPUs, v.MemoryMiB,
					humanSize(v.DiskBytes), dash(v.IP), dash(v.Uptime), dashInt(v.PID))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print JSON")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print names only")
	return cmd
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func dashInt(n int) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprint(n)
}

func humanSize(b int64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1fG", float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.0fM", float64(b)/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.0fK", float64(b)/(1<<10))
	}
	return fmt.Sprintf("%dB", b)
}

func newVMShowCmd(e *env) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use: "show NAME", Short: "Show a VM: spec, state, image, disk usage, uptime, pid, console log", Args: args(cobra.ExactArgs(1)),
		ValidArgsFunction: e.completeVMs,
		RunE: func(c *cobra.Command, a []string) error {
			cl, err := e.client(c.Context())
			if err != nil {
				return err
			}
			v, err := cl.GetVM(c.Context(), a[0])
			if err != nil {
				return err
			}
			if jsonOut {
				return printJSON(e.stdout, v)
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			row := func(k, v string) {
				if v != "" {
					fmt.Fprintf(tw, "%s:\t%s\n", k, v)
				}
			}
			row("name", v.Name)
			row("id", v.ID)
			row("state", v.State)
			if v.State == "running" {
				h := v.Health
				if h == "" {
					h = "ok (agent answers)"
				}
				row("health", h)
			}
			row("image", v.Image)
			row("vcpus", fmt.Sprint(v.VCPUs))
			row("memory", fmt.Sprintf("%d MiB", v.MemoryMiB))
			row("disk", fmt.Sprintf("%s (%s used)", humanSize(v.DiskBytes), humanSize(v.DiskUsed)))
			row("backend", strings.TrimSpace(v.Backend+" "+v.Accel))
			row("network", v.Net)
			row("address", v.IP)
			row("mac", v.MAC)
			row("tap", v.Tap)
			row("forwards", strings.Join(v.Forwards, ", "))
			row("boot", v.Boot)
			row("pid", dashInt(v.PID))
			row("created", v.CreatedAt.Local().Format(time.RFC3339))
			if !v.StartedAt.IsZero() {
				row("started", v.StartedAt.Local().Format(time.RFC3339))
			}
			row("uptime", v.Uptime)
			row("root disk", v.RootDisk)
			row("console log", v.ConsoleLog)
			row("last error", v.LastError)
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print JSON")
	return cmd
}

func (e *env) completeVMs(c *cobra.Command, a []string, _ string) ([]string, cobra.ShellCompDirective) {
	if len(a) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	cl := client.New(e.layout.Socket())
	vms, err := cl.ListVMs(c.Context())
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var names []string
	for _, v := range vms {
		names = append(names, v.Name+"\t"+v.State)
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}

type execFlags struct {
	tty     bool
	noStdin bool
	dir     string
	env     []string
	json    bool
	events  *eventWriter // set when json
}

func (f *execFlags) add(cmd *cobra.Command) {
	cmd.Flags().BoolVarP(&f.tty, "tty", "t", false, "give the command a terminal (raw mode, window size, Ctrl-C as a key)")
	cmd.Flags().BoolVarP(&f.noStdin, "no-stdin", "n", false, "do not forward stdin (the command reads EOF)")
	cmd.Flags().StringVar(&f.dir, "cwd", "", "working directory in the guest (default /root)")
	cmd.Flags().StringArrayVar(&f.env, "env", nil, "KEY=VALUE added to the command's environment (repeatable)")
	cmd.Flags().BoolVar(&f.json, "json", false, "print NDJSON events on stdout (output chunks, exit, ...; see the README) instead of the output itself")
}

// runExec runs argv in a VM with this process's stdio, forwarding signals
// and window size, and returns the command's exit code.
func (e *env) runExec(ctx context.Context, cl *client.Client, name string, argv []string, f execFlags) (int, error) {
	if err := checkEnvFlags(f.env); err != nil {
		return 0, err
	}
	req := api.ExecRequest{Argv: argv, Env: f.env, Dir: f.dir}
	stdio := client.ExecIO{Stdout: e.stdout, Stderr: e.stderr}
	if f.events != nil {
		if f.tty {
			return 0, usageError{errors.New("--json and --tty do not go together")}
		}
		stdio = client.ExecIO{Stdout: f.events.stream("stdout"), Stderr: f.events.stream("stderr")}
	}
	if !f.noStdin {
		stdio.Stdin = e.stdin
	}
	inF, inIsFile := e.stdin.(*os.File)
	outF, _ := e.stdout.(*os.File)
	if f.tty {
		if !inIsFile || !isTerminal(inF) {
			return 0, errdefs.InvalidArgument("--tty needs stdin to be a terminal")
		}
		req.TTY = true
		req.Rows, req.Cols = termSize(inF)
		restore, err := makeRaw(inF)
		if err != nil {
			return 0, err
		}
		defer restore()
	}
	_ = outF
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGWINCH)
	defer signal.Stop(sigs)
	x, err := cl.StartExec(context.WithoutCancel(ctx), name, req, stdio)
	if err != nil {
		return 0, err
	}
	for {
		select {
		case s := <-sigs:
			if s == syscall.SIGWINCH {
				if f.tty {
					x.Resize(termSize(inF))
				}
				continue
			}
			x.Signal(int(s.(syscall.Signal)))
		case <-x.Done():
			st, err := x.Wait()
			if err != nil {
				return 0, err
			}
			if f.events != nil {
				f.events.exit(st.Code, st.Signal)
			}
			return st.Code, nil
		}
	}
}

func newVMExecCmd(e *env) *cobra.Command {
	var f execFlags
	cmd := &cobra.Command{
		Use:   "exec NAME -- CMD [ARG...]",
		Short: "Run a command in a running VM; its exit code becomes banger's",
		Long: `Run a command in a running VM through the guest agent. stdin, stdout and
stderr are streamed; Ctrl-C and other signals reach the command; the exit
code is the command's (128+N when a signal N ended it). banger's own
failures exit 125.`,
		Args:              args(cobra.MinimumNArgs(2)),
		ValidArgsFunction: e.completeVMs,
		RunE: func(c *cobra.Command, a []string) error {
			if f.json {
				f.events = &eventWriter{w: e.stdout}
			}
			fail := func(err error) error {
				if f.events != nil {
					f.events.fail(err)
				}
				return runFailure(err)
			}
			cl, err := e.client(c.Context())
			if err != nil {
				return fail(err)
			}
			code, err := e.runExec(c.Context(), cl, a[0], a[1:], f)
			if err != nil {
				return fail(err)
			}
			return exitError{code}
		},
	}
	f.add(cmd)
	return cmd
}

// runFailure marks banger's own failure in vm run/exec: exit 125.
func runFailure(err error) error {
	var ue usageError
	if errors.As(err, &ue) {
		return err
	}
	return &runError{err}
}

type runError struct{ error }

func (r *runError) Unwrap() error { return r.error }

func newVMRunCmd(e *env) *cobra.Command {
	var cf createFlags
	var f execFlags
	var rm, untracked, detach, allowHooks bool
	var name, exportFlag, path string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "run [flags] [REPO] -- CMD [ARG...]",
		Short: "Create a VM, ship REPO into it, run one command there, pass its exit code back",
		Long: `Create a fresh VM, run CMD in it and exit with CMD's exit code. With --rm
the VM is deleted afterwards, whatever happened (also on Ctrl-C, which is
first delivered to CMD). banger's own failures exit 125.

The run belongs to bangerd: create, command, export and delete are one
operation that goes on to its end if this client is interrupted or killed
(the command is then hung up, unless --detach). Its record and the edits
it exported stay readable: banger run ls, banger run show ID.

With REPO (e.g. "."), the repository's tracked files (with uncommitted
edits; untracked ones with --include-untracked) are shipped to --path on a
work disk and CMD runs there. Edits CMD makes come back:
  --export apply         applied to REPO's working tree
  --export branch:NAME   as a commit on a new branch
  --export patch:FILE    as a patch file
and with no --export, nothing is lost: before --rm removes the VM, bangerd
keeps the edits (banger run patch ID), and they are saved as a patch in
REPO's git dir, whose path and a diffstat are printed. --export apply
refuses edits to files that make the host run code (git hooks, .husky/,
.pre-commit-config.yaml, lefthook.yml, the repository's core.hooksPath,
included git config): it lists them and saves the edits as that patch
instead, unless --allow-hooks.

  banger vm run --rm -- uname -a
  banger vm run --rm . -- make test
  banger vm run --rm -- sh -c 'exit 42'; echo $?    # 42`,
		Args: args(cobra.MinimumNArgs(1)),
		RunE: func(c *cobra.Command, a []string) error {
			dash := c.ArgsLenAtDash()
			if dash < 0 {
				return usageError{errors.New("put the command after --, e.g. banger vm run --rm . -- make test")}
			}
			if dash > 1 {
				return usageError{fmt.Errorf("unexpected argument %q before --: only REPO goes there", a[1])}
			}
			// Checked before anything is shipped.
			if err := checkGuestPath(path); err != nil {
				return err
			}
			if err := checkEnvFlags(f.env); err != nil {
				return err
			}
			if f.dir != "" && !strings.HasPrefix(f.dir, "/") {
				return usageError{fmt.Errorf("--cwd %q: want an absolute path in the guest", f.dir)}
			}
			if dash == len(a) {
				return usageError{errors.New("no command after --")}
			}
			repo, argv := "", a[dash:]
			if dash == 1 {
				repo = a[0]
			}
			mode, err := parseExportMode(exportFlag)
			if err != nil {
				return err
			}
			if f.json {
				f.events = &eventWriter{w: e.stdout}
			}
			runFailure := func(err error) error {
				if f.events != nil {
					f.events.fail(err)
				}
				return runFailure(err)
			}
			if repo == "" && (exportFlag != "" || untracked) {
				return usageError{errors.New("--export and --include-untracked need a REPO before --")}
			}
			if timeout < 0 {
				return usageError{fmt.Errorf("--timeout %s: must not be negative", timeout)}
			}
			if allowHooks && mode != "apply" {
				return usageError{errors.New("--allow-hooks goes with --export apply")}
			}
			vmReq, err := cf.request(name, c)
			if err != nil {
				return runFailure(err)
			}
			ctx := c.Context()
			cl, err := e.client(ctx)
			if err != nil {
				return runFailure(err)
			}
			if repo != "" {
				ws, err := e.buildWorkDisk(ctx, cl, repo, untracked, path)
				if err != nil {
					return runFailure(err)
				}
				vmReq.Workspace = ws
				if f.dir == "" {
					f.dir = ws.Path
					if f.dir == "" {
						f.dir = workspace.DefaultPath
					}
				}
			}
			req := api.RunRequest{VM: vmReq, Keep: !rm, Export: exportFlag != "", Detach: detach,
				TimeoutSeconds: int((timeout + time.Second - 1) / time.Second)}
			r, err := e.watchRun(ctx, cl, req, argv, f)
			if err != nil {
				return runFailure(err)
			}
			// What follows must happen even after Ctrl-C.
			post, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
			defer cancel()
			var runErr error
			if r.Error != nil {
				runErr = api.FromWire(r.Error)
			}
			if r.Patch != nil && vmReq.Workspace != nil {
				if err := e.useRunPatch(post, cl, r, vmReq.Workspace, mode, allowHooks, f.events); err != nil {
					fmt.Fprintf(e.stderr, "banger: the edits of vm %s are kept by bangerd (banger run patch %s): %v\n", r.VM, r.ID, err)
					if runErr == nil {
						runErr = err
					}
				}
			}
			switch {
			case r.State == api.RunCancelled:
				if runErr == nil {
					runErr = errdefs.Unavailable("run cancelled before the command started")
				}
			case !rm && r.VM != "":
				fmt.Fprintf(e.stderr, "banger: vm %s is still running (banger vm delete %s)\n", r.VM, r.VM)
			case rm && !r.VMDeleted && r.VM != "":
				fmt.Fprintf(e.stderr, "banger: vm %s is kept (%s); export its edits with 'banger workspace export %s', then 'banger vm delete %s'\n", r.VM, r.State, r.VM, r.VM)
			}
			if r.TimedOut {
				fmt.Fprintf(e.stderr, "banger: the command ran longer than --timeout %s and was ended\n", timeout)
			}
			if runErr != nil {
				return runFailure(runErr)
			}
			if f.events != nil {
				if got, err := cl.GetRun(post, r.ID); err == nil {
					r = got // with the outcome
				}
				f.events.emit(Event{Type: "result", Run: &r})
			}
			return exitError{r.ExitCode}
		},
	}
	cf.add(cmd)
	f.add(cmd)
	cmd.Flags().BoolVar(&rm, "rm", false, "delete the VM when the command ends (its workspace edits kept first)")
	cmd.Flags().StringVar(&name, "name", "", "name of the VM (default: vm-<random>)")
	cmd.Flags().BoolVar(&untracked, "include-untracked", false, "also ship untracked files that are not ignored")
	cmd.Flags().StringVar(&exportFlag, "export", "", "bring workspace edits back: apply, branch:NAME or patch:FILE")
	cmd.Flags().BoolVar(&allowHooks, "allow-hooks", false, "with --export apply: also apply edits to files that make the host run code (git hooks and their configuration)")
	cmd.Flags().StringVar(&path, "path", workspace.DefaultPath, "where REPO goes in the guest")
	cmd.Flags().BoolVar(&detach, "detach", false, "keep the command running if this client goes away (the run's result stays in banger run show)")
	durationRangeVar(cmd.Flags(), &timeout, "timeout", 0, 0, 7*24*time.Hour /* the daemon's limit of a run */, "end the command after this long (SIGTERM, SIGKILL 10 s later); 0: no limit")
	return cmd
}

// watchRun starts a run and streams it with this process's stdio,
// forwarding signals and window size; it returns the run's record.
func (e *env) watchRun(ctx context.Context, cl *client.Client, req api.RunRequest, argv []string, f execFlags) (api.Run, error) {
	for _, kv := range f.env {
		if !strings.Contains(kv, "=") || strings.HasPrefix(kv, "=") {
			return api.Run{}, usageError{fmt.Errorf("--env %q: want KEY=VALUE", kv)}
		}
	}
	req.Exec = api.ExecRequest{Argv: argv, Env: f.env, Dir: f.dir}
	p, done := e.progressPrinter(false)
	stdio := client.RunIO{Stdout: e.stdout, Stderr: e.stderr, Progress: p}
	if ev := f.events; ev != nil {
		if f.tty {
			return api.Run{}, usageError{errors.New("--json and --tty do not go together")}
		}
		p, done = func(pr api.Progress) { ev.emit(Event{Type: "progress", Progress: &pr}) }, func() {}
		stdio = client.RunIO{Stdout: ev.stream("stdout"), Stderr: ev.stream("stderr"), Progress: p,
			Exit: func(x api.ExecExit) { ev.exit(x.Code, x.Signal) },
			Step: func(s api.RunEvent) { ev.emit(Event{Type: s.Type, VM: s.VM, Patch: s.Patch}) }}
	}
	if !f.noStdin {
		stdio.Stdin = e.stdin
	}
	inF, inIsFile := e.stdin.(*os.File)
	if f.tty {
		if !inIsFile || !isTerminal(inF) {
			done()
			return api.Run{}, errdefs.InvalidArgument("--tty needs stdin to be a terminal")
		}
		req.Exec.TTY = true
		req.Exec.Rows, req.Exec.Cols = termSize(inF)
	}
	// The command's output clears the progress line first.
	var once sync.Once
	for _, w := range []*io.Writer{&stdio.Stdout, &stdio.Stderr} {
		out := *w
		*w = writerFunc(func(b []byte) (int, error) {
			once.Do(done)
			return out.Write(b)
		})
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGWINCH)
	defer signal.Stop(sigs)
	s, err := cl.StartRun(context.WithoutCancel(ctx), req, stdio)
	if err != nil {
		done()
		return api.Run{}, err
	}
	defer done()
	var restore func()
	if f.tty {
		if restore, err = makeRaw(inF); err != nil {
			s.Close()
			return api.Run{}, err
		}
		defer restore()
	}
	for {
		select {
		case sg := <-sigs:
			if sg == syscall.SIGWINCH {
				if f.tty {
					s.Resize(termSize(inF))
				}
				continue
			}
			s.Signal(int(sg.(syscall.Signal)))
		case <-s.Done():
			return s.Wait()
		}
	}
}

// useRunPatch fetches the patch a run kept and uses it as mode says, then
// records the outcome with the run.
func (e *env) useRunPatch(ctx context.Context, cl *client.Client, r api.Run, ws *api.WorkspaceSpec, mode exportMode, allowHooks bool, events *eventWriter) error {
	rc, err := cl.RunPatch(ctx, r.ID)
	if err != nil {
		return err
	}
	defer rc.Close()
	_, _, outcome, err := e.usePatch(ctx, rc, r.VM, ws.Repo, ws.Base, mode, allowHooks)
	if err != nil {
		if outcome == "" {
			outcome = "not used: " + err.Error()
		}
		cl.SetRunOutcome(ctx, r.ID, outcome)
		return err
	}
	if events != nil && outcome != "" {
		events.emit(Event{Type: "export", Outcome: outcome})
	}
	if outcome != "" {
		return cl.SetRunOutcome(ctx, r.ID, outcome)
	}
	return nil
}

func newVMDeleteCmd(e *env) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use: "delete NAME...", Aliases: []string{"rm"}, Short: "Delete VMs and everything they own",
		Long: `Delete VMs: their disks, runtime files and VMM processes (a running VM is
stopped). A VM whose workspace holds edits that were never exported is not
deleted (the changed files are named) unless --force is given.`,
		Args:              args(cobra.MinimumNArgs(1)),
		ValidArgsFunction: e.completeVMs,
		RunE: func(c *cobra.Command, a []string) error {
			cl, err := e.client(c.Context())
			if err != nil {
				return err
			}
			var first error
			for _, n := range a {
				if err := cl.DeleteVM(c.Context(), n, force); err != nil {
					fmt.Fprintf(e.stderr, "banger: %v\n", err)
					if first == nil {
						first = err
					}
					continue
				}
				fmt.Fprintln(e.stdout, n)
			}
			if first != nil {
				return exitError{exitCode(first)}
			}
			return nil
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "delete even with unexported workspace edits, or in any state")
	return cmd
}

func newVMStopCmd(e *env) *cobra.Command {
	var force bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use: "stop NAME", Short: "Power a VM off (clean: sync, unmount, power off; --force: at once)",
		Args: args(cobra.ExactArgs(1)), ValidArgsFunction: e.completeVMs,
		RunE: func(c *cobra.Command, a []string) error {
			cl, err := e.client(c.Context())
			if err != nil {
				return err
			}
			v, err := cl.StopVM(c.Context(), a[0], api.StopVMRequest{Force: force, Timeout: timeout.String()})
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "%s %s\n", v.Name, v.State)
			return nil
		},
	}
	cmd.Flags().BoolVarP(&force, "force", "f", false, "stop at once without a clean power-off")
	durationRangeVar(cmd.Flags(), &timeout, "timeout", 30*time.Second, time.Millisecond, 0, "how long a clean power-off may take before it is forced")
	return cmd
}

func newVMStartCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use: "start NAME", Short: "Boot a stopped VM on its existing disk", Args: args(cobra.ExactArgs(1)), ValidArgsFunction: e.completeVMs,
		RunE: func(c *cobra.Command, a []string) error {
			cl, err := e.client(c.Context())
			if err != nil {
				return err
			}
			p, done := e.progressPrinter(false)
			v, err := cl.StartVM(c.Context(), a[0], p)
			done()
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "%s %s\n", v.Name, v.State)
			return nil
		},
	}
}

func newVMRestartCmd(e *env) *cobra.Command {
	var force bool
	return &cobra.Command{
		Use: "restart NAME", Short: "Stop and start a VM", Args: args(cobra.ExactArgs(1)), ValidArgsFunction: e.completeVMs,
		RunE: func(c *cobra.Command, a []string) error {
			cl, err := e.client(c.Context())
			if err != nil {
				return err
			}
			if _, err := cl.StopVM(c.Context(), a[0], api.StopVMRequest{Force: force}); err != nil {
				return err
			}
			p, done := e.progressPrinter(false)
			v, err := cl.StartVM(c.Context(), a[0], p)
			done()
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "%s %s\n", v.Name, v.State)
			return nil
		},
	}
}

func newVMSetCmd(e *env) *cobra.Command {
	var vcpus, mem int
	var netw string
	cmd := &cobra.Command{
		Use: "set NAME [--vcpu N] [--mem MiB] [--net nat|none|shared]", Short: "Change a VM's vCPUs or memory (when stopped, for the next start) or its network (at once)",
		Args: args(cobra.ExactArgs(1)), ValidArgsFunction: e.completeVMs,
		RunE: func(c *cobra.Command, a []string) error {
			if !c.Flags().Changed("vcpu") && !c.Flags().Changed("mem") && !c.Flags().Changed("net") {
				return usageError{errors.New("nothing to set: give --vcpu, --mem and/or --net")}
			}
			if c.Flags().Changed("net") && netw == "" {
				return errdefs.InvalidArgument("--net: give nat, none or shared")
			}
			if c.Flags().Changed("vcpu") && vcpus < 1 {
				return errdefs.InvalidArgument(fmt.Sprintf("--vcpu %d: must be between 1 and 64", vcpus))
			}
			if c.Flags().Changed("mem") && mem < 1 {
				return errdefs.InvalidArgument(fmt.Sprintf("--mem %d: must be between 128 and 65536 MiB", mem))
			}
			cl, err := e.client(c.Context())
			if err != nil {
				return err
			}
			v, err := cl.SetVM(c.Context(), a[0], api.SetVMRequest{VCPUs: vcpus, MemoryMiB: mem, Net: netw})
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "%s: %d vCPU, %d MiB, net %s\n", v.Name, v.VCPUs, v.MemoryMiB, v.Net)
			return nil
		},
	}
	cmd.Flags().IntVar(&vcpus, "vcpu", 0, "virtual CPUs")
	cmd.Flags().IntVar(&mem, "mem", 0, "memory in MiB")
	cmd.Flags().StringVar(&netw, "net", "", "network egress: nat, none or shared; changes at once, also on a running VM")
	return cmd
}

func newVMLogsCmd(e *env) *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use: "logs NAME", Short: "Print a VM's console log", Args: args(cobra.ExactArgs(1)), ValidArgsFunction: e.completeVMs,
		Long: `Print a VM's serial console log (every boot's). The log is bounded: past
4 MiB bangerd drops its oldest output, keeping about the newest 2 MiB.`,
		RunE: func(c *cobra.Command, a []string) error {
			cl, err := e.client(c.Context())
			if err != nil {
				return err
			}
			return cl.Console(c.Context(), a[0], follow, e.stdout)
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output")
	return cmd
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
