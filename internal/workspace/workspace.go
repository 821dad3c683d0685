// Package workspace ships a git work tree into a VM and brings the guest's
// edits back. It is the host side only: it lists files, builds the work
// disk (or a tar stream for a running VM), and turns the guest's export
// output into a validated patch that can be written, applied, or recorded
// as a branch.
//
// # What is shipped
//
// Exactly the files `git ls-files` lists, as they are in the working tree
// (uncommitted edits included, files deleted in the working tree absent),
// plus untracked files that are not ignored when asked. Symlinks are shipped
// as links, never followed; modes are kept. Submodules: the files a
// checked-out submodule tracks are shipped (so builds work), without the
// submodule's own .git; the guest sees the submodule as an uninitialised one.
// Edits made inside a submodule in the guest are NOT exported (the export
// diff covers the superproject only); FileSet.Submodules names them so the
// CLI can say so, and WriteDryRun prints a note.
//
// # How
//
// The files are hard-linked into a staging directory (copied when they
// cannot be linked), a .git is prepared next to them, and `mkfs.ext4 -d`
// turns the directory into an image without mounting anything (BuildDisk);
// or the same directory is streamed as a tar (TarStream). Hard-linking
// changes the ctime of the user's files: their next `git status` re-reads
// them once.
//
// # The .git shipped
//
// A fresh repository prepared on the host (the guest never runs `git add`
// over the whole tree: 41 s under emulation):
//   - objects: one pack holding the HEAD commit (shallow: no parents), its
//     tree, the trees and blobs of the host's index, and the "base": a
//     commit whose tree is exactly the shipped tree and whose parent is
//     HEAD, named refs/banger/base. Export diffs the guest's tree against it.
//   - HEAD: the host's branch (refs/heads/X at the host's HEAD) or the
//     detached commit.
//   - index: the host's index (its staged state), stat data refreshed
//     against the shipped files; with core.checkStat=minimal and
//     core.trustctime=false in the guest config, the guest's first
//     `git status` trusts size + mtime seconds and shows the host's state.
//     A file edited after it was staged within the same second to the same
//     size is shipped as a copy one second newer, so it cannot look clean.
//   - banger-base.index: the index of the base tree with the same stat data;
//     export starts from a copy of it so only files changed in the guest
//     are read.
//   - config: written fresh (no remotes, credentials, hooks or other host
//     config). info/exclude: the host's info/exclude and core.excludesFile
//     patterns, so the guest ignores what the host ignores.
//   - banger-workspace.json (InfoFile): the Info of this workspace.
//
// The base's new objects (blobs of uncommitted and untracked files, its
// trees and commit) are also written to the host repository's object
// store (unreferenced loose objects, as `git stash create` does), so that
// Branch can build a commit from them after the user's tree has moved on.
//
// # Export
//
// ExportCommand is run in the guest; its output goes through ParsePatch,
// then WritePatch, Apply, Branch or SaveRescue on the host. The guest's
// stat check is size + whole-second mtime: an edit that keeps both (a tool
// that restores mtimes, or an edit within the second the file was shipped)
// is invisible to the guest's git status and to export, as with git on
// filesystems without sub-second times.
//
// # Wiring (what a caller does)
//
//	set, _ := workspace.List(ctx, dir, workspace.ListOptions{IncludeUntracked: u})
//	// --dry-run: workspace.WriteDryRun(os.Stdout, set); done.
//	info, _ := workspace.BuildDisk(ctx, dir, set, workspace.DiskOptions{Dest: img})
//	// attach img as the VM's second virtio disk (/dev/vdb); in the guest:
//	//   mkdir -p /root/repo && mount -t ext4 -o noatime /dev/vdb /root/repo
//	// record info (JSON) with the VM: info.Base is what Branch needs.
//	// A running VM instead: pipe TarStream into agent PutTar("/root/repo").
//	out := exec in guest: workspace.ExportCommand("/root/repo") (stdout)
//	p, _ := workspace.ParsePatch(out, limit)
//	workspace.WritePatch(p, os.Stdout) | workspace.Apply(ctx, dir, p) |
//	workspace.Branch(ctx, dir, p, name, info.Base) |
//	workspace.SaveRescue(ctx, dir, vmName, p)
//
// # Who may call this
//
// Everything here runs git as the calling process, in the user's
// repository, honouring its config (excludes, filters). Run it as the
// repository's owner (the CLI), not as root: git refuses repositories
// owned by another user (List then says so), and the objects it writes
// must stay the user's.
//
// # Trust
//
// The guest's export output is untrusted: ParsePatch bounds its size,
// parses it as a stream (memory: the text once plus ~150 bytes per file;
// ScanPatch keeps no text), and rejects any path that is absolute, contains
// "..", enters .git (any case), goes below a symlink the patch creates, or
// holds a control character git would have quoted, and requires git's own
// reading of the patch to name the same files in the same order; Apply
// and Branch check again against
// the tree they write to (no path below a symlink), and git apply itself is
// all-or-nothing. Nothing on the host parses the guest's disk.
package workspace

import (
	"bytes"
	"context"
	"io"
	"strings"

	"github.com/banger-sh/banger/internal/system"
)

// gitCmd describes one git invocation.
type gitCmd struct {
	dir   string
	env   []string
	stdin io.Reader
	out   io.Writer
	errw  io.Writer // also receives stderr (errors carry its tail anyway)
	nice  int       // system.Opts.Nice
}

// baseGitEnv keeps git from prompting, paging, or taking optional locks on
// the user's index (status-like commands refresh it otherwise).
var baseGitEnv = []string{
	"GIT_TERMINAL_PROMPT=0",
	"GIT_OPTIONAL_LOCKS=0",
	"GIT_PAGER=cat",
	"PAGER=cat",
}

// run runs git with args and returns its stdout.
func (g gitCmd) run(ctx context.Context, args ...string) ([]byte, error) {
	argv := append([]string{"git", "-c", "core.fsmonitor=false", "-c", "core.quotePath=true"}, args...)
	return system.RunOpts(ctx, system.Opts{
		Dir:    g.dir,
		Env:    append(append([]string(nil), baseGitEnv...), g.env...),
		Stdin:  g.stdin,
		Stdout: g.out,
		Stderr: g.errw,
		Nice:   g.nice,
	}, argv...)
}

// line runs git and returns its stdout without the trailing newline.
func (g gitCmd) line(ctx context.Context, args ...string) (string, error) {
	out, err := g.run(ctx, args...)
	return strings.TrimRight(string(out), "\n"), err
}

// splitZ splits NUL-terminated records.
func splitZ(b []byte) []string {
	if len(b) == 0 {
		return nil
	}
	b = bytes.TrimSuffix(b, []byte{0})
	parts := bytes.Split(b, []byte{0})
	out := make([]string, len(parts))
	for i, p := range parts {
		out[i] = string(p)
	}
	return out
}

func exitCode(err error) int { return system.ExitCode(err) }
