package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/image/imagetest"
	"github.com/banger-sh/banger/internal/system"
)

// warmTemplate makes sure the default image has a template for the
// default shape and returns its directory.
func warmTemplate(t *testing.T, h *harness) string {
	t.Helper()
	// --json is NDJSON events: progress lines, then the result.
	lines := strings.Split(strings.TrimSpace(h.must(t, "image", "warm", "--json", "default")), "\n")
	var ev struct {
		Result *api.Template `json:"result"`
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &ev); err != nil || ev.Result == nil {
		t.Fatalf("image warm --json: last line %q: %v", lines[len(lines)-1], err)
	}
	return filepath.Join(h.home, "cache", "templates", ev.Result.Key)
}

func dirDigests(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		// A file that is one hole (the 4 GiB work-disk slot) stays so
		// until written: checked without hashing 4 GiB of zeros.
		if _, err := f.Seek(0, unix.SEEK_DATA); errors.Is(err, unix.ENXIO) {
			st, _ := f.Stat()
			out[e.Name()] = fmt.Sprintf("all hole, %d bytes", st.Size())
			f.Close()
			continue
		}
		h := sha256.New()
		io.Copy(h, f)
		f.Close()
		out[e.Name()] = hex.EncodeToString(h.Sum(nil))
	}
	return out
}

func TestWarmClonesAreDistinct(t *testing.T) {
	h := env(t)
	dir := warmTemplate(t, h)
	before := dirDigests(t, dir)
	type guest struct{ rnd, uuid, host, mid, mac, clock string }
	var gs []guest
	for _, n := range []string{"clone-a", "clone-b"} {
		h.must(t, "vm", "create", n)
		defer h.run(t, nil, "vm", "delete", "--force", n)
		if v := vmInfo(t, h, n); v.Boot != "warm" {
			t.Fatalf("%s booted %q, want warm", n, v.Boot)
		}
		out := h.must(t, "vm", "exec", n, "--", "sh", "-c",
			"head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; cat /proc/sys/kernel/random/uuid; hostname; cat /etc/machine-id; cat /sys/class/net/eth0/address; date +%s.%N")
		f := strings.Split(strings.TrimSpace(out), "\n")
		if len(f) != 6 {
			t.Fatalf("%s: %q", n, out)
		}
		gs = append(gs, guest{f[0], f[1], f[2], f[3], f[4], f[5]})
		guestNow, _ := strconv.ParseFloat(f[5], 64)
		if d := float64(time.Now().UnixNano())/1e9 - guestNow; d > 1.5 || d < -1 {
			t.Errorf("%s clock is %.2f s off the host's", n, d)
		}
	}
	a, b := gs[0], gs[1]
	if a.rnd == b.rnd || a.uuid == b.uuid || a.host == b.host || a.mid == b.mid || a.mac == b.mac {
		t.Fatalf("clones not distinct:\n%+v\n%+v", a, b)
	}
	if a.host != "clone-a" || b.host != "clone-b" || len(a.mid) != 32 {
		t.Fatalf("identity not applied: %+v %+v", a, b)
	}
	h.must(t, "vm", "exec", "clone-a", "--", "sh", "-c", "echo only-in-a > /root/mark; sync")
	if r, code := h.run(t, nil, "vm", "exec", "clone-b", "--", "cat", "/root/mark"); code == 0 {
		t.Fatalf("clone-b sees clone-a's file: %q", r.stdout)
	}
	// Exit codes, quoting and stdin behave as on a cold VM.
	for _, tc := range []struct {
		argv []string
		code int
		out  string
	}{
		{[]string{"sh", "-c", "exit 42"}, 42, ""},
		{[]string{"false"}, 1, ""},
		{[]string{"sh", "-c", `echo "a b"; exit 3`}, 3, "a b\n"},
		{[]string{"sh", "-c", "kill -9 $$"}, 137, ""},
	} {
		r, code := h.run(t, nil, append([]string{"vm", "exec", "clone-a", "--"}, tc.argv...)...)
		if code != tc.code || (tc.out != "" && r.stdout != tc.out) {
			t.Errorf("warm %q: exit %d %q", tc.argv, code, r.stdout)
		}
	}
	if r, code := h.run(t, strings.NewReader("hi\n"), "vm", "run", "--rm", "--", "cat"); code != 0 || r.stdout != "hi\n" {
		t.Errorf("warm vm run stdin: exit %d %q %s", code, r.stdout, r.stderr)
	}
	// --net off: a warm clone too, with its NIC slot unplugged and down.
	h.must(t, "vm", "create", "clone-off", "--net", "off")
	defer h.run(t, nil, "vm", "delete", "--force", "clone-off")
	if v := vmInfo(t, h, "clone-off"); v.Boot != "warm" || v.Net != "off" || v.IP != "" || v.Tap != "" {
		t.Errorf("--net off clone: boot %s, net %s, ip %q, tap %q", v.Boot, v.Net, v.IP, v.Tap)
	}
	if out := h.must(t, "vm", "exec", "clone-off", "--", "sh", "-c", "ip -4 -o addr show dev eth0; cat /sys/class/net/eth0/operstate"); strings.TrimSpace(out) != "down" {
		t.Errorf("--net off clone's eth0: %q", out)
	}
	// sshd host keys are per clone (generated on first use).
	ka := h.must(t, "vm", "ssh", "clone-a", "--", "cat", "/etc/ssh/ssh_host_ed25519_key.pub")
	kb := h.must(t, "vm", "ssh", "clone-b", "--", "cat", "/etc/ssh/ssh_host_ed25519_key.pub")
	if ka == kb {
		t.Fatal("clones share an sshd host key")
	}
	after := dirDigests(t, dir)
	for name, d := range before {
		if after[name] != d {
			t.Errorf("template file %s changed while clones ran", name)
		}
	}
}

func TestWarmFallsBackToColdWhenTemplateDamaged(t *testing.T) {
	h := env(t)
	dir := warmTemplate(t, h)
	defer h.run(t, nil, "image", "warm", "default") // leave a good template for the next tests
	for _, damage := range []func(string) error{
		func(d string) error { return os.Truncate(filepath.Join(d, "state"), 100) },
		func(d string) error { return os.Remove(filepath.Join(d, "ram")) },
	} {
		if err := damage(dir); err != nil {
			t.Fatal(err)
		}
		r, code := h.run(t, nil, "vm", "run", "--rm", "--name", "fallback", "--", "echo", "ok")
		if code != 0 || r.stdout != "ok\n" {
			t.Fatalf("vm run with a damaged template: exit %d %q %s", code, r.stdout, r.stderr)
		}
		if !strings.Contains(r.stderr, "template") {
			t.Errorf("no warning about the damaged template:\n%s", r.stderr)
		}
		h.must(t, "image", "warm", "default") // rebuild for the next damage
	}
	h.assertNoLeftovers(t)
}

func TestWarmTemplateNotUsedAfterImageRebuild(t *testing.T) {
	h := env(t)
	img := imagetest.TestImage(t)
	tmp := t.TempDir()
	rootfs := filepath.Join(tmp, "rootfs.ext4")
	if _, err := system.Run(context.Background(), "cp", "--sparse=always", filepath.Join(img, "rootfs.ext4"), rootfs); err != nil {
		t.Fatal(err)
	}
	imp := func() {
		h.must(t, "image", "import", "rb", "--kernel", filepath.Join(img, "vmlinux"), "--rootfs", rootfs, "--modules", filepath.Join(img, "modules"))
	}
	imp()
	h.must(t, "image", "warm", "rb")
	h.must(t, "vm", "create", "rb1", "--image", "rb")
	if v := vmInfo(t, h, "rb1"); v.Boot != "warm" {
		t.Fatalf("rb1 booted %s", v.Boot)
	}
	h.must(t, "vm", "delete", "--force", "rb1")
	h.must(t, "image", "rm", "rb")
	// "Rebuild": same name, different content (a label change).
	if _, err := system.Run(context.Background(), "tune2fs", "-L", fmt.Sprintf("rb-%d", time.Now().UnixNano()%1e6), rootfs); err != nil {
		t.Fatal(err)
	}
	imp()
	defer h.run(t, nil, "image", "rm", "rb")
	h.must(t, "vm", "create", "rb2", "--image", "rb")
	defer h.run(t, nil, "vm", "delete", "--force", "rb2")
	if v := vmInfo(t, h, "rb2"); v.Boot != "cold" {
		t.Fatalf("after the image was rebuilt the VM booted %s from the old template", v.Boot)
	}
}

func daemonLog(t *testing.T, h *harness) string {
	b, err := os.ReadFile(filepath.Join(h.home, "state", "bangerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// servedBySpare reports whether the daemon's log says that the VM named
// was made from a spare clone.
func servedBySpare(t *testing.T, h *harness, name string) bool {
	for _, l := range strings.Split(daemonLog(t, h), "\n") {
		if strings.Contains(l, `"msg":"vm running (warm, spare clone)"`) && strings.Contains(l, `"vm":"`+name+`"`) {
			return true
		}
	}
	return false
}

// waitSpare waits until the template key has a ready spare clone.
func waitSpare(t *testing.T, h *harness, key string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		var im api.Image
		if err := json.Unmarshal([]byte(h.must(t, "image", "show", "--json", "default")), &im); err != nil {
			t.Fatal(err)
		}
		for _, tp := range im.Templates {
			if tp.Key == key && tp.Spare == "ready" {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ready spare clone of template %s after 2 min; daemon log:\n%s", key, h.daemonLogTail())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Spare clones (vm.spares): a create takes a clone restored ahead of
// demand, and still gets its own identity; workspaces work through them;
// a daemon crash or stop leaves no spare behind.
func TestWarmSpares(t *testing.T) {
	h := env(t)
	h.withSpares(t, 1)
	dir := warmTemplate(t, h) // image warm also makes the spare
	key := filepath.Base(dir)
	before := dirDigests(t, dir)
	type guest struct{ rnd, mid, mac, host, addr, etc string }
	var gs []guest
	for _, n := range []string{"sp-a", "sp-b"} {
		waitSpare(t, h, key)
		r, code := h.run(t, nil, "vm", "create", n)
		if code != 0 {
			t.Fatalf("vm create %s: exit %d %s", n, code, r.stderr)
		}
		defer h.run(t, nil, "vm", "delete", "--force", n)
		if !servedBySpare(t, h, n) {
			t.Fatalf("%s was not served by a spare clone:%s", n, h.daemonLogTail())
		}
		v := vmInfo(t, h, n)
		out := h.must(t, "vm", "exec", n, "--", "sh", "-c",
			"head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; cat /etc/machine-id; cat /sys/class/net/eth0/address; hostname; ip -4 -o addr show eth0 | awk '{print $4}' | tr '\\n' ' '; echo; cat /etc/resolv.conf /etc/hosts | tr '\\n' ' '")
		f := strings.Split(strings.TrimSpace(out), "\n")
		if len(f) != 6 {
			t.Fatalf("%s: %q", n, out)
		}
		g := guest{f[0], f[1], f[2], f[3], strings.TrimSpace(f[4]), f[5]}
		// The spare's throw-away identity is gone: only the VM's own.
		if g.host != n || g.mac != v.MAC || g.addr != v.IP+"/24" || strings.Contains(g.etc, "192.0.2.") || strings.Contains(g.etc, "spare") || !strings.Contains(g.etc, n+".vm") {
			t.Fatalf("%s (mac %s, ip %s) has identity %+v", n, v.MAC, v.IP, g)
		}
		gs = append(gs, g)
	}
	a, b := gs[0], gs[1]
	if a.rnd == b.rnd || a.mid == b.mid || a.mac == b.mac || a.addr == b.addr {
		t.Fatalf("spare-served clones not distinct:\n%+v\n%+v", a, b)
	}
	// A create that fails before using the spare (the name is taken)
	// leaves it ready for the next one.
	waitSpare(t, h, key)
	if r, code := h.run(t, nil, "vm", "create", "sp-a"); code == 0 {
		t.Fatalf("second vm create sp-a succeeded: %s", r.stdout)
	}
	var im api.Image
	if err := json.Unmarshal([]byte(h.must(t, "image", "show", "--json", "default")), &im); err != nil {
		t.Fatal(err)
	}
	for _, tp := range im.Templates {
		if tp.Key == key && tp.Spare != "ready" {
			t.Errorf("after a refused create the spare is %q, want ready", tp.Spare)
		}
	}
	// Its network is its own: ssh by name reaches it.
	if out := h.must(t, "vm", "ssh", "sp-a", "--", "hostname"); strings.TrimSpace(out) != "sp-a" {
		t.Fatalf("vm ssh sp-a: %q", out)
	}
	// A workspace run takes a spare too: the work disk is copied into the
	// slot the spare's VMM holds.
	waitSpare(t, h, key)
	repo := fixtureRepo(t)
	r, code := h.run(t, nil, "vm", "run", "--rm", repo, "--", "git", "status", "--porcelain")
	if want := strings.ReplaceAll(git(t, repo, "status", "--porcelain"), "?? notes.txt\n", ""); code != 0 || r.stdout != want {
		t.Fatalf("workspace run on a spare: exit %d\n%s\nwant\n%s\n%s", code, r.stdout, want, r.stderr)
	}
	if n := strings.Count(daemonLog(t, h), `"msg":"vm running (warm, spare clone)"`); n != 3 {
		t.Fatalf("the workspace run was not served by a spare clone (%d spare-served creates, want 3):%s", n, h.daemonLogTail())
	}
	// kill -9 of the daemon with a ready spare: the next daemon removes
	// its process, directories and tap.
	waitSpare(t, h, key)
	pid := daemonPID(t, h)
	syscall.Kill(pid, syscall.SIGKILL)
	waitReaped(t, pid)
	h.must(t, "daemon", "start")
	h.assertNoLeftovers(t, "sp-a", "sp-b")
	h.assertOnlyVMTaps(t, "sp-a", "sp-b")
	// daemon stop kills a spare.
	h.must(t, "vm", "run", "--rm", "--", "true") // makes the next spare
	waitSpare(t, h, key)
	h.must(t, "daemon", "stop")
	h.must(t, "daemon", "start")
	h.assertNoLeftovers(t, "sp-a", "sp-b")
	after := dirDigests(t, dir)
	for name, d := range before {
		if after[name] != d {
			t.Errorf("template file %s changed", name)
		}
	}
}

// The first cold boot of a shape builds its template in the background;
// the next create of the shape, even right after, is warm.
func TestWarmTemplateBuiltAfterFirstColdBoot(t *testing.T) {
	h := env(t)
	img := imagetest.TestImage(t)
	h.must(t, "image", "import", "auto", "--kernel", filepath.Join(img, "vmlinux"), "--rootfs", filepath.Join(img, "rootfs.ext4"), "--modules", filepath.Join(img, "modules"))
	defer h.run(t, nil, "image", "rm", "auto")
	// A shape no other test uses: its template can only come from this run.
	if out := h.must(t, "vm", "run", "--rm", "--image", "auto", "--mem", "320", "--", "echo", "cold"); out != "cold\n" {
		t.Fatalf("first run: %q", out)
	}
	// With a CPU to spare the template was built alongside that boot, and
	// a create right after waits for it; else it comes after the boot.
	if runtime.NumCPU() == 1 {
		deadline := time.Now().Add(3 * time.Minute)
		for {
			var im api.Image
			if err := json.Unmarshal([]byte(h.must(t, "image", "show", "--json", "auto")), &im); err != nil {
				t.Fatal(err)
			}
			found := false
			for _, tp := range im.Templates { // the same digest as default's: its templates show too
				found = found || tp.MemoryMiB == 320
			}
			if found {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no template built after the first cold boot: %+v%s", im.Templates, h.daemonLogTail())
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	h.must(t, "vm", "create", "auto2", "--image", "auto", "--mem", "320")
	defer h.run(t, nil, "vm", "delete", "--force", "auto2")
	if v := vmInfo(t, h, "auto2"); v.Boot != "warm" {
		t.Fatalf("second create of the shape booted %s", v.Boot)
	}
}
