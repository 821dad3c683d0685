package workspace

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/banger-sh/banger/internal/errdefs"
)

// Files that make the host run code when they change, without anyone
// running them: git hooks and the hook managers' configurations (git runs
// a hook at commit, checkout, merge, push; a hook manager runs what its
// configuration names). A patch from a guest that changes one would have
// the host run the guest's code the next time the user commits, so Apply
// refuses such a patch unless asked (ApplyOptions.AllowHooks).
//
//   - .husky/ (at any depth: husky points core.hooksPath there)
//   - at the top: .pre-commit-config.yaml (pre-commit), lefthook's
//     configurations (lefthook.yml and its .yaml, .json, .toml, dotted and
//     -local variants) and script directories (.lefthook/, .lefthook-local/)
//   - everything below the repository's hooks directory when it is in the
//     work tree (core.hooksPath = .githooks, say)
//   - git configuration files in the work tree that the repository's
//     configuration includes (include.path = ../.gitconfig): they can set
//     core.hooksPath, core.fsmonitor, aliases, ...
var hookManagerFiles = func() []string {
	var out []string
	for _, base := range []string{"lefthook", ".lefthook", "lefthook-local", ".lefthook-local"} {
		for _, ext := range []string{".yml", ".yaml", ".json", ".toml"} {
			out = append(out, base+ext)
		}
	}
	return append(out, ".pre-commit-config.yaml")
}()

var hookManagerDirs = []string{".lefthook", ".lefthook-local"}

// HookError is returned by Apply when the patch changes files that make
// the host run code (see HookFiles); nothing was applied. It matches
// errdefs.ErrConflict.
type HookError struct {
	Files []string // the patch's paths that can run code, sorted
}

func (e *HookError) Error() string {
	names := make([]string, len(e.Files))
	for i, f := range e.Files {
		names[i] = quoteName(f)
	}
	return "the patch changes files that make this host run code (git hooks or their configuration): " +
		strings.Join(names, ", ") + "; nothing was applied"
}

func (e *HookError) Is(target error) bool { return target == errdefs.ErrConflict }

// HookFiles lists the paths p writes (added, modified, renamed or copied
// to, mode changed) that make the host run code in repo's work tree: see
// the list above. Deleting such a file runs nothing and is not listed.
func HookFiles(ctx context.Context, repo string, p *Patch) ([]string, error) {
	if p.Empty() {
		return nil, nil
	}
	root, err := Root(ctx, repo)
	if err != nil {
		return nil, err
	}
	g := gitCmd{dir: root}
	var dirs, files []string
	// The hooks directory git uses (core.hooksPath resolved, or .git/hooks
	// which no patch can reach).
	if hp, err := g.line(ctx, "rev-parse", "--path-format=absolute", "--git-path", "hooks"); err == nil {
		if rel, ok := inside(root, hp); ok {
			dirs = append(dirs, rel)
		}
	}
	// Configuration files the repository's configuration includes.
	if out, err := g.run(ctx, "config", "--list", "--show-origin", "-z"); err == nil {
		for _, rec := range splitZ(out) {
			if f, ok := strings.CutPrefix(rec, "file:"); ok {
				if !filepath.IsAbs(f) {
					f = filepath.Join(root, f)
				}
				if rel, ok := inside(root, f); ok && !slices.Contains(files, rel) {
					files = append(files, rel)
				}
			}
		}
	}
	var out []string
	for _, c := range p.Changes {
		if c.Kind == Deleted {
			continue
		}
		if isHookPath(c.Path, dirs, files) {
			out = append(out, c.Path)
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

func isHookPath(p string, dirs, files []string) bool {
	for _, el := range strings.Split(p, "/") {
		if el == ".husky" {
			return true
		}
	}
	if slices.Contains(hookManagerFiles, p) || slices.Contains(files, p) {
		return true
	}
	for _, d := range append(slices.Clone(hookManagerDirs), dirs...) {
		switch {
		case d == "" || d == ".": // hooks at the top of the work tree
			if !strings.Contains(p, "/") {
				return true
			}
		case p == d || strings.HasPrefix(p, d+"/"):
			return true
		}
	}
	return false
}

// inside returns p relative to root (slash-separated) when p is below root.
func inside(root, p string) (string, bool) {
	rel, err := filepath.Rel(root, filepath.Clean(p))
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", false
	}
	return filepath.ToSlash(rel), true
}

// ApplyOptions tune ApplyWith.
type ApplyOptions struct {
	// AllowHooks applies a patch that changes files that make the host
	// run code (HookFiles); the caller should show them to the user.
	AllowHooks bool
}

// checkHooks refuses p when it changes hook files, unless allowed.
func checkHooks(ctx context.Context, root string, p *Patch, o ApplyOptions) error {
	if o.AllowHooks {
		return nil
	}
	hooks, err := HookFiles(ctx, root, p)
	if err != nil {
		return fmt.Errorf("workspace: look for hook files: %w", err)
	}
	if len(hooks) > 0 {
		return &HookError{Files: hooks}
	}
	return nil
}
