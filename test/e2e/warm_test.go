package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"banger/internal/api"
	"banger/internal/image/imagetest"
	"banger/internal/system"
)

// warmTemplate makes sure the default image has a template for the
// default shape and returns its directory.
func warmTemplate(t *testing.T, h *harness) string {
	t.Helper()
	var tpl api.Template
	if err := json.Unmarshal([]byte(h.must(t, "image", "warm", "--json", "default")), &tpl); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(h.home, "cache", "templates", tpl.Key)
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
