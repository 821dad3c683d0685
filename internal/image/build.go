package image

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/progress"
	"github.com/banger-sh/banger/internal/system"
)

// buildPhases are the steps of a build, in order.
var buildPhases = []string{"kernel", "modules", "debootstrap", "rootfs", "manifest", "done"}

// Defaults of a build.
const (
	DefaultSuite     = "bookworm"
	DefaultSizeBytes = 2 << 30
	// guestHostname is the image's /etc/hostname until the agent sets the
	// VM's own.
	guestHostname = "banger"
)

// defaultPackages are installed on top of debootstrap's minbase.
var defaultPackages = []string{"git", "iproute2", "ca-certificates", "openssh-server"}

// DefaultPackages returns the packages a build installs when
// BuildOptions.Packages is nil.
func DefaultPackages() []string { return append([]string(nil), defaultPackages...) }

// BuildOptions describes one image build. Zero values take the defaults.
type BuildOptions struct {
	Name     string   // image name, recorded in the manifest
	Suite    string   // Debian suite; default bookworm
	Packages []string // installed on top of minbase; nil: DefaultPackages()
	// SizeBytes is the apparent size of rootfs.ext4 (it is sparse); default
	// 2 GiB, rounded up to a MiB.
	SizeBytes int64
	// Mirror for debootstrap; default: the host's apt source for Suite.
	Mirror string
	// KernelPackage is the apt package of the guest kernel (a metapackage
	// is followed to its versioned package); default linux-image-cloud-amd64.
	// The kernel comes from the host's apt sources, whatever Suite is.
	KernelPackage string
	// CacheDir persists across builds: CacheDir/debootstrap (debootstrap
	// --cache-dir), CacheDir/kernel (kernel .debs) and CacheDir/rootfs
	// (prepared root trees as tar, see treecache.go). Builds that share it
	// take turns for debootstrap.
	CacheDir string
	// TmpDir is scratch space on the same file system as Dest; default
	// Dest's parent directory.
	TmpDir string
	// Dest is the image directory to create; it must not exist.
	Dest string
	// Progress, if set, is told each phase as it starts: "check", "kernel",
	// "modules", "debootstrap", "rootfs", "manifest", "done" (the six
	// between check and done numbered as steps), and how far the long ones
	// are (kernel download and tree restore in bytes, debootstrap in its
	// steps).
	Progress progress.Func
	// Log, if set, receives the tools' verbose output.
	Log io.Writer
	// NoTreeCache makes the build run debootstrap even when CacheDir/rootfs
	// holds a tree for the same inputs and the mirror's current release,
	// and not save one.
	NoTreeCache bool
}

var (
	validName    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	validPackage = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]+$`)
	validSuite   = regexp.MustCompile(`^[a-z][a-z0-9-]*$`)
)

// ValidName reports whether s can name an image.
func ValidName(s string) bool { return validName.MatchString(s) }

// withDefaults fills defaults and checks the options; it does not touch the
// file system beyond reading the host's apt sources.
func (o BuildOptions) withDefaults() (BuildOptions, error) {
	bad := func(format string, a ...any) (BuildOptions, error) {
		return o, errdefs.InvalidArgument(fmt.Sprintf(format, a...))
	}
	if !ValidName(o.Name) {
		return bad("image name %q: use letters, digits, '.', '_' and '-', starting with a letter or digit", o.Name)
	}
	if o.Suite == "" {
		o.Suite = DefaultSuite
	}
	if !validSuite.MatchString(o.Suite) {
		return bad("suite %q is not a Debian suite name", o.Suite)
	}
	if o.Packages == nil {
		o.Packages = DefaultPackages()
	} else {
		var pkgs []string
		for _, p := range o.Packages {
			if !validPackage.MatchString(p) {
				return bad("--packages: package name %q is not a Debian package name", p)
			}
			if !slices.Contains(pkgs, p) {
				pkgs = append(pkgs, p)
			}
		}
		o.Packages = pkgs
	}
	if o.SizeBytes == 0 {
		o.SizeBytes = DefaultSizeBytes
	}
	if o.SizeBytes < minRootfsSize {
		return bad("root file system size %d is below the minimum of %d MiB", o.SizeBytes, minRootfsSize>>20)
	}
	o.SizeBytes = (o.SizeBytes + rootfsAlign - 1) / rootfsAlign * rootfsAlign
	if o.Mirror == "" {
		o.Mirror = HostMirror(o.Suite)
	}
	if u, err := url.Parse(o.Mirror); err != nil || u.Host == "" && u.Scheme != "file" || !slices.Contains([]string{"http", "https", "file", "ftp"}, u.Scheme) {
		return bad("mirror %q is not an http(s), ftp or file URL", o.Mirror)
	}
	if o.KernelPackage == "" {
		o.KernelPackage = DefaultKernelPackage
	}
	if !validPackage.MatchString(o.KernelPackage) {
		return bad("kernel package %q is not a Debian package name", o.KernelPackage)
	}
	if o.CacheDir == "" {
		return bad("no cache directory")
	}
	if o.Dest == "" {
		return bad("no destination directory")
	}
	var err error
	if o.Dest, err = filepath.Abs(o.Dest); err != nil {
		return o, err
	}
	if o.CacheDir, err = filepath.Abs(o.CacheDir); err != nil {
		return o, err
	}
	if o.TmpDir == "" {
		o.TmpDir = filepath.Dir(o.Dest)
	}
	if o.TmpDir, err = filepath.Abs(o.TmpDir); err != nil {
		return o, err
	}
	o.Progress = o.Progress.Steps(buildPhases...)
	if o.Log == nil {
		o.Log = io.Discard
	}
	o.Log = &syncWriter{w: o.Log}
	return o, nil
}

// debootstrapScripts holds one script per suite debootstrap can install.
const debootstrapScripts = "/usr/share/debootstrap/scripts"

// Build makes a new image at o.Dest: a Debian root file system from
// debootstrap (as rootfs.ext4), the guest kernel from the host's apt
// sources (bzImage and the vmlinux inside it), the kernel modules the guest
// needs with their load order, and manifest.json, written last.
//
// Everything is built in a temporary directory under o.TmpDir and renamed
// to o.Dest at the end; on any error or cancellation of ctx the temporary
// directory is removed and nothing is left behind. Build needs root
// (debootstrap).
func Build(ctx context.Context, opts BuildOptions) (m *Manifest, err error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("build image: %w", err)
	}
	start := time.Now()
	phase := "check"
	o.Progress.Phase(phase, o.Dest)
	defer func() {
		if err == nil {
			return
		}
		if ctx.Err() != nil && !errors.Is(err, ctx.Err()) {
			err = fmt.Errorf("build image %s: cancelled during %s: %w (%v)", o.Name, phase, ctx.Err(), err)
		} else {
			err = fmt.Errorf("build image %s: %s: %w", o.Name, phase, err)
		}
	}()
	if err := checkBuildHost(&o); err != nil {
		return nil, err
	}

	tmp, out, cleanup, err := scratch(o.TmpDir, ".build-"+o.Name+"-", o.Progress)
	if err != nil {
		return nil, err
	}
	defer cleanup(&err)
	man := &Manifest{
		Name:     o.Name,
		Source:   SourceBuild,
		Suite:    o.Suite,
		Mirror:   o.Mirror,
		Packages: o.Packages,
	}
	step := func(name string, detail string) error {
		phase = name
		o.Progress.Phase(name, detail)
		fmt.Fprintf(o.Log, "==> %s: %s\n", name, detail)
		return ctx.Err()
	}

	// Kernel first: it is quick and fails fast when apt is not usable.
	if err := step("kernel", o.KernelPackage); err != nil {
		return nil, err
	}
	kp, err := fetchKernelPackage(ctx, o.KernelPackage, filepath.Join(o.CacheDir, "kernel"), o.Progress)
	if err != nil {
		return nil, err
	}
	man.KernelPackage, man.KernelPackageVersion = kp.Name, kp.Version
	kernelRoot := filepath.Join(tmp, "kernel")
	k, err := unpackKernel(ctx, kp.Deb, kernelRoot)
	if err != nil {
		return nil, err
	}
	if err := copySparse(ctx, k.BzImage, filepath.Join(out, FileBzImage)); err != nil {
		return nil, err
	}
	if man.KernelVersion, err = KernelVersionFromBzImage(k.BzImage); err != nil {
		return nil, err
	}
	if man.KernelVersion != k.Release {
		return nil, fmt.Errorf("bzImage says kernel %s, package ships modules for %s", man.KernelVersion, k.Release)
	}
	o.Progress.Phase("kernel", "extracting vmlinux from bzImage "+man.KernelVersion)
	if err := ExtractVmlinux(ctx, k.BzImage, filepath.Join(out, FileVmlinux)); err != nil {
		return nil, err
	}

	if err := step("modules", fmt.Sprintf("%d wanted", len(guestModules))); err != nil {
		return nil, err
	}
	if man.Modules, err = installModules(ctx, kernelRoot, k.Release, k.ModulesDir, guestModules, filepath.Join(out, DirModules)); err != nil {
		return nil, err
	}
	o.Progress.Phase("modules", fmt.Sprintf("%d to load", len(man.Modules)))
	if err := removeTree(kernelRoot); err != nil {
		return nil, err
	}

	tree := filepath.Join(tmp, "rootfs")
	if err := step("debootstrap", fmt.Sprintf("%s from %s with %v", o.Suite, o.Mirror, o.Packages)); err != nil {
		return nil, err
	}
	var cache treeCache
	useCache, restored := false, false
	if !o.NoTreeCache {
		var why string
		if cache, useCache, why = newTreeCache(ctx, &o); !useCache {
			o.Progress.Phase("debootstrap", "not using the tree cache: "+why)
		}
	}
	if useCache {
		if restored, err = cache.restore(ctx, tree, o.Log, o.Progress); err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			o.Progress.Phase("debootstrap", fmt.Sprintf("cached tree unusable, running debootstrap: %v", err))
			if err := removeTree(tree); err != nil {
				return nil, err
			}
		} else if restored {
			o.Progress.Phase("debootstrap", "reused cached tree "+cache.path())
		}
	}
	if !restored {
		if err := debootstrap(ctx, &o, tree); err != nil {
			return nil, err
		}
		if err := prepareTree(tree, guestHostname); err != nil {
			return nil, fmt.Errorf("prepare tree: %w", err)
		}
	}

	if err := step("rootfs", fmt.Sprintf("ext4 of %d MiB", o.SizeBytes>>20)); err != nil {
		return nil, err
	}
	// Archive a fresh tree for the next build while mkfs reads it too.
	saved := make(chan error, 1)
	if useCache && !restored {
		go func() { saved <- cache.save(ctx, tree, o.Log) }()
	} else {
		saved <- nil
	}
	err = makeExt4(ctx, tree, filepath.Join(out, FileRootfs), o.SizeBytes, "banger-root", o.Log)
	if serr := <-saved; serr != nil && err == nil {
		if ctx.Err() != nil {
			return nil, serr
		}
		o.Progress.Phase("rootfs", fmt.Sprintf("could not cache the tree: %v", serr))
	}
	if err != nil {
		return nil, err
	}
	man.RootfsSize = o.SizeBytes
	if err := removeTree(tree); err != nil {
		return nil, err
	}

	if err := step("manifest", "hashing files"); err != nil {
		return nil, err
	}
	if err := commitImage(ctx, out, o.Dest, man); err != nil {
		return nil, err
	}
	phase = "done"
	o.Progress.Phase("done", fmt.Sprintf("%s in %s (digest %s)", o.Dest, time.Since(start).Round(100*time.Millisecond), man.ShortDigest()))
	return man, nil
}

// checkBuildHost checks what a build needs before anything is written.
func checkBuildHost(o *BuildOptions) error {
	if os.Geteuid() != 0 {
		return errdefs.InvalidArgument("building an image needs root (debootstrap)")
	}
	// The registry's build programs: the same list scripts/setup-host
	// installs and banger doctor checks.
	if err := system.CheckInstalled(system.ScopeBuild); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(debootstrapScripts, o.Suite)); err != nil {
		return errdefs.InvalidArgument(fmt.Sprintf("debootstrap does not know suite %q (no %s/%s)", o.Suite, debootstrapScripts, o.Suite))
	}
	if err := checkDest(o.Dest, o.TmpDir); err != nil {
		return err
	}
	return os.MkdirAll(o.CacheDir, 0o755)
}

// checkDest checks that dest does not exist, creates tmpDir and dest's
// parent, and checks that they share a file system (the final rename).
func checkDest(dest, tmpDir string) error {
	if _, err := os.Lstat(dest); err == nil {
		return errdefs.AlreadyExists(fmt.Sprintf("%s already exists", dest))
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	for _, d := range []string{filepath.Dir(dest), tmpDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	a, err := fsDevice(filepath.Dir(dest))
	if err != nil {
		return err
	}
	b, err := fsDevice(tmpDir)
	if err != nil {
		return err
	}
	if a != b {
		return errdefs.InvalidArgument(fmt.Sprintf("scratch directory %s is not on the file system of %s", tmpDir, dest))
	}
	return nil
}

// recipeVersion changes whenever Build would produce a different image
// from the same options (new files, new tree tweaks, other modules).
const recipeVersion = 2

// Key returns a short hash of everything that decides what Build produces
// (suite, packages, size, mirror, kernel package, module list, recipe
// version), not the name, destination or caches: two builds with the same
// key make equivalent images, so a cache can be keyed by it. The kernel
// package's candidate version is not included.
func (o BuildOptions) Key() (string, error) {
	o.Name, o.CacheDir, o.Dest = "key", "/", "/key"
	n, err := o.withDefaults()
	if err != nil {
		return "", err
	}
	h := sha256.New()
	fmt.Fprintf(h, "recipe=%d\nformat=%d\nsuite=%s\nmirror=%s\nsize=%d\nkernel=%s\n", recipeVersion, FormatVersion, n.Suite, n.Mirror, n.SizeBytes, n.KernelPackage)
	fmt.Fprintf(h, "packages=%s\nmodules=%s\n", strings.Join(n.Packages, ","), strings.Join(guestModules, ","))
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// RemoveStaleTemp removes what builds and imports that were killed (not
// cancelled: those clean up) left in tmpDir. Call it only when no build or
// import is running with that scratch directory.
func RemoveStaleTemp(tmpDir string) error {
	var errs []error
	for _, pattern := range []string{".build-*", ".import-*"} {
		matches, _ := filepath.Glob(filepath.Join(tmpDir, pattern))
		for _, m := range matches {
			if err := removeTree(m); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// syncWriter serialises writes of tools that run at the same time.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// scratch makes the temporary directory an image is assembled in (its
// "image" subdirectory is out) and returns the cleanup to defer with the
// caller's error. Cleanup runs whether ctx was cancelled or not. Once the
// image is in place, a scratch directory that will not go is only
// reported (RemoveStaleTemp gets it later): the image itself is fine.
func scratch(tmpDir, prefix string, progress progress.Func) (tmp, out string, cleanup func(*error), err error) {
	if tmp, err = os.MkdirTemp(tmpDir, prefix); err != nil {
		return "", "", nil, err
	}
	cleanup = func(err *error) {
		if rerr := removeTree(tmp); rerr != nil {
			if *err == nil {
				progress.Phase("done", fmt.Sprintf("warning: scratch directory left behind: %v", rerr))
			} else {
				*err = errors.Join(*err, rerr)
			}
		}
	}
	out = filepath.Join(tmp, "image")
	if err := os.Mkdir(out, 0o755); err != nil {
		cleanup(&err)
		return "", "", nil, err
	}
	return tmp, out, cleanup, nil
}

// commitImage finishes an image assembled in out: the manifest is written
// last (an image without one is not an image), then out is renamed to dest,
// never replacing anything there.
func commitImage(ctx context.Context, out, dest string, man *Manifest) error {
	man.Created = time.Now().UTC().Truncate(time.Second)
	if err := writeManifest(out, man); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := renameNoReplace(out, dest); err != nil {
		return err
	}
	man.Dir = dest
	return nil
}
