package cli

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/system"
)

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{
		"plain": "plain", "": "''", "a b": "'a b'", "it's": `'it'\''s'`, "exit 42": "'exit 42'",
		"$HOME": "'$HOME'", "a;b": "'a;b'", "/usr/bin/x": "/usr/bin/x", `"a b"`: `'"a b"'`,
	} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %s, want %s", in, got, want)
		}
	}
}

// TestSSHArgvKeepsArgumentBoundaries pins the seed's fix: the remote
// command is one argument of quoted words.
func TestSSHArgvKeepsArgumentBoundaries(t *testing.T) {
	argv := sshArgv("/k", "/kh", "root", "10.0.0.2", false, []string{"sh", "-c", "exit 42"})
	tail := argv[len(argv)-3:]
	if !reflect.DeepEqual(tail, []string{"--", "root@10.0.0.2", "sh -c 'exit 42'"}) {
		t.Fatalf("argv tail %q", tail)
	}
	argv = sshArgv("/k", "/kh", "root", "10.0.0.2", true, nil)
	if !reflect.DeepEqual(argv[len(argv)-3:], []string{"-t", "--", "root@10.0.0.2"}) {
		t.Fatalf("interactive argv %q", argv)
	}
}

// TestCheckSSHInfo: what the daemon returns reaches ssh's command line
// only when it is a user name, an IP address and two plain absolute paths
// (a fake daemon's "-oProxyCommand=..." user would otherwise be an option).
func TestCheckSSHInfo(t *testing.T) {
	good := api.SSHInfo{Host: "172.30.0.2", User: "root", Key: "/s/ssh/id_ed25519", KnownHosts: "/s/vms/x/known_hosts"}
	if err := checkSSHInfo(good); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []func(*api.SSHInfo){
		func(i *api.SSHInfo) { i.User = "-oProxyCommand=touch /tmp/x" },
		func(i *api.SSHInfo) { i.User = "root@evil" },
		func(i *api.SSHInfo) { i.User = "" },
		func(i *api.SSHInfo) { i.Host = "-oProxyCommand=x" },
		func(i *api.SSHInfo) { i.Host = "dev.vm" },
		func(i *api.SSHInfo) { i.Host = "10.0.0.2 -v" },
		func(i *api.SSHInfo) { i.Key = "relative/key" },
		func(i *api.SSHInfo) { i.KnownHosts = "/a b" },
		func(i *api.SSHInfo) { i.KnownHosts = "/kh\nProxyCommand x" },
		func(i *api.SSHInfo) { i.Key = "/a/../etc/shadow" },
	} {
		i := good
		bad(&i)
		if err := checkSSHInfo(i); err == nil {
			t.Errorf("accepted %+v", i)
		}
	}
}

// sshG runs `ssh -G argv...` (the effective configuration, no connection)
// in a private mount namespace where root's home is home: ssh finds its
// ~/.ssh/config there (through the passwd entry, not $HOME).
func sshG(t *testing.T, home string, argv []string) string {
	t.Helper()
	type result struct {
		out string
		err error
	}
	ch := make(chan result)
	go func() {
		// This thread's mount namespace becomes the test's own; the
		// thread is never unlocked, so Go discards it with the goroutine.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			ch <- result{err: err}
			return
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			ch <- result{err: err}
			return
		}
		if err := unix.Mount(home, "/root", "", unix.MS_BIND, ""); err != nil {
			ch <- result{err: err}
			return
		}
		out, err := system.Run(context.Background(), append([]string{"ssh", "-G"}, argv[1:]...)...)
		ch <- result{string(out), err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.out
}

// TestSSHIgnoresUserConfig: a ~/.ssh/config whose Host * forwards the
// agent, X11 and ports, sends environment variables, runs a local command,
// proxies, shares connections, adds identities and relaxes host key
// checking changes nothing of what 'vm ssh' runs.
func TestSSHIgnoresUserConfig(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a mount namespace to give ssh another ~/.ssh/config)")
	}
	if _, err := system.LookPath("ssh"); err != nil {
		t.Fatal(err)
	}
	home := t.TempDir()
	os.MkdirAll(filepath.Join(home, ".ssh"), 0o700)
	os.WriteFile(filepath.Join(home, ".ssh", "config"), []byte(`Host *
  ForwardAgent yes
  ForwardX11 yes
  ForwardX11Trusted yes
  LocalForward 127.0.0.1:5555 127.0.0.1:22
  RemoteForward 127.0.0.1:6666 127.0.0.1:22
  DynamicForward 127.0.0.1:7777
  SendEnv AWS_SECRET_ACCESS_KEY
  SetEnv LEAK=1
  PermitLocalCommand yes
  LocalCommand touch /tmp/pwned
  ControlMaster auto
  ControlPath /tmp/ctl-%r@%h
  ProxyCommand nc %h %p
  IdentityFile ~/.ssh/id_secret
  IdentityAgent /tmp/agent.sock
  GSSAPIDelegateCredentials yes
  StrictHostKeyChecking no
  UserKnownHostsFile /tmp/kh
  User attacker
  Port 2222
`), 0o600)
	// Control: ssh in that namespace reads that file.
	if plain := sshG(t, home, []string{"ssh", "root@10.0.0.2"}); !strings.Contains(plain, "forwardagent yes") {
		t.Fatalf("control: the hostile config was not read:\n%s", plain)
	}
	key, kh := filepath.Join(t.TempDir(), "id_ed25519"), filepath.Join(t.TempDir(), "known_hosts")
	os.WriteFile(key, []byte("not a key, but there"), 0o600)
	os.WriteFile(kh, nil, 0o600)
	got := sshG(t, home, sshArgv(key, kh, "root", "10.0.0.2", false, []string{"true"}))
	cfg := map[string][]string{}
	for _, l := range strings.Split(got, "\n") {
		if k, v, ok := strings.Cut(l, " "); ok {
			cfg[k] = append(cfg[k], v)
		}
	}
	for k, want := range map[string]string{
		"forwardagent": "no", "forwardx11": "no", "forwardx11trusted": "no", "clearallforwardings": "yes",
		"permitlocalcommand": "no", "controlmaster": "false", "identityagent": "none", "gssapidelegatecredentials": "no",
		"stricthostkeychecking": "true", "userknownhostsfile": kh, "identityfile": key,
		"user": "root", "port": "22", "identitiesonly": "yes",
	} {
		if v := cfg[k]; len(v) != 1 || v[0] != want {
			t.Errorf("%s: %q, want %q", k, v, want)
		}
	}
	for _, k := range []string{"localforward", "remoteforward", "dynamicforward", "sendenv", "setenv", "localcommand", "proxycommand", "controlpath"} {
		if v, ok := cfg[k]; ok {
			t.Errorf("%s set: %q", k, v)
		}
	}
}
