package workspace

import (
	"bufio"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/banger-sh/banger/internal/agent"
)

// writeManifest writes the shipped tree's manifest (agent.ManifestFile)
// into s.tree/.git: the files and symlinks as the guest will see them
// (mtime in whole seconds: mkfs.ext4 -d and the guest's git keep no more).
// A repository with submodules gets none (their directories hold files the
// guest's git does not track): its export stays on git in the guest.
func (s *staging) writeManifest(set *FileSet) error {
	if len(set.Submodules) > 0 {
		return nil
	}
	f, err := os.Create(filepath.Join(s.tree, ".git", agent.ManifestFile))
	if err != nil {
		return fmt.Errorf("workspace: manifest: %w", err)
	}
	bw := bufio.NewWriterSize(f, 256<<10)
	err = filepath.WalkDir(s.tree, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(s.tree, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if rel == ".git" {
			return filepath.SkipDir
		}
		if d.IsDir() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		mode := agent.GitMode(fi.Mode())
		if mode == 0 {
			return nil
		}
		if strings.ContainsRune(rel, 0) {
			return fmt.Errorf("%q: NUL in a name", rel)
		}
		_, err = fmt.Fprintf(bw, "%o %d %d %s\x00", mode, fi.Size(), fi.ModTime().Unix(), rel)
		return err
	})
	if err == nil {
		err = bw.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("workspace: manifest: %w", err)
	}
	return nil
}

// shippedPack is the pack of the shipped .git (one pack-objects output).
func (s *staging) shippedPack() (string, error) {
	m, err := filepath.Glob(filepath.Join(s.tree, ".git", "objects", "pack", "pack-*.pack"))
	if err != nil || len(m) != 1 {
		return "", fmt.Errorf("workspace: the shipped pack: found %d", len(m))
	}
	return m[0], nil
}
