package cli

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"strings"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/system"
)

// shellQuote quotes one argument for a POSIX shell.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./=:,+@%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// sshArgv builds the ssh(1) command line. Every remote argument is
// shell-quoted and joined into ONE trailing argument, so that the remote
// shell sees exactly the words the user typed (the seed's bug: ssh joins
// its trailing arguments with spaces, re-tokenising `sh -c 'exit 42'`).
//
// The guest is untrusted, so ssh gets nothing of the user's beyond the
// connection: -F /dev/null reads neither ~/.ssh/config nor
// /etc/ssh/ssh_config (a `Host *` there could forward the user's agent,
// X11 or ports to the guest, send environment variables, run a local
// command, proxy, or multiplex over a control socket). Explicit -o
// overrides alone could not do it: for SendEnv, IdentityFile and the
// forwardings, options add up across the command line and the config
// files. The options that matter are also set explicitly, so the intent
// reads here and holds even if a future ssh grew compiled-in defaults.
// "--" ends ssh's options before the destination, so no field the daemon
// returns can be read as one (and user and host are validated first).
func sshArgv(key, knownHosts, user, host string, tty bool, remote []string) []string {
	argv := []string{"ssh", "-F", "/dev/null",
		"-i", key, "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
		"-o", "UserKnownHostsFile=" + knownHosts, "-o", "StrictHostKeyChecking=yes",
		"-o", "GlobalKnownHostsFile=/dev/null", "-o", "UpdateHostKeys=no",
		"-o", "ForwardAgent=no", "-o", "ForwardX11=no", "-o", "ForwardX11Trusted=no",
		"-o", "ClearAllForwardings=yes", "-o", "PermitLocalCommand=no",
		"-o", "ControlMaster=no", "-o", "ControlPath=none",
		"-o", "ProxyCommand=none", "-o", "ProxyJump=none",
		"-o", "GSSAPIAuthentication=no", "-o", "GSSAPIDelegateCredentials=no",
		"-o", "LogLevel=ERROR", "-o", "ConnectTimeout=30"}
	if tty {
		argv = append(argv, "-t")
	}
	argv = append(argv, "--", user+"@"+host)
	if len(remote) > 0 {
		q := make([]string, len(remote))
		for i, a := range remote {
			q[i] = shellQuote(a)
		}
		argv = append(argv, strings.Join(q, " "))
	}
	return argv
}

var sshUser = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)

// checkSSHInfo validates what the daemon says to connect to before any of
// it reaches ssh's command line: a user name, an IP address, and absolute
// paths without whitespace or control characters (ssh splits -o values on
// whitespace).
func checkSSHInfo(info api.SSHInfo) error {
	if !sshUser.MatchString(info.User) {
		return fmt.Errorf("bangerd returned an invalid ssh user %q", info.User)
	}
	if _, err := netip.ParseAddr(info.Host); err != nil {
		return fmt.Errorf("bangerd returned an invalid ssh host %q (want an IP address)", info.Host)
	}
	for what, p := range map[string]string{"key": info.Key, "known_hosts": info.KnownHosts} {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p || strings.IndexFunc(p, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
			return fmt.Errorf("bangerd returned an invalid ssh %s path %q", what, p)
		}
	}
	return nil
}

func newVMSSHCmd(e *env) *cobra.Command {
	var tty bool
	var printOnly bool
	cmd := &cobra.Command{
		Use:   "ssh NAME [-- CMD [ARG...]]",
		Short: "Open an ssh session to a VM (sshd starts on demand), or run CMD over ssh",
		Long: `Run the system's ssh(1) into a VM as root with banger's own key and a
known_hosts entry for the VM's own host key. sshd in the guest starts on
first use. Remote arguments are shell-quoted one by one, so
'banger vm ssh dev -- sh -c "exit 42"' exits 42. Under software emulation
an ssh connection costs ~2 s of crypto: 'banger vm exec' is faster.

The guest is untrusted: ssh runs with -F /dev/null (your ~/.ssh/config and
/etc/ssh/ssh_config are not read) and with agent, X11 and port forwarding,
local commands, proxies and connection sharing off. Use --print to get the
command line and adapt it when you mean to forward something.`,
		Args:              args(cobra.MinimumNArgs(1)),
		ValidArgsFunction: e.completeVMs,
		RunE: func(c *cobra.Command, a []string) error {
			if c.ArgsLenAtDash() > 1 || (c.ArgsLenAtDash() < 0 && len(a) > 1) {
				return usageError{fmt.Errorf("put the remote command after --")}
			}
			cl, err := e.client(c.Context())
			if err != nil {
				return err
			}
			info, err := cl.PrepareSSH(c.Context(), a[0])
			if err != nil {
				return err
			}
			if err := checkSSHInfo(info); err != nil {
				return err
			}
			argv := sshArgv(info.Key, info.KnownHosts, info.User, info.Host, tty, a[1:])
			if printOnly {
				q := make([]string, len(argv))
				for i, s := range argv {
					q[i] = shellQuote(s)
				}
				fmt.Fprintln(e.stdout, strings.Join(q, " "))
				return nil
			}
			return system.Exec(argv, nil)
		},
	}
	cmd.Flags().BoolVarP(&tty, "tty", "t", false, "force a terminal for CMD (ssh -t)")
	cmd.Flags().BoolVar(&printOnly, "print", false, "print the ssh command instead of running it")
	return cmd
}

func newVMPortCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "port NAME [HOST_ADDR:]HOST_PORT:GUEST_PORT",
		Short: "Forward a host TCP port to a VM's port (127.0.0.1 by default)",
		Long: `Forward a TCP port on the host to a port of a running VM. The host side
listens on 127.0.0.1 unless an address is given; the forward lasts as long
as the VM (it comes back after a restart) and is listed by 'vm show'.`,
		Args:              args(cobra.ExactArgs(2)),
		ValidArgsFunction: e.completeVMs,
		RunE: func(c *cobra.Command, a []string) error {
			cl, err := e.client(c.Context())
			if err != nil {
				return err
			}
			f, err := cl.AddForward(c.Context(), a[0], a[1])
			if err != nil {
				return err
			}
			fmt.Fprintln(e.stdout, f)
			return nil
		},
	}
}
