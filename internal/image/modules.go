package image

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/system"
)

// guestModules are the kernel modules the guest needs before its root file
// system is mounted: virtio transports, the root disk, the console and
// serial ports (the agent's channel), entropy, networking, vsock. Modules
// that the kernel has built in are skipped; each module's dependencies are
// added before it. This is the one list to edit when a feature needs a
// driver.
var guestModules = []string{
	"virtio_ring", "virtio", "virtio_mmio",
	"virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
	"virtio_blk", "virtio_console", "virtio-rng",
	"failover", "net_failover", "virtio_net",
	"vsock", "vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport",
}

// GuestModules returns the modules every built image carries (before
// dependency resolution), in the order they are wanted.
func GuestModules() []string { return append([]string(nil), guestModules...) }

// moduleName normalises a module file name or path to the kernel's module
// name: base name without .ko(.xz|.zst|.gz), '-' as '_'.
func moduleName(s string) string {
	s = filepath.Base(s)
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		s = strings.TrimSuffix(s, ext)
	}
	s = strings.TrimSuffix(s, ".ko")
	return strings.ReplaceAll(s, "-", "_")
}

// moduleIndex is what modules.dep and modules.builtin say about a kernel.
type moduleIndex struct {
	path    map[string]string   // module name -> path relative to the modules dir
	deps    map[string][]string // module name -> dependency names, as modules.dep lists them
	builtin map[string]bool     // module names built into the kernel
}

// parseModulesDep reads modules.dep ("path: dep-path dep-path ...").
func parseModulesDep(r io.Reader, idx *moduleIndex) error {
	if idx.path == nil {
		idx.path = map[string]string{}
		idx.deps = map[string][]string{}
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		mod, rest, ok := strings.Cut(text, ":")
		if !ok {
			return fmt.Errorf("modules.dep line %d: no colon: %q", line, text)
		}
		name := moduleName(mod)
		idx.path[name] = strings.TrimSpace(mod)
		var deps []string
		for _, d := range strings.Fields(rest) {
			deps = append(deps, moduleName(d))
		}
		idx.deps[name] = deps
	}
	return sc.Err()
}

// parseModulesBuiltin reads modules.builtin (one path per line).
func parseModulesBuiltin(r io.Reader, idx *moduleIndex) error {
	if idx.builtin == nil {
		idx.builtin = map[string]bool{}
	}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if t := strings.TrimSpace(sc.Text()); t != "" {
			idx.builtin[moduleName(t)] = true
		}
	}
	return sc.Err()
}

// resolveLoadOrder returns the modules to load for the wanted names, each
// after its dependencies, without built-in modules and without duplicates.
// It also returns the wanted names that are built in.
func resolveLoadOrder(idx *moduleIndex, wanted []string) (order []string, builtin []string, err error) {
	state := map[string]int{} // 0 unvisited, 1 visiting, 2 done
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		switch state[name] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("module dependency cycle: %s", strings.Join(append(chain, name), " -> "))
		}
		if idx.builtin[name] {
			state[name] = 2
			return nil
		}
		if _, ok := idx.path[name]; !ok {
			if len(chain) > 0 {
				return errdefs.NotFound(fmt.Sprintf("module %s (needed by %s) is neither in modules.dep nor built in", name, chain[len(chain)-1]))
			}
			return errdefs.NotFound(fmt.Sprintf("module %s is neither in modules.dep nor built in", name))
		}
		state[name] = 1
		// modules.dep lists dependencies with the ones to load last first
		// (modprobe walks the list backwards).
		deps := idx.deps[name]
		for i := len(deps) - 1; i >= 0; i-- {
			if err := visit(deps[i], append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, name)
		return nil
	}
	for _, w := range wanted {
		n := moduleName(w)
		if idx.builtin[n] {
			builtin = append(builtin, n)
			continue
		}
		if err := visit(n, nil); err != nil {
			return nil, nil, err
		}
	}
	return order, builtin, nil
}

// installModules resolves the wanted modules in the kernel's module tree
// (lib/modules/<release>), copies them flat and uncompressed into outDir,
// and writes outDir/load-order with one file name per line. It returns the
// load order (file names). When the tree has no modules.dep (Debian's
// package leaves it to depmod at install time), depmod -b generates it in
// the scratch tree.
func installModules(ctx context.Context, root, release, modDir string, wanted []string, outDir string) ([]string, error) {
	depFile := filepath.Join(modDir, "modules.dep")
	if _, err := os.Stat(depFile); errors.Is(err, fs.ErrNotExist) {
		// depmod -b BASE looks in BASE/lib/modules/<release>.
		base := strings.TrimSuffix(modDir, filepath.Join("lib", "modules", release))
		if base == modDir {
			return nil, fmt.Errorf("modules directory %s is not <base>/lib/modules/%s", modDir, release)
		}
		if _, err := system.Run(ctx, "depmod", "-b", filepath.Clean(base), release); err != nil {
			return nil, fmt.Errorf("generate modules.dep: %w", err)
		}
	}
	var idx moduleIndex
	for _, f := range []struct {
		name  string
		parse func(io.Reader, *moduleIndex) error
	}{{"modules.dep", parseModulesDep}, {"modules.builtin", parseModulesBuiltin}} {
		data, err := os.ReadFile(filepath.Join(modDir, f.name))
		if err != nil {
			return nil, fmt.Errorf("kernel modules: %w", err)
		}
		if err := f.parse(bytes.NewReader(data), &idx); err != nil {
			return nil, fmt.Errorf("kernel modules: %w", err)
		}
	}
	order, _, err := resolveLoadOrder(&idx, wanted)
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", release, err)
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return nil, err
	}
	var files []string
	seen := map[string]string{}
	for _, name := range order {
		src := filepath.Join(modDir, idx.path[name])
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(filepath.Base(src), ".xz"), ".zst"), ".gz")
		if other, dup := seen[base]; dup {
			return nil, fmt.Errorf("modules %s and %s share the file name %s", other, name, base)
		}
		seen[base] = name
		if err := copyModule(ctx, src, filepath.Join(outDir, base)); err != nil {
			return nil, err
		}
		files = append(files, base)
	}
	if err := writeLoadOrder(filepath.Join(outDir, "load-order"), files); err != nil {
		return nil, err
	}
	return files, nil
}

func writeLoadOrder(path string, files []string) error {
	var b strings.Builder
	for _, f := range files {
		b.WriteString(f)
		b.WriteByte('\n')
	}
	return writeFileAtomic(path, []byte(b.String()), 0o644)
}

// ReadLoadOrder reads an image's modules/load-order.
func ReadLoadOrder(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return out, nil
}

// copyModule copies one module, decompressing .ko.xz/.ko.zst/.ko.gz.
func copyModule(ctx context.Context, src, dst string) error {
	var data []byte
	var err error
	switch {
	case strings.HasSuffix(src, ".xz"):
		data, err = system.Run(ctx, "xz", "-dc", "--", src)
	case strings.HasSuffix(src, ".zst"):
		data, err = system.Run(ctx, "zstd", "-dcq", "--", src)
	case strings.HasSuffix(src, ".gz"):
		var f *os.File
		if f, err = os.Open(src); err == nil {
			var zr *gzip.Reader
			if zr, err = gzip.NewReader(f); err == nil {
				data, err = io.ReadAll(zr)
			}
			f.Close()
		}
	default:
		data, err = os.ReadFile(src)
	}
	if err != nil {
		return fmt.Errorf("module %s: %w", src, err)
	}
	if !bytes.HasPrefix(data, []byte("\x7fELF")) {
		return fmt.Errorf("module %s is not an ELF object after decompression", src)
	}
	return writeFileAtomic(dst, data, 0o644)
}
