// Command workspace benchmarks the host side of shipping a work tree: it
// commits $(go env GOROOT)/src into a temporary repository (~11,500 files)
// and prints medians of the host-side floor (git ls-files | tar | cat),
// List, BuildDisk (staging + .git + mkfs.ext4) and TarStream.
//
//	go run ./bench/workspace [-runs 3] [-repo DIR] [-keep] [-pause 1s]
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/banger-sh/banger/internal/system"
	"github.com/banger-sh/banger/internal/workspace"
)

func main() {
	runs := flag.Int("runs", 3, "runs per measurement (median reported)")
	repo := flag.String("repo", "", "use this repository instead of committing GOROOT/src")
	keep := flag.Bool("keep", false, "keep the temporary repository")
	pause := flag.Duration("pause", time.Second, "pause before each run (lets the previous run's background cleanup and writeback finish)")
	flag.Parse()
	if err := run(*runs, *repo, *keep, *pause); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

var gitEnv = []string{
	"GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1",
	"GIT_AUTHOR_NAME=bench", "GIT_AUTHOR_EMAIL=bench@localhost",
	"GIT_COMMITTER_NAME=bench", "GIT_COMMITTER_EMAIL=bench@localhost",
}

func run(runs int, repo string, keep bool, pause time.Duration) error {
	ctx := context.Background()
	tmp, err := os.MkdirTemp("", "banger-bench-")
	if err != nil {
		return err
	}
	if !keep {
		defer os.RemoveAll(tmp)
	}
	if repo == "" {
		out, err := system.Run(ctx, "go", "env", "GOROOT")
		if err != nil {
			return err
		}
		src := filepath.Join(strings.TrimSpace(string(out)), "src")
		repo = filepath.Join(tmp, "repo")
		fmt.Printf("committing %s into %s ...\n", src, repo)
		if _, err := system.Run(ctx, "cp", "-a", src+"/.", repo+"/"); err != nil {
			if err := os.MkdirAll(repo, 0o755); err != nil {
				return err
			}
			if _, err := system.Run(ctx, "cp", "-a", src+"/.", repo+"/"); err != nil {
				return err
			}
		}
		for _, argv := range [][]string{
			{"git", "init", "-q"}, {"git", "add", "-A"}, {"git", "-c", "gc.auto=0", "commit", "-q", "-m", "src"}, {"git", "gc", "-q"},
		} {
			if _, err := system.RunOpts(ctx, system.Opts{Dir: repo, Env: gitEnv}, argv...); err != nil {
				return err
			}
		}
	}
	fmt.Printf("repository: %s (runs: %d, medians)\n\n", repo, runs)
	type row struct {
		name string
		fn   func() (string, error)
	}
	var set *workspace.FileSet
	dest := filepath.Join(tmp, "work.ext4")
	rows := []row{
		{"host floor: git ls-files -z | tar --null -T - -c | cat >/dev/null", func() (string, error) {
			_, err := system.RunOpts(ctx, system.Opts{Dir: repo},
				"sh", "-c", "git ls-files -z | tar --null -T - -c | cat >/dev/null")
			return "", err
		}},
		{"List", func() (string, error) {
			var err error
			set, err = workspace.List(ctx, repo, workspace.ListOptions{})
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("%d files, %d MiB", len(set.Files), set.TotalSize>>20), nil
		}},
		{"BuildDisk (stage + .git + mkfs.ext4 -d)", func() (string, error) {
			info, err := workspace.BuildDisk(ctx, repo, set, workspace.DiskOptions{Dest: dest})
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("stage %.2fs, .git %.2fs, mkfs %.2fs; image %d MiB (linked %d, copied %d)",
				info.StageTime.Seconds(), info.GitTime.Seconds(), info.MkfsTime.Seconds(),
				info.Size>>20, info.Linked, info.Copied), nil
		}},
		{"TarStream > /dev/null", func() (string, error) {
			cw := &countWriter{}
			_, err := workspace.TarStream(ctx, repo, set, cw)
			return fmt.Sprintf("%d MiB of tar", cw.n>>20), err
		}},
	}
	// The export rows need a guest: a real copy of a staged tree with
	// 1,000 files edited (what the guest's disk would hold).
	var guest string
	prepGuest := func() error {
		s, err := workspace.List(ctx, repo, workspace.ListOptions{})
		if err != nil {
			return err
		}
		info, err := workspace.BuildDisk(ctx, repo, s, workspace.DiskOptions{Dest: filepath.Join(tmp, "guest.ext4"), KeepStaging: true})
		if err != nil {
			return err
		}
		defer os.RemoveAll(filepath.Dir(info.Staging))
		guest = filepath.Join(tmp, "guest")
		os.RemoveAll(guest)
		if _, err := system.Run(ctx, "cp", "-a", info.Staging, guest); err != nil {
			return err
		}
		n := 0
		for _, f := range s.Files {
			if n == 1000 || f.IsSymlink() || !strings.HasSuffix(f.Path, ".go") {
				continue
			}
			p := filepath.Join(guest, filepath.FromSlash(f.Path))
			fh, err := os.OpenFile(p, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			fmt.Fprintf(fh, "\n// edited in the guest\n")
			fh.Close()
			n++
		}
		// Let the guest's own git refresh its index once, as a user would.
		_, err = system.RunOpts(ctx, system.Opts{Dir: guest}, "git", "status", "--porcelain")
		return err
	}
	if err := prepGuest(); err != nil {
		return err
	}
	rows = append(rows,
		row{"guest-native: git diff --binary HEAD (1,000 files changed)", func() (string, error) {
			out, err := system.RunOpts(ctx, system.Opts{Dir: guest}, "git", "diff", "--binary", "HEAD")
			return fmt.Sprintf("%d KiB", len(out)>>10), err
		}},
		row{"ExportCommand + ParsePatch (1,000 files changed)", func() (string, error) {
			out, err := system.Run(ctx, workspace.ExportCommand(guest)...)
			if err != nil {
				return "", err
			}
			p, err := workspace.ParsePatch(strings.NewReader(string(out)), 0)
			if err != nil {
				return "", err
			}
			return fmt.Sprintf("%d files, %d KiB", len(p.Changes), len(out)>>10), nil
		}},
	)
	fmt.Printf("| %-66s | %8s | %s\n", "step", "median s", "detail (last run)")
	for _, r := range rows {
		var ds []time.Duration
		var detail string
		for i := 0; i < runs; i++ {
			time.Sleep(pause)
			t0 := time.Now()
			d, err := r.fn()
			if err != nil {
				return fmt.Errorf("%s: %w", r.name, err)
			}
			ds = append(ds, time.Since(t0))
			detail = d
		}
		sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
		fmt.Printf("| %-66s | %8.3f | %s\n", r.name, ds[len(ds)/2].Seconds(), detail)
	}
	return nil
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

var _ io.Writer = (*countWriter)(nil)
