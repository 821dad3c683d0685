package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/client"
	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/workspace"
)

// The CLI, not the daemon, reads the user's repository: git runs as the
// repository's owner, and objects it writes stay theirs.

// buildWorkDisk ships dir's repository on a work disk for a new VM,
// uploaded to the daemon as an open file descriptor (workspace.Ship).
func (e *env) buildWorkDisk(ctx context.Context, cl *client.Client, dir string, untracked bool, path string) (*api.WorkspaceSpec, error) {
	set, err := workspace.List(ctx, dir, workspace.ListOptions{IncludeUntracked: untracked})
	if err != nil {
		return nil, err
	}
	return e.shipSet(ctx, cl, set, path)
}

// shipSet builds the work disk of a listed file set and uploads it.
func (e *env) shipSet(ctx context.Context, cl *client.Client, set *workspace.FileSet, path string) (*api.WorkspaceSpec, error) {
	ws, err := workspace.ShipSet(ctx, set, workspace.ShipOptions{Path: path, TmpDir: e.layout.TmpDir(), CacheDir: e.layout.WorkDiskCacheDir()},
		func(f *os.File) (string, error) {
			up, err := cl.Upload(ctx, f)
			return up.Token, err
		})
	if len(set.Submodules) > 0 {
		fmt.Fprintf(e.stderr, "banger: submodules %s are shipped as plain files; edits in them are not exported\n", strings.Join(set.Submodules, ", "))
	}
	return ws, err
}

// exportMode is one of: "" (save a rescue patch when there are edits),
// "-" or a file (write the patch), "apply", "branch:NAME".
type exportMode string

func parseExportMode(s string) (exportMode, error) {
	switch {
	case s == "", s == "apply", s == "-":
		return exportMode(s), nil
	case strings.HasPrefix(s, "branch:") && len(s) > len("branch:"):
		return exportMode(s), nil
	case strings.HasPrefix(s, "patch:") && len(s) > len("patch:"):
		return exportMode(strings.TrimPrefix(s, "patch:")), nil
	}
	return "", usageError{fmt.Errorf("--export %q: want apply, branch:NAME or patch:FILE", s)}
}

// rescuedError is an export that did not do what was asked but saved the
// edits as a rescue patch (nothing is lost).
type rescuedError struct{ error }

func (r *rescuedError) Unwrap() error { return r.error }

// export fetches a VM's workspace patch, validates it and uses it as mode
// says; then tells the daemon it was saved. It returns the patch. Applying
// a patch that changes hook files needs allowHooks (see usePatch).
func (e *env) export(ctx context.Context, cl *client.Client, vm string, ws *api.WorkspaceInfo, mode exportMode, allowHooks bool) (*workspace.Patch, error) {
	rc, err := cl.ExportWorkspace(ctx, vm)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	p, sum, _, err := e.usePatch(ctx, rc, vm, ws.Repo, ws.Base, mode, allowHooks)
	var rescued *rescuedError
	if errors.As(err, &rescued) {
		// Refused, but saved: the VM holds nothing that would be lost.
		if merr := cl.MarkExported(ctx, vm, sum); merr != nil {
			return p, merr
		}
		return p, err
	}
	if err != nil {
		return p, err
	}
	if merr := cl.MarkExported(ctx, vm, sum); merr != nil {
		return p, merr
	}
	return p, nil
}

// usePatch reads a workspace patch (untrusted guest output), validates it
// and uses it as mode says: a rescue file in repo's git dir (""), applied
// to repo ("apply"), a branch ("branch:NAME"), stdout ("-") or a file. It
// returns the patch, its sha256 and what was done, for people. Output that
// ParsePatch refuses is still kept, raw, as a rescue file when mode is "".
// A patch that changes hook files (workspace.HookFiles) is applied only
// with allowHooks; without it the files are listed, the edits saved as a
// rescue file and the error is a *rescuedError.
func (e *env) usePatch(ctx context.Context, r io.Reader, label, repo string, base api.Base, mode exportMode, allowHooks bool) (*workspace.Patch, string, string, error) {
	// Spool the guest's output: if it is refused, the rescue path still
	// keeps it (nothing is lost on --rm).
	spool, err := os.CreateTemp("", "banger-export-*.patch")
	if err != nil {
		return nil, "", "", err
	}
	defer os.Remove(spool.Name())
	defer spool.Close()
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(spool, h), io.LimitReader(r, workspace.DefaultPatchLimit+1)); err != nil {
		return nil, "", "", fmt.Errorf("export from vm %s: %w", label, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	spool.Seek(0, io.SeekStart)
	p, err := workspace.ParsePatch(spool, 0)
	if err != nil {
		if mode == "" {
			spool.Seek(0, io.SeekStart)
			if path, serr := workspace.SaveRescueStream(ctx, repo, label, spool, 0); serr == nil {
				fmt.Fprintf(e.stderr, "banger: the guest's patch was refused (%v); its raw output is kept in %s\n", err, path)
				return &workspace.Patch{}, sum, "refused patch kept raw in " + path, nil
			}
		}
		return nil, sum, "", fmt.Errorf("export from vm %s: %w", label, err)
	}
	outcome := ""
	switch {
	case mode == "":
		if p.Empty() {
			return p, sum, "", nil
		}
		path, stat, err := workspace.SaveRescue(ctx, repo, label, p)
		if err != nil {
			return p, sum, "", err
		}
		fmt.Fprintf(e.stderr, "banger: vm %s changed the workspace; the edits are saved in\n  %s\n%s  (apply them with: git apply %s)\n", label, path, indent(stat), shellQuote(path))
		outcome = "rescue saved in " + path
	case mode == "apply":
		hooks, err := workspace.HookFiles(ctx, repo, p)
		if err != nil {
			return p, sum, "", err
		}
		if len(hooks) > 0 && !allowHooks {
			refused := &workspace.HookError{Files: hooks}
			path, _, serr := workspace.SaveRescue(ctx, repo, label, p)
			if serr != nil {
				e.warnHooks(hooks, false, "")
				return p, sum, "", fmt.Errorf("%w (and saving the edits failed: %v)", refused, serr)
			}
			e.warnHooks(hooks, false, path)
			return p, sum, "hook files refused (--allow-hooks); rescue saved in " + path, &rescuedError{refused}
		}
		if len(hooks) > 0 {
			e.warnHooks(hooks, true, "")
		}
		if err := workspace.ApplyWith(ctx, repo, p, workspace.ApplyOptions{AllowHooks: allowHooks}); err != nil {
			return p, sum, "", err
		}
		if !p.Empty() {
			fmt.Fprintf(e.stderr, "banger: applied %d changed files to %s\n", len(p.Changes), repo)
		}
		outcome = fmt.Sprintf("applied %d changed files to %s", len(p.Changes), repo)
	case strings.HasPrefix(string(mode), "branch:"):
		name := strings.TrimPrefix(string(mode), "branch:")
		commit, err := workspace.Branch(ctx, repo, p, name, workspace.Base{Head: base.Head, Tree: base.Tree, Commit: base.Commit})
		if err != nil {
			return p, sum, "", err
		}
		fmt.Fprintf(e.stderr, "banger: branch %s at %s (%d changed files)\n", name, commit, len(p.Changes))
		outcome = fmt.Sprintf("branch %s at %s", name, commit)
	case mode == "-":
		if err := workspace.WritePatch(p, e.stdout); err != nil {
			return p, sum, "", err
		}
		outcome = "written to stdout"
	default:
		f, err := os.OpenFile(string(mode), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return p, sum, "", err
		}
		if err := workspace.WritePatch(p, f); err != nil {
			f.Close()
			return p, sum, "", err
		}
		if err := f.Close(); err != nil {
			return p, sum, "", err
		}
		outcome = "written to " + string(mode)
	}
	return p, sum, outcome, nil
}

// warnHooks lists, prominently, the files of a patch that make the host
// run code: being applied (allowed), or refused with the edits saved in
// rescue.
func (e *env) warnHooks(hooks []string, allowed bool, rescue string) {
	w := e.stderr
	if allowed {
		fmt.Fprintf(w, "banger: WARNING: applying (--allow-hooks) edits to files that make this host run code\n")
	} else {
		fmt.Fprintf(w, "banger: WARNING: the guest's edits change files that make this host run code\n")
	}
	fmt.Fprintf(w, "banger: (git hooks or their configuration: they run at your next commit, checkout or push):\n")
	for _, h := range hooks {
		fmt.Fprintf(w, "    %s\n", workspace.QuoteName(h))
	}
	if allowed {
		return
	}
	if rescue != "" {
		fmt.Fprintf(w, "banger: nothing was applied; the edits are saved in\n  %s\n  review them, then apply them with: git apply %s (or export again with --allow-hooks)\n", rescue, shellQuote(rescue))
	} else {
		fmt.Fprintf(w, "banger: nothing was applied\n")
	}
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("  " + l + "\n")
	}
	return b.String()
}

func newWorkspaceCmd(e *env) *cobra.Command {
	cmd := group(&cobra.Command{Use: "workspace", Short: "Ship a git repository into a VM and bring its edits back"})
	cmd.AddCommand(newWorkspacePrepareCmd(e), newWorkspaceExportCmd(e))
	return cmd
}

func newWorkspacePrepareCmd(e *env) *cobra.Command {
	var path string
	var untracked, dry, unpack bool
	cmd := &cobra.Command{
		Use:   "prepare VM [REPO]",
		Short: "Ship a repository's tracked files (with uncommitted edits) into a running VM",
		Long: `Ship the files 'git ls-files' lists, as they are in the working tree, plus a
.git prepared on the host (HEAD, index, enough history for a diff; never
the host's config, hooks or credentials), into a running VM at --path.
Untracked files only with --include-untracked (never ignored ones).
--dry-run lists what would be shipped and needs no VM or daemon.
REPO defaults to the current directory's repository.

The files go on a work disk built on the host and attached to the VM's
empty work-disk slot, mounted at --path: the guest creates no file, so
this takes seconds even for a large tree, and the workspace is the VM's
as if it had been created with it (exported by host git, mounted again
on every start). One VM holds one such workspace. A VM without a free
slot (its workspace is there; made by an older banger), a tree too large
for the slot, or --unpack: the files are unpacked by tar into the root
filesystem instead (slow under emulation for many files).`,
		Args:              args(cobra.RangeArgs(1, 2)),
		ValidArgsFunction: e.completeVMs,
		RunE: func(c *cobra.Command, a []string) error {
			dir := "."
			if len(a) == 2 {
				dir = a[1]
			}
			if err := checkGuestPath(path); err != nil {
				return err
			}
			ctx := c.Context()
			set, err := workspace.List(ctx, dir, workspace.ListOptions{IncludeUntracked: untracked})
			if err != nil {
				return err
			}
			if dry {
				return workspace.WriteDryRun(e.stdout, set)
			}
			cl, err := e.client(ctx)
			if err != nil {
				return err
			}
			if !unpack && workspace.FitsSlot(set) {
				if v, err := cl.GetVM(ctx, a[0]); err == nil && v.WorkSlot && v.State == "running" {
					ws, err := e.shipSet(ctx, cl, set, path)
					if err != nil {
						return err
					}
					if v, err = cl.PrepareWorkspaceDisk(ctx, a[0], ws); err != nil {
						return err
					}
					fmt.Fprintf(e.stdout, "%s: %d files at %s (work disk)\n", v.Name, len(set.Files), v.Workspace.Path)
					return nil
				}
			}
			v, err := cl.PrepareWorkspace(ctx, a[0], path, set.Root, func(w io.Writer) (api.Base, error) {
				info, err := workspace.TarStream(ctx, set.Root, set, w)
				if err != nil {
					return api.Base{}, err
				}
				return api.Base{Head: info.Base.Head, Tree: info.Base.Tree, Commit: info.Base.Commit}, nil
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "%s: %d files at %s\n", v.Name, len(set.Files), v.Workspace.Path)
			return nil
		},
	}
	cmd.Flags().StringVar(&path, "path", workspace.DefaultPath, "where the repository goes in the guest")
	cmd.Flags().BoolVar(&untracked, "include-untracked", false, "also ship untracked files that are not ignored")
	cmd.Flags().BoolVar(&dry, "dry-run", false, "list the files that would be shipped, with the total size; no VM needed")
	cmd.Flags().BoolVar(&unpack, "unpack", false, "unpack the files into the root filesystem (tar) instead of attaching a work disk")
	return cmd
}

func newWorkspaceExportCmd(e *env) *cobra.Command {
	var out, branch string
	var apply, allowHooks bool
	cmd := &cobra.Command{
		Use:   "export VM [--out FILE | --apply [--allow-hooks] | --branch NAME]",
		Short: "Bring every edit made in a VM's workspace back as a git patch",
		Long: `Bring back every change made in the VM's workspace since it was shipped
(modified, added, deleted, renamed, binary, mode changes, symlinks) as a
patch that 'git apply' takes. By default the patch goes to stdout.
  --out FILE     write it to FILE
  --apply        apply it to the repository's working tree; on a conflict
                 the tree is left untouched and the conflicting files named;
                 edits to files that make the host run code (git hooks,
                 .husky/, .pre-commit-config.yaml, lefthook.yml, the
                 repository's core.hooksPath, included git config) are
                 refused and saved as a patch unless --allow-hooks
  --branch NAME  record the guest's tree as a commit on a new branch whose
                 parent is the shipped HEAD (working tree, index and current
                 branch untouched)
The patch is untrusted guest output: paths outside the repository, into
.git or through symlinks are refused. A stopped VM is started for the
export and stopped again.`,
		Args:              args(cobra.ExactArgs(1)),
		ValidArgsFunction: e.completeVMs,
		RunE: func(c *cobra.Command, a []string) error {
			n := 0
			for _, set := range []bool{out != "", apply, branch != ""} {
				if set {
					n++
				}
			}
			if n > 1 {
				return usageError{errors.New("give at most one of --out, --apply, --branch")}
			}
			if allowHooks && !apply {
				return usageError{errors.New("--allow-hooks goes with --apply")}
			}
			if c.Flags().Changed("branch") {
				if err := checkBranchName(branch); err != nil {
					return err
				}
			}
			if c.Flags().Changed("out") {
				if err := checkOutFile(out); err != nil {
					return err
				}
			}
			mode := exportMode("-")
			switch {
			case out != "":
				mode = exportMode(out)
			case apply:
				mode = "apply"
			case branch != "":
				mode = exportMode("branch:" + branch)
			}
			cl, err := e.client(c.Context())
			if err != nil {
				return err
			}
			v, err := cl.GetVM(c.Context(), a[0])
			if err != nil {
				return err
			}
			if v.Workspace == nil {
				return errdefs.NotFound(fmt.Sprintf("vm %s has no workspace", v.Name))
			}
			if v.Workspace.Repo != "" {
				if _, err := os.Stat(v.Workspace.Repo); err != nil && mode != "-" && !strings.HasPrefix(string(mode), "/") {
					return fmt.Errorf("the workspace's repository %s: %w", v.Workspace.Repo, err)
				}
			}
			_, err = e.export(c.Context(), cl, v.Name, v.Workspace, mode, allowHooks)
			return err
		},
	}
	cmd.Flags().StringVarP(&out, "out", "o", "", "write the patch to FILE")
	cmd.Flags().BoolVar(&apply, "apply", false, "apply the patch to the host working tree")
	cmd.Flags().BoolVar(&allowHooks, "allow-hooks", false, "with --apply: also apply edits to files that make the host run code (git hooks and their configuration)")
	cmd.Flags().StringVar(&branch, "branch", "", "record the guest's tree as a commit on a new branch NAME")
	return cmd
}

var _ = filepath.Join
