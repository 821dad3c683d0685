package cli

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/workspace"
)

func newRunCmd(e *env) *cobra.Command {
	cmd := group(&cobra.Command{Use: "run", Short: "Inspect the runs of 'banger vm run' (kept by bangerd)"})
	cmd.AddCommand(newRunListCmd(e), newRunShowCmd(e), newRunPatchCmd(e), newRunRmCmd(e), newRunReplayCmd(e))
	return cmd
}

func (e *env) completeRuns(c *cobra.Command, a []string, _ string) ([]string, cobra.ShellCompDirective) {
	if len(a) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	cl, err := e.client(c.Context())
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	runs, err := cl.ListRuns(c.Context(), 50)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	var ids []string
	for _, r := range runs {
		ids = append(ids, r.ID+"\t"+r.State+" "+strings.Join(r.Argv, " "))
	}
	return ids, cobra.ShellCompDirectiveNoFileComp
}

func newRunListCmd(e *env) *cobra.Command {
	var jsonOut bool
	var limit int
	cmd := &cobra.Command{
		Use: "ls", Aliases: []string{"list"}, Short: "List runs, newest first", Args: args(cobra.NoArgs),
		RunE: func(c *cobra.Command, _ []string) error {
			if limit < 0 {
				return usageError{fmt.Errorf("--limit %d: must not be negative", limit)}
			}
			cl, err := e.client(c.Context())
			if err != nil {
				return err
			}
			runs, err := cl.ListRuns(c.Context(), limit)
			if err != nil {
				return err
			}
			if jsonOut {
				return printJSON(e.stdout, runs)
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tSTATE\tEXIT\tVM\tSTARTED\tDURATION\tCHANGES\tCOMMAND")
			for _, r := range runs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ID, r.State, exitText(r), dash(r.VM),
					r.CreatedAt.Local().Format("01-02 15:04:05"), runDuration(r), changes(r), truncate(strings.Join(r.Argv, " "), 50))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print JSON")
	cmd.Flags().IntVar(&limit, "limit", 20, "show at most this many (0: all)")
	return cmd
}

func exitText(r api.Run) string {
	if r.ExitCode < 0 {
		return "-"
	}
	return fmt.Sprint(r.ExitCode)
}

func runDuration(r api.Run) string {
	if ms, ok := r.Phases["total"]; ok {
		return (time.Duration(ms) * time.Millisecond).Round(10 * time.Millisecond).String()
	}
	return "-"
}

func changes(r api.Run) string {
	switch {
	case r.Patch == nil:
		return "-"
	case r.Patch.Refused != "":
		return "refused"
	}
	return fmt.Sprintf("%d files", r.Patch.Files)
}

func newRunShowCmd(e *env) *cobra.Command {
	var jsonOut bool
	cmd := &cobra.Command{
		Use: "show ID", Short: "Show a run: command, exit code, phases, output tails, the edits kept and what was done with them",
		Args: args(cobra.ExactArgs(1)), ValidArgsFunction: e.completeRuns,
		RunE: func(c *cobra.Command, a []string) error {
			cl, err := e.client(c.Context())
			if err != nil {
				return err
			}
			r, err := cl.GetRun(c.Context(), a[0])
			if err != nil {
				return err
			}
			if jsonOut {
				return printJSON(e.stdout, r)
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			row := func(k, v string) {
				if v != "" {
					fmt.Fprintf(tw, "%s:\t%s\n", k, v)
				}
			}
			row("id", r.ID)
			row("state", r.State)
			row("command", shellJoin(r.Argv))
			row("exit code", exitText(r))
			if r.Signal > 0 {
				row("signal", fmt.Sprint(r.Signal))
			}
			if r.TimedOut {
				row("timed out", "yes")
			}
			vm := r.VM
			if r.VMDeleted {
				vm += " (deleted)"
			} else if r.Keep {
				vm += " (kept)"
			}
			row("vm", vm)
			row("repo", r.Repo)
			row("started", r.CreatedAt.Local().Format(time.RFC3339))
			if !r.EndedAt.IsZero() {
				row("ended", r.EndedAt.Local().Format(time.RFC3339))
			}
			var ph []string
			for _, k := range []string{"create", "exec", "export", "delete", "total"} {
				if ms, ok := r.Phases[k]; ok {
					ph = append(ph, fmt.Sprintf("%s %s", k, (time.Duration(ms)*time.Millisecond).Round(time.Millisecond)))
				}
			}
			row("phases", strings.Join(ph, ", "))
			if r.Error != nil {
				row("error", r.Error.Message)
			}
			if p := r.Patch; p != nil {
				if p.Refused != "" {
					row("edits", fmt.Sprintf("kept as the guest wrote them, refused: %s (banger run patch %s)", p.Refused, r.ID))
				} else {
					row("edits", fmt.Sprintf("%d changed files, %d bytes, sha256 %.12s (banger run patch %s)", p.Files, p.Bytes, p.SHA256, r.ID))
				}
			} else if r.Repo != "" {
				row("edits", "none")
			}
			row("outcome", r.Outcome)
			tw.Flush()
			if r.Patch != nil && r.Patch.Diffstat != "" {
				fmt.Fprintf(e.stdout, "\n%s", indent(r.Patch.Diffstat))
			}
			for _, t := range []struct{ name, text string }{{"stdout", r.Stdout}, {"stderr", r.Stderr}} {
				if t.text != "" {
					fmt.Fprintf(e.stdout, "\n--- %s (last %d bytes) ---\n%s", t.name, len(t.text), t.text)
					if !strings.HasSuffix(t.text, "\n") {
						fmt.Fprintln(e.stdout)
					}
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print JSON")
	return cmd
}

func newRunPatchCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use: "patch ID", Short: "Print the workspace edits a run kept, as a patch git apply takes",
		Long: `Print the patch of the workspace edits a run exported, as bangerd keeps it
(for a patch the guest wrote that banger refused, exactly as it came: read
it before you apply anything).`,
		Args: args(cobra.ExactArgs(1)), ValidArgsFunction: e.completeRuns,
		RunE: func(c *cobra.Command, a []string) error {
			cl, err := e.client(c.Context())
			if err != nil {
				return err
			}
			rc, err := cl.RunPatch(c.Context(), a[0])
			if err != nil {
				return err
			}
			defer rc.Close()
			_, err = io.Copy(e.stdout, rc)
			return err
		},
	}
}

func newRunRmCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use: "rm ID...", Short: "Forget ended runs and the edits they kept", Args: args(cobra.MinimumNArgs(1)),
		ValidArgsFunction: e.completeRuns,
		RunE: func(c *cobra.Command, a []string) error {
			cl, err := e.client(c.Context())
			if err != nil {
				return err
			}
			var first error
			for _, id := range a {
				if err := cl.RemoveRun(c.Context(), id); err != nil {
					fmt.Fprintf(e.stderr, "banger: %v\n", err)
					if first == nil {
						first = err
					}
					continue
				}
				fmt.Fprintln(e.stdout, id)
			}
			if first != nil {
				return exitError{exitCode(first)}
			}
			return nil
		},
	}
}

func shellJoin(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = shellQuote(a)
	}
	return strings.Join(q, " ")
}

func newRunReplayCmd(e *env) *cobra.Command {
	var f execFlags
	var jsonOut bool
	cmd := &cobra.Command{
		Use:   "replay ID",
		Short: "Run a run's command again on the same image and workspace base; say whether exit code and edits match",
		Long: `Run the command of an earlier run again, from its receipt: the same image
(refused if the image of that name has another digest now), the same VM
shape and network, the same argv and working directory, and the workspace
as it was shipped (the run's base commit, checked out into a temporary
worktree of the repository). Environment values are never recorded: give
them again with --env. Then compare: the exit code, and the sha256 of the
exported patch. Exits 0 when both match, 1 when they do not.`,
		Args: args(cobra.ExactArgs(1)), ValidArgsFunction: e.completeRuns,
		RunE: func(c *cobra.Command, a []string) error {
			ctx := c.Context()
			if err := checkEnvFlags(f.env); err != nil {
				return err
			}
			cl, err := e.client(ctx)
			if err != nil {
				return err
			}
			orig, err := cl.GetRun(ctx, a[0])
			if err != nil {
				return err
			}
			rc := orig.Receipt
			if rc == nil {
				return errdefs.NotFound(fmt.Sprintf("run %s has no receipt (it never made its VM, or an older banger ran it)", orig.ID))
			}
			im, err := cl.GetImage(ctx, rc.Image)
			if err != nil {
				return fmt.Errorf("run %s ran on image %s: %w", orig.ID, rc.Image, err)
			}
			if im.Digest != rc.ImageDigest {
				return errdefs.Conflict(fmt.Sprintf("image %s is not the one run %s used (digest %.12s then, %.12s now): a replay on another image proves nothing", rc.Image, orig.ID, rc.ImageDigest, im.Digest))
			}
			missing := map[string]bool{}
			for _, k := range rc.EnvKeys {
				missing[k] = true
			}
			for _, kv := range f.env {
				k, _, _ := strings.Cut(kv, "=")
				delete(missing, k)
			}
			if len(missing) > 0 {
				var ks []string
				for k := range missing {
					ks = append(ks, k)
				}
				sort.Strings(ks)
				fmt.Fprintf(e.stderr, "banger: run %s had environment entries %s; their values are never recorded (give them with --env)\n", orig.ID, strings.Join(ks, ", "))
			}
			req := api.RunRequest{VM: api.CreateVMRequest{Image: rc.Image, VCPUs: rc.VCPUs, MemoryMiB: rc.MemoryMiB,
				Disk: fmt.Sprint(rc.DiskBytes), Net: rc.Net}, Export: true}
			if rc.Net == "off" {
				req.VM.Net = ""
			}
			if rc.Base != nil && orig.Repo != "" {
				tree, cleanup, err := workspace.CheckoutCommit(ctx, orig.Repo, rc.Base.Commit, e.layout.TmpDir())
				if err != nil {
					return fmt.Errorf("replay run %s: the shipped tree: %w", orig.ID, err)
				}
				defer cleanup()
				if req.VM.Workspace, err = e.buildWorkDisk(ctx, cl, tree, false, workspace.DefaultPath); err != nil {
					return err
				}
			}
			f.dir = rc.Dir
			re := *e
			if jsonOut {
				// stdout is the comparison's: the command's output goes to stderr.
				re.stdout, f.noStdin = e.stderr, true
			}
			r, err := re.watchRun(ctx, cl, req, rc.Argv, f)
			if err != nil {
				return runFailure(err)
			}
			res := replayResult{Original: orig.ID, Replay: r.ID, ExitCode: [2]int{rc.ExitCode, r.ExitCode}}
			if r.Receipt != nil {
				res.PatchSHA256 = [2]string{rc.PatchSHA256, r.Receipt.PatchSHA256}
			}
			res.Match = res.ExitCode[0] == res.ExitCode[1] && res.PatchSHA256[0] == res.PatchSHA256[1] && r.Error == nil
			if jsonOut {
				printJSON(e.stdout, res)
			} else {
				verdict := "match"
				if !res.Match {
					verdict = "differ"
				}
				fmt.Fprintf(e.stdout, "replay of run %s (run %s): exit code %d / %d, edits %s / %s: %s\n", orig.ID, r.ID,
					res.ExitCode[0], res.ExitCode[1], short(res.PatchSHA256[0]), short(res.PatchSHA256[1]), verdict)
			}
			if !res.Match {
				return exitError{ExitError}
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVar(&f.env, "env", nil, "KEY=VALUE added to the command's environment (repeatable)")
	cmd.Flags().BoolVar(&jsonOut, "json", false, "print the comparison as JSON (the command's output goes to stderr)")
	return cmd
}

// replayResult compares a run and its replay: [original, replay].
type replayResult struct {
	Original    string    `json:"original"`
	Replay      string    `json:"replay"`
	ExitCode    [2]int    `json:"exit_code"`
	PatchSHA256 [2]string `json:"patch_sha256"`
	Match       bool      `json:"match"`
}

func short(sha string) string {
	if sha == "" {
		return "none"
	}
	return sha[:min(12, len(sha))]
}
