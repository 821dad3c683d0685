package cli

import (
	"reflect"
	"testing"
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
	if !reflect.DeepEqual(tail, []string{"root@10.0.0.2", "--", "sh -c 'exit 42'"}) {
		t.Fatalf("argv tail %q", tail)
	}
	argv = sshArgv("/k", "/kh", "root", "10.0.0.2", true, nil)
	if argv[len(argv)-1] != "root@10.0.0.2" || argv[len(argv)-2] != "-t" {
		t.Fatalf("interactive argv %q", argv)
	}
}
