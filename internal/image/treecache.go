package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/banger-sh/banger/internal/progress"
	"github.com/banger-sh/banger/internal/system"
)

// The root tree cache. debootstrap's --cache-dir saves the downloads, but
// installing them (dpkg in a chroot) is most of a build. So the prepared
// tree is also kept, as a tar, under CacheDir/rootfs, keyed by what decides
// its content: suite, mirror, packages, recipe version, and the mirror's
// InRelease file for the suite. Debian changes a suite's packages only
// with a new InRelease, so a cached tree is what debootstrap would install
// now; when the mirror publishes a new one, the next build runs debootstrap
// again and replaces the old tar.

// treeCache locates one cached tree.
type treeCache struct {
	dir    string // CacheDir/rootfs
	family string // hash of suite, mirror, packages, recipe: one file kept per family
	key    string // family + release
	zstd   bool
}

func (c treeCache) path() string {
	ext := ".tar"
	if c.zstd {
		ext = ".tar.zst"
	}
	return filepath.Join(c.dir, c.family+"-"+c.key+ext)
}

// newTreeCache fetches the suite's InRelease to key the cache. It returns
// ok false (and why) when the cache cannot be used.
func newTreeCache(ctx context.Context, o *BuildOptions) (treeCache, bool, string) {
	if !strings.HasPrefix(o.Mirror, "http://") && !strings.HasPrefix(o.Mirror, "https://") {
		return treeCache{}, false, "mirror is not http(s)"
	}
	release, err := fetchInRelease(ctx, o.Mirror, o.Suite)
	if err != nil {
		return treeCache{}, false, err.Error()
	}
	pkgs := slices.Clone(o.Packages)
	slices.Sort(pkgs)
	fam := sha256.Sum256([]byte(fmt.Sprintf("recipe=%d\nsuite=%s\nmirror=%s\npackages=%s\n", recipeVersion, o.Suite, o.Mirror, strings.Join(pkgs, ","))))
	rel := sha256.Sum256(release)
	_, zerr := system.LookPath("zstd")
	return treeCache{
		dir:    filepath.Join(o.CacheDir, "rootfs"),
		family: o.Suite + "-" + hex.EncodeToString(fam[:])[:12],
		key:    hex.EncodeToString(rel[:])[:12],
		zstd:   zerr == nil,
	}, true, ""
}

func fetchInRelease(ctx context.Context, mirror, suite string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	url := strings.TrimRight(mirror, "/") + "/dists/" + suite + "/InRelease"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch %s: %s", url, resp.Status)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 16<<20))
}

// tarFlags keep everything mkfs.ext4 -d would: owners (numerically),
// modes, hard links, device nodes, xattrs (file capabilities), ACLs.
var tarFlags = []string{"--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "--sparse"}

func tarArgs(c treeCache, verb ...string) []string {
	argv := append([]string{"tar"}, verb...)
	if c.zstd {
		argv = append(argv, "--zstd")
	}
	return append(argv, tarFlags...)
}

// restore extracts the cached tree into root (which must not exist). It
// returns false when there is no cached tree. The archive is fed to tar
// through a meter (progress in bytes).
func (c treeCache) restore(ctx context.Context, root string, log io.Writer, p progress.Func) (bool, error) {
	f, err := os.Open(c.path())
	if err != nil {
		return false, nil
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return false, err
	}
	if err := os.Mkdir(root, 0o755); err != nil {
		return false, err
	}
	m := p.NewMeter("debootstrap", "bytes", st.Size())
	in := &meteredReader{r: f, m: m, detail: "restoring the cached root tree"}
	argv := tarArgs(c, "--extract", "--file", "-", "--same-permissions", "--same-owner", "-C", root)
	if _, err := system.RunOpts(ctx, system.Opts{Stdin: in, Stdout: log, Stderr: log}, argv...); err != nil {
		return false, fmt.Errorf("restore cached tree: %w", err)
	}
	m.Finish("restored the cached root tree")
	return true, nil
}

// meteredReader counts what is read through it.
type meteredReader struct {
	r      io.Reader
	m      *progress.Meter
	detail string
}

func (r *meteredReader) Read(b []byte) (int, error) {
	n, err := r.r.Read(b)
	r.m.Add(int64(n), r.detail)
	return n, err
}

// save archives the tree at root into the cache and removes older trees
// of the same family. The archive appears atomically.
func (c treeCache) save(ctx context.Context, root string, log io.Writer) (err error) {
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(c.dir, ".tmp-"+c.family+"-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	f.Close()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	argv := append(tarArgs(c, "--create", "--file", tmp, "-C", root), ".")
	if _, err := system.RunOpts(ctx, system.Opts{Stdout: log, Stderr: log}, argv...); err != nil {
		return fmt.Errorf("save tree: %w", err)
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, c.path()); err != nil {
		return err
	}
	old, _ := filepath.Glob(filepath.Join(c.dir, c.family+"-*"))
	for _, p := range old {
		if p != c.path() {
			os.Remove(p)
		}
	}
	return nil
}
