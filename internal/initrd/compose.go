package initrd

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// ModulesDir is where Compose puts the kernel modules inside the initrd,
// and where the agent looks for them.
const ModulesDir = "lib/modules/banger"

// LoadOrderFile names, inside ModulesDir, the file that lists the modules
// to load, one file name per line, in load order.
const LoadOrderFile = "load-order"

// Compose writes to out (atomically: a temporary file renamed into place)
// an initrd holding agentBinary as /init and, when modulesDir is not empty,
// the regular files of modulesDir under /lib/modules/banger/. modulesDir
// must contain a load-order file, and every module it names must exist.
func Compose(out string, modulesDir string, agentBinary []byte) error {
	if len(agentBinary) == 0 {
		return fmt.Errorf("compose initrd %s: empty agent binary", out)
	}
	var buf bytes.Buffer
	w := NewWriter(&buf)
	if err := writeBase(w, agentBinary); err != nil {
		return fmt.Errorf("compose initrd %s: %w", out, err)
	}
	if modulesDir != "" {
		if err := writeModules(w, modulesDir); err != nil {
			return fmt.Errorf("compose initrd %s: %w", out, err)
		}
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("compose initrd %s: %w", out, err)
	}
	return writeAtomic(out, buf.Bytes())
}

func writeBase(w *Writer, agent []byte) error {
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp", "newroot", "root", "lib", "lib/modules", ModulesDir} {
		perm := fs.FileMode(0o755)
		if d == "tmp" {
			perm = 0o777 | fs.ModeSticky
		}
		if d == "root" {
			perm = 0o700
		}
		if err := w.Dir(d, perm); err != nil {
			return err
		}
	}
	if err := w.CharDev("dev/console", 0o600, 5, 1); err != nil {
		return err
	}
	return w.File("init", 0o755, agent)
}

func writeModules(w *Writer, dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read modules: %w", err)
	}
	present := map[string]bool{}
	var names []string
	for _, e := range ents {
		if e.Type().IsRegular() {
			present[e.Name()] = true
			names = append(names, e.Name())
		}
	}
	if !present[LoadOrderFile] {
		return fmt.Errorf("modules dir %s has no %s file", dir, LoadOrderFile)
	}
	order, err := os.ReadFile(filepath.Join(dir, LoadOrderFile))
	if err != nil {
		return err
	}
	for _, m := range ParseLoadOrder(order) {
		if strings.Contains(m, "/") || !present[m] {
			return fmt.Errorf("%s names %q, which is not a file in %s", LoadOrderFile, m, dir)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		data, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			return err
		}
		if err := w.File(ModulesDir+"/"+n, 0o644, data); err != nil {
			return err
		}
	}
	return nil
}

// ParseLoadOrder returns the module file names of a load-order file:
// one per line, blank lines and lines starting with '#' ignored.
func ParseLoadOrder(b []byte) []string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		out = append(out, l)
	}
	return out
}

func writeAtomic(out string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-*")
	if err != nil {
		return fmt.Errorf("compose initrd %s: %w", out, err)
	}
	tmp := f.Name()
	fail := func(err error) error {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("compose initrd %s: %w", out, err)
	}
	if _, err := f.Write(data); err != nil {
		return fail(err)
	}
	if err := f.Chmod(0o644); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, out); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("compose initrd %s: %w", out, err)
	}
	return nil
}
