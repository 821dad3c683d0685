package cli

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"banger/internal/api"
)

func newRunCmd(e *env) *cobra.Command {
	cmd := group(&cobra.Command{Use: "run", Short: "Inspect the runs of 'banger vm run' (kept by bangerd)"})
	cmd.AddCommand(newRunListCmd(e), newRunShowCmd(e), newRunPatchCmd(e), newRunRmCmd(e))
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
