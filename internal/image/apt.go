package image

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/progress"
	"github.com/banger-sh/banger/internal/system"
)

// DefaultMirror is used when the host's apt sources name no Debian mirror.
const DefaultMirror = "http://deb.debian.org/debian"

// DefaultKernelPackage is the metapackage whose dependency is the guest
// kernel.
const DefaultKernelPackage = "linux-image-cloud-amd64"

// aptSource is one "deb" source of the host's apt configuration.
type aptSource struct {
	URI    string
	Suites []string
}

// HostMirror returns the Debian mirror of the host's apt sources that
// serves suite (or, failing that, the first non-security "deb" source),
// or DefaultMirror.
func HostMirror(suite string) string {
	var sources []aptSource
	if f, err := os.Open("/etc/apt/sources.list"); err == nil {
		sources = append(sources, parseSourcesList(f)...)
		f.Close()
	}
	if entries, err := os.ReadDir("/etc/apt/sources.list.d"); err == nil {
		for _, e := range entries {
			p := filepath.Join("/etc/apt/sources.list.d", e.Name())
			f, err := os.Open(p)
			if err != nil {
				continue
			}
			switch filepath.Ext(e.Name()) {
			case ".sources":
				sources = append(sources, parseDeb822Sources(f)...)
			case ".list":
				sources = append(sources, parseSourcesList(f)...)
			}
			f.Close()
		}
	}
	return pickMirror(sources, suite)
}

func pickMirror(sources []aptSource, suite string) string {
	for _, s := range sources {
		if slices.Contains(s.Suites, suite) && !strings.Contains(s.URI, "security") {
			return s.URI
		}
	}
	for _, s := range sources {
		if !strings.Contains(s.URI, "security") && (strings.HasPrefix(s.URI, "http://") || strings.HasPrefix(s.URI, "https://")) {
			return s.URI
		}
	}
	return DefaultMirror
}

// parseSourcesList reads one-line-style sources ("deb [opts] URI suite comp...").
func parseSourcesList(r io.Reader) []aptSource {
	var out []aptSource
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "deb" {
			continue
		}
		f = f[1:]
		if strings.HasPrefix(f[0], "[") {
			for len(f) > 0 && !strings.HasSuffix(f[0], "]") {
				f = f[1:]
			}
			if len(f) == 0 {
				continue
			}
			f = f[1:]
		}
		if len(f) < 2 {
			continue
		}
		out = append(out, aptSource{URI: strings.TrimRight(f[0], "/"), Suites: []string{f[1]}})
	}
	return out
}

// parseDeb822Sources reads deb822-style sources (Types:/URIs:/Suites:).
func parseDeb822Sources(r io.Reader) []aptSource {
	var out []aptSource
	fields := map[string]string{}
	flush := func() {
		if strings.EqualFold(fields["enabled"], "no") || !slices.Contains(strings.Fields(fields["types"]), "deb") {
			clear(fields)
			return
		}
		suites := strings.Fields(fields["suites"])
		for _, u := range strings.Fields(fields["uris"]) {
			out = append(out, aptSource{URI: strings.TrimRight(u, "/"), Suites: suites})
		}
		clear(fields)
	}
	sc := bufio.NewScanner(r)
	last := ""
	for sc.Scan() {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			flush()
			continue
		}
		if strings.HasPrefix(line, "#") {
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if last != "" {
				fields[last] += " " + strings.TrimSpace(line)
			}
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		last = strings.ToLower(strings.TrimSpace(k))
		fields[last] = strings.TrimSpace(v)
	}
	flush()
	return out
}

// kernelPackage is a downloaded kernel image package.
type kernelPackage struct {
	Name    string // linux-image-6.1.0-56-cloud-amd64
	Version string // 6.1.192-2
	Deb     string // path in the cache
}

var realKernelPkg = regexp.MustCompile(`^linux-image-[0-9][^ ]*$`)

// resolveKernelPackage follows a metapackage (linux-image-cloud-amd64) to
// the versioned package it depends on, using the host's apt lists. A
// package that is already versioned is returned as is.
func resolveKernelPackage(ctx context.Context, pkg string) (string, error) {
	if realKernelPkg.MatchString(pkg) {
		return pkg, nil
	}
	out, err := aptCache(ctx, "depends", pkg)
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(out), "\n") {
		line = strings.TrimSpace(line)
		dep, ok := strings.CutPrefix(line, "Depends: ")
		if !ok {
			continue
		}
		dep = strings.Trim(strings.TrimSpace(dep), "<>")
		if realKernelPkg.MatchString(dep) {
			return dep, nil
		}
	}
	return "", errdefs.NotFound(fmt.Sprintf("apt-cache depends %s names no linux-image-<version> package", pkg))
}

// candidateVersion returns the version apt would install of pkg, and the
// size of its .deb (0 when apt does not say).
func candidateVersion(ctx context.Context, pkg string) (string, int64, error) {
	out, err := aptCache(ctx, "show", "--no-all-versions", pkg)
	if err != nil {
		return "", 0, err
	}
	version, size := "", int64(0)
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "Version: "); ok && version == "" {
			version = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(line, "Size: "); ok && size == 0 {
			size, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	if version == "" {
		return "", 0, fmt.Errorf("apt-cache show %s: no Version field", pkg)
	}
	return version, size, nil
}

// aptCache runs apt-cache; when the package lists are missing (a fresh
// machine), it runs apt-get update once and retries.
func aptCache(ctx context.Context, args ...string) ([]byte, error) {
	argv := append([]string{"apt-cache"}, args...)
	out, err := system.Run(ctx, argv...)
	if err == nil && len(strings.TrimSpace(string(out))) > 0 {
		return out, nil
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if _, uerr := system.Run(ctx, "apt-get", "update", "-q"); uerr != nil {
		return nil, fmt.Errorf("apt lists: %w (and apt-get update failed: %v)", err, uerr)
	}
	out, err = system.Run(ctx, argv...)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// fetchKernelPackage returns the kernel package for pkg (a metapackage or a
// versioned package), downloading it into cacheDir unless a package of that
// name and version is already there. Downloads go through the host's apt
// configuration and touch nothing outside cacheDir.
func fetchKernelPackage(ctx context.Context, pkg, cacheDir string, progress progress.Func) (kernelPackage, error) {
	name, err := resolveKernelPackage(ctx, pkg)
	if err != nil {
		return kernelPackage{}, fmt.Errorf("kernel package %s: %w", pkg, err)
	}
	version, size, err := candidateVersion(ctx, name)
	if err != nil {
		return kernelPackage{}, fmt.Errorf("kernel package %s: %w", name, err)
	}
	kp := kernelPackage{Name: name, Version: version}
	safeVersion := strings.NewReplacer(":", "%3a", "/", "_").Replace(version)
	kp.Deb = filepath.Join(cacheDir, name+"_"+safeVersion+".deb")
	if st, err := os.Stat(kp.Deb); err == nil && st.Mode().IsRegular() && st.Size() > 0 {
		progress.Phase("kernel", fmt.Sprintf("using cached %s %s", name, version))
		return kp, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return kp, err
	}
	progress.Phase("kernel", fmt.Sprintf("downloading %s %s", name, version))
	dl, err := os.MkdirTemp(cacheDir, ".download-*")
	if err != nil {
		return kp, err
	}
	defer os.RemoveAll(dl)
	// apt-get says nothing while it downloads: watch the file grow.
	meter := progress.NewMeter("kernel", "bytes", size)
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				meter.Set(dirBytes(dl), "downloading "+name)
			}
		}
	}()
	// The sandbox user (_apt) may not be able to write to the cache dir.
	_, err = system.RunOpts(ctx, system.Opts{Dir: dl}, "apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", name+"="+version)
	close(stop)
	<-watched
	if err != nil {
		return kp, fmt.Errorf("download %s: %w", name, err)
	}
	meter.Finish("downloaded " + name)
	debs, _ := filepath.Glob(filepath.Join(dl, "*.deb"))
	if len(debs) != 1 {
		return kp, fmt.Errorf("download %s: expected one .deb, found %d", name, len(debs))
	}
	if err := os.Rename(debs[0], kp.Deb); err != nil {
		return kp, err
	}
	return kp, nil
}

// dirBytes is the size of the regular files under dir.
func dirBytes(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if st, err := d.Info(); err == nil {
				n += st.Size()
			}
		}
		return nil
	})
	return n
}

// extractedKernel is the part of an unpacked kernel package a build uses.
type extractedKernel struct {
	Release    string // 6.1.0-56-cloud-amd64
	BzImage    string // <root>/boot/vmlinuz-<release>
	ModulesDir string // <root>/lib/modules/<release>
}

// unpackKernel extracts a kernel .deb into root and locates the bzImage and
// module tree in it.
func unpackKernel(ctx context.Context, deb, root string) (extractedKernel, error) {
	var k extractedKernel
	if err := os.MkdirAll(root, 0o755); err != nil {
		return k, err
	}
	if _, err := system.Run(ctx, "dpkg-deb", "-x", deb, root); err != nil {
		return k, fmt.Errorf("unpack %s: %w", filepath.Base(deb), err)
	}
	vmlinuzes, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if len(vmlinuzes) != 1 {
		return k, fmt.Errorf("unpack %s: expected one boot/vmlinuz-*, found %d", filepath.Base(deb), len(vmlinuzes))
	}
	k.BzImage = vmlinuzes[0]
	k.Release = strings.TrimPrefix(filepath.Base(k.BzImage), "vmlinuz-")
	for _, d := range []string{filepath.Join(root, "lib", "modules", k.Release), filepath.Join(root, "usr", "lib", "modules", k.Release)} {
		if st, err := os.Stat(d); err == nil && st.IsDir() {
			k.ModulesDir = d
			break
		} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return k, err
		}
	}
	if k.ModulesDir == "" {
		return k, fmt.Errorf("unpack %s: no lib/modules/%s", filepath.Base(deb), k.Release)
	}
	return k, nil
}
