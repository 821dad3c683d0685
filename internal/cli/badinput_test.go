package cli

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/banger-sh/banger/client"
	"github.com/banger-sh/banger/internal/config"
	"github.com/banger-sh/banger/internal/daemon"
	"github.com/banger-sh/banger/internal/network"
	"github.com/banger-sh/banger/internal/paths"
	"github.com/banger-sh/banger/internal/store"
)

// flagBadInputs are invalid values of every flag that takes a value, by
// "COMMAND PATH --flag": each row is a command line (after "banger") that
// must fail with a message naming the flag. Boolean flags get their rows
// from boolBadValue; TestEveryFlagHasBadInput keeps this table complete.
// "idle" is a stopped VM and "default" an image (cliDaemon).
var flagBadInputs = map[string][][]string{
	"banger daemon logs --lines":       {{"daemon", "logs", "--lines", "-1"}, {"daemon", "logs", "--lines", "abc"}, {"daemon", "logs", "--lines", "99999999999999999999"}},
	"banger daemon stop --timeout":     {{"daemon", "stop", "--timeout", "-1s"}, {"daemon", "stop", "--timeout", "0s"}, {"daemon", "stop", "--timeout", "abc"}, {"daemon", "stop", "--timeout", "1e400h"}},
	"banger image build --mirror":      {{"image", "build", "img", "--mirror", "not a url"}, {"image", "build", "img", "--mirror", "gopher://x/"}, {"image", "build", "img", "--mirror", "-x"}},
	"banger image build --packages":    {{"image", "build", "img", "--packages", "a b"}, {"image", "build", "img", "--packages", "-oAPT::x=1"}, {"image", "build", "img", "--packages", "pkg;rm"}, {"image", "build", "img", "--packages", "päckage"}},
	"banger image build --size":        {{"image", "build", "img", "--size", "-1G"}, {"image", "build", "img", "--size", "NaN"}, {"image", "build", "img", "--size", "abc"}, {"image", "build", "img", "--size", "1e30G"}},
	"banger image build --suite":       {{"image", "build", "img", "--suite", "../../etc"}, {"image", "build", "img", "--suite", "bö"}, {"image", "build", "img", "--suite", "-v"}},
	"banger image import --kernel":     {{"image", "import", "imp", "--kernel", "/nonexistent/vmlinuz", "--rootfs", "/etc/passwd"}, {"image", "import", "imp", "--kernel", "/etc", "--rootfs", "/etc/passwd"}, {"image", "import", "imp", "--kernel", "", "--rootfs", "/etc/passwd"}},
	"banger image import --rootfs":     {{"image", "import", "imp", "--kernel", "/proc/self/exe", "--rootfs", "../../nonexistent"}, {"image", "import", "imp", "--kernel", "/proc/self/exe", "--rootfs", "/etc"}},
	"banger image import --initrd":     {{"image", "import", "imp", "--kernel", "/proc/self/exe", "--rootfs", "/etc/passwd", "--initrd", "/nonexistent"}, {"image", "import", "imp", "--kernel", "/proc/self/exe", "--rootfs", "/etc/passwd", "--initrd", "/etc"}},
	"banger image import --modules":    {{"image", "import", "imp", "--kernel", "/proc/self/exe", "--rootfs", "/etc/passwd", "--modules", "/nonexistent"}, {"image", "import", "imp", "--kernel", "/proc/self/exe", "--rootfs", "/etc/passwd", "--modules", "/etc/passwd"}},
	"banger image warm --disk":         {{"image", "warm", "default", "--disk", "NaN"}, {"image", "warm", "default", "--disk", "-4G"}, {"image", "warm", "default", "--disk", "４G"}},
	"banger image warm --mem":          {{"image", "warm", "default", "--mem", "-1"}, {"image", "warm", "default", "--mem", "99999999"}, {"image", "warm", "default", "--mem", "abc"}},
	"banger image warm --vcpu":         {{"image", "warm", "default", "--vcpu", "-1"}, {"image", "warm", "default", "--vcpu", "65"}, {"image", "warm", "default", "--vcpu", "1.5"}},
	"banger mcp --http":                {{"mcp", "--http", "not-an-address"}, {"mcp", "--http", "127.0.0.1:99999"}, {"mcp", "--http", "[::1"}},
	"banger run ls --limit":            {{"run", "ls", "--limit", "-1"}, {"run", "ls", "--limit", "ten"}, {"run", "ls", "--limit", "99999999999999999999"}},
	"banger run replay --env":          {{"run", "replay", "nope", "--env", "NOEQUALS"}, {"run", "replay", "nope", "--env", "=x"}},
	"banger vm cat --max":              {{"vm", "cat", "idle", "/etc/hostname", "--max", "-1"}, {"vm", "cat", "idle", "/etc/hostname", "--max", "abc"}, {"vm", "cat", "idle", "/etc/hostname", "--max", "99999999999999999999"}},
	"banger vm create --disk":          {{"vm", "create", "newvm", "--disk", "NaN"}, {"vm", "create", "newvm", "--disk", "-1G"}, {"vm", "create", "newvm", "--disk", "1e30G"}, {"vm", "create", "newvm", "--disk", "４G"}},
	"banger vm create --image":         {{"vm", "create", "newvm", "--image", "../../etc"}, {"vm", "create", "newvm", "--image", "imäge"}, {"vm", "create", "newvm", "--image", "a b"}},
	"banger vm create --mem":           {{"vm", "create", "newvm", "--mem", "-1"}, {"vm", "create", "newvm", "--mem", "1099511627776"}, {"vm", "create", "newvm", "--mem", "abc"}},
	"banger vm create --net":           {{"vm", "create", "newvm", "--net", "bogus"}, {"vm", "create", "newvm", "--net", "nät"}},
	"banger vm create --path":          {{"vm", "create", "newvm", "--workspace", ".", "--path", "relative"}, {"vm", "create", "newvm", "--workspace", ".", "--path", "/"}, {"vm", "create", "newvm", "--workspace", ".", "--path", "/root/../etc"}},
	"banger vm create --vcpu":          {{"vm", "create", "newvm", "--vcpu", "-1"}, {"vm", "create", "newvm", "--vcpu", "65"}, {"vm", "create", "newvm", "--vcpu", "2x"}},
	"banger vm create --workspace":     {{"vm", "create", "newvm", "--workspace", "/nonexistent/repo"}, {"vm", "create", "newvm", "--workspace", "/etc/passwd"}},
	"banger vm exec --cwd":             {{"vm", "exec", "--cwd", "relative", "idle", "--", "true"}, {"vm", "exec", "--cwd", "../..", "idle", "--", "true"}},
	"banger vm exec --env":             {{"vm", "exec", "--env", "NOEQUALS", "idle", "--", "true"}, {"vm", "exec", "--env", "=x", "idle", "--", "true"}},
	"banger vm put --mode":             {{"vm", "put", "idle", "/etc/hostname", "/tmp/x", "--mode", "999"}, {"vm", "put", "idle", "/etc/hostname", "/tmp/x", "--mode", "rw"}, {"vm", "put", "idle", "/etc/hostname", "/tmp/x", "--mode", "-1"}, {"vm", "put", "idle", "/etc/hostname", "/tmp/x", "--mode", ""}},
	"banger vm run --cwd":              {{"vm", "run", "--cwd", "relative", "--", "true"}},
	"banger vm run --disk":             {{"vm", "run", "--disk", "NaN", "--", "true"}, {"vm", "run", "--disk", "-1G", "--", "true"}},
	"banger vm run --env":              {{"vm", "run", "--env", "NOEQUALS", "--", "true"}},
	"banger vm run --export":           {{"vm", "run", "--export", "bogus", "--", "true"}, {"vm", "run", "--export", "file:", "--", "true"}},
	"banger vm run --image":            {{"vm", "run", "--image", "../../etc", "--", "true"}},
	"banger vm run --mem":              {{"vm", "run", "--mem", "-1", "--", "true"}, {"vm", "run", "--mem", "abc", "--", "true"}},
	"banger vm run --name":             {{"vm", "run", "--name", "Bad_Name", "--", "true"}, {"vm", "run", "--name", "../x", "--", "true"}, {"vm", "run", "--name", "dév", "--", "true"}},
	"banger vm run --net":              {{"vm", "run", "--net", "bogus", "--", "true"}},
	"banger vm run --path":             {{"vm", "run", "--path", "relative", ".", "--", "true"}},
	"banger vm run --timeout":          {{"vm", "run", "--timeout", "-1s", "--", "true"}, {"vm", "run", "--timeout", "abc", "--", "true"}, {"vm", "run", "--timeout", "999999h", "--", "true"}},
	"banger vm run --vcpu":             {{"vm", "run", "--vcpu", "-1", "--", "true"}, {"vm", "run", "--vcpu", "65", "--", "true"}},
	"banger vm set --mem":              {{"vm", "set", "idle", "--mem", "-1"}, {"vm", "set", "idle", "--mem", "127"}, {"vm", "set", "idle", "--mem", "abc"}},
	"banger vm set --net":              {{"vm", "set", "idle", "--net", "bogus"}},
	"banger vm set --vcpu":             {{"vm", "set", "idle", "--vcpu", "-1"}, {"vm", "set", "idle", "--vcpu", "65"}},
	"banger vm stop --timeout":         {{"vm", "stop", "idle", "--timeout", "-1s"}, {"vm", "stop", "idle", "--timeout", "0s"}, {"vm", "stop", "idle", "--timeout", "abc"}},
	"banger workspace export --branch": {{"workspace", "export", "idle", "--branch", "bad..name"}, {"workspace", "export", "idle", "--branch", "-x"}, {"workspace", "export", "idle", "--branch", "a b"}},
	"banger workspace export --out":    {{"workspace", "export", "idle", "--out", "/nonexistent/dir/x.patch"}, {"workspace", "export", "idle", "--out", ""}},
	"banger workspace prepare --path":  {{"workspace", "prepare", "idle", ".", "--path", "relative"}, {"workspace", "prepare", "idle", ".", "--path", "/"}},
}

// boolBadValue is given to every boolean flag: pflag must refuse it.
const boolBadValue = "maybe"

// flagsWithoutBadInput have no value that is invalid, with why.
var flagsWithoutBadInput = map[string]string{
	"--help": "cobra's own: no value",
}

// flagKey is the table key of a flag of a command.
func flagKey(c *cobra.Command, f *pflag.Flag) string { return c.CommandPath() + " --" + f.Name }

// allFlags lists every flag of every command, with a command line that
// reaches it (the command path, then the flag).
func allFlags() (keys []string, flags map[string]*pflag.Flag, paths map[string][]string) {
	flags, paths = map[string]*pflag.Flag{}, map[string][]string{}
	var walk func(c *cobra.Command, path []string)
	walk = func(c *cobra.Command, path []string) {
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			k := flagKey(c, f)
			keys = append(keys, k)
			flags[k], paths[k] = f, path
		})
		for _, s := range c.Commands() {
			walk(s, append(append([]string{}, path...), s.Name()))
		}
	}
	walk(newRoot(&env{}), nil)
	sort.Strings(keys)
	return keys, flags, paths
}

// TestEveryFlagHasBadInput: a flag added without a bad-input row (or a
// justified skip) fails here.
func TestEveryFlagHasBadInput(t *testing.T) {
	keys, flags, _ := allFlags()
	if len(keys) < 50 {
		t.Fatalf("only %d flags found", len(keys))
	}
	for _, k := range keys {
		if flags[k].Value.Type() == "bool" {
			continue
		}
		if _, skip := flagsWithoutBadInput["--"+flags[k].Name]; skip {
			continue
		}
		if len(flagBadInputs[k]) == 0 {
			t.Errorf("%s (%s) has no bad-input row in flagBadInputs", k, flags[k].Value.Type())
		}
	}
	for k := range flagBadInputs {
		if _, ok := flags[k]; !ok {
			t.Errorf("flagBadInputs names %s, which is not a flag", k)
		}
	}
}

// cliDaemon runs an in-process daemon (no network, no boots) on an
// isolated BANGER_HOME, with an image "default" that cannot boot (an
// empty directory, so a create that passes the checks fails loading it
// instead of building one) and a stopped VM "idle".
func cliDaemon(t *testing.T) (*client.Client, paths.Layout) {
	isolate(t)
	l, err := paths.FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Ensure(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	st, err := store.Open(ctx, l.StoreFile())
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(l.ImagesDir(), "0hostile")
	os.MkdirAll(dir, 0o755)
	if err := st.CreateImage(ctx, &store.Image{ID: "0hostile", Name: "default", Dir: dir, Digest: "none", Manifest: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	spec := []byte(`{"vcpus":1,"memory_mib":512,"disk_bytes":4294967296,"image_name":"default","backend":"qemu","net":"off"}`)
	if err := st.InsertVM(ctx, &store.VM{ID: "1d1e1d1e", Name: "idle", ImageID: "0hostile", State: "stopped", Spec: spec}); err != nil {
		t.Fatal(err)
	}
	st.Close()
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() {
		done <- daemon.Run(ctx, daemon.Options{Layout: l, Config: config.Defaults(), NoNetwork: true, Ready: ready, LogTo: io.Discard})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("daemon: %v", err)
	case <-time.After(15 * time.Second):
		t.Fatal("daemon not ready")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Error("daemon did not stop")
		}
	})
	return client.New(l.Socket()), l
}

// cliState is what a command could leave behind (see the daemon's
// hostState): rows, files below the daemon's top-level dirs, links with
// banger's prefixes, child processes, and files in the test's directory.
func cliState(t *testing.T, c *client.Client, l paths.Layout) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var b strings.Builder
	vms, err := c.ListVMs(ctx)
	if err != nil {
		t.Fatalf("list vms: %v", err)
	}
	for _, v := range vms {
		fmt.Fprintf(&b, "vm %s %s\n", v.Name, v.State)
	}
	ims, _ := c.ListImages(ctx)
	for _, im := range ims {
		fmt.Fprintf(&b, "image %s\n", im.Name)
	}
	runs, _ := c.ListRuns(ctx, 0)
	for _, r := range runs {
		fmt.Fprintf(&b, "run %s %s\n", r.ID, r.State)
	}
	skip := map[string]bool{l.StoreFile(): true, l.StoreFile() + "-wal": true, l.StoreFile() + "-shm": true, l.DaemonLog(): true, l.DaemonOutput(): true}
	cwd, _ := os.Getwd()
	for _, root := range []string{l.State, l.Runtime, l.Cache, l.Config, cwd} {
		filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			rel, _ := filepath.Rel(root, p)
			if err == nil && !skip[p] && (!d.IsDir() || strings.Contains(rel, "/")) {
				fmt.Fprintf(&b, "file %s\n", p)
			}
			return nil
		})
	}
	links, _ := network.ListLinks()
	cfg := config.Defaults()
	for _, k := range links {
		if n := k.Attrs().Name; strings.HasPrefix(n, cfg.Network.TapPrefix) || n == cfg.Network.Bridge {
			fmt.Fprintf(&b, "link %s\n", n)
		}
	}
	var kids []string
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", os.Getpid()))
	for _, tk := range tasks {
		d, _ := os.ReadFile(tk)
		kids = append(kids, strings.Fields(string(d))...)
	}
	sort.Strings(kids)
	fmt.Fprintf(&b, "children %s\n", strings.Join(kids, " "))
	return b.String()
}

// TestFlagBadInput runs every row of flagBadInputs (and boolBadValue for
// every boolean flag) against a real in-process daemon: each fails (not
// exit 0) with a message naming the flag, and leaves nothing behind.
func TestFlagBadInput(t *testing.T) {
	c, l := cliDaemon(t)
	before := cliState(t, c, l)
	keys, flags, paths := allFlags()
	type row struct {
		key  string
		args []string
	}
	var rows []row
	for _, k := range keys {
		if flags[k].Value.Type() == "bool" {
			rows = append(rows, row{k, append(append([]string{}, paths[k]...), "--"+flags[k].Name+"="+boolBadValue)})
			continue
		}
		for _, a := range flagBadInputs[k] {
			rows = append(rows, row{k, a})
		}
	}
	for _, r := range rows {
		t.Run(strings.Join(r.args, " "), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var out, errb strings.Builder
			code := Run(ctx, r.args, strings.NewReader(""), &out, &errb)
			name := flags[r.key].Name
			if code == 0 {
				t.Fatalf("banger %q: exit 0 (stdout %q), want an error naming --%s", r.args, out.String(), name)
			}
			if !strings.Contains(strings.ToLower(errb.String()), strings.ToLower(name)) {
				t.Errorf("banger %q: exit %d, the message does not name %s:\n%s", r.args, code, name, errb.String())
			}
			var got string
			for i := 0; i < 50; i++ {
				if got = cliState(t, c, l); got == before {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if got != before {
				t.Fatalf("banger %q left something behind:\n%s", r.args, stateDiff(before, got))
			}
		})
	}
}

// stateDiff lists the lines only one of two states has.
func stateDiff(before, after string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	b, a := in(before), in(after)
	var out []string
	for l := range b {
		if !a[l] {
			out = append(out, "- "+l)
		}
	}
	for l := range a {
		if !b[l] {
			out = append(out, "+ "+l)
		}
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}
