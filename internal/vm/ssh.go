package vm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/agent"
	"github.com/banger-sh/banger/internal/errdefs"
)

// sshdUp starts sshd in the guest on demand (boot stays fast without it):
// host keys are generated on first use — per VM, since each has its own
// disk — and sshd is started unless its pid file names a live process.
const sshdUp = `set -e
if [ ! -s /etc/ssh/ssh_host_ed25519_key ]; then ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key; fi
mkdir -p /run/sshd
if ! { [ -s /run/sshd.pid ] && kill -0 "$(cat /run/sshd.pid)" 2>/dev/null; }; then
  /usr/sbin/sshd -o PasswordAuthentication=no -o PermitRootLogin=prohibit-password -h /etc/ssh/ssh_host_ed25519_key
fi
cat /etc/ssh/ssh_host_ed25519_key.pub`

// PrepareSSH makes a running VM ready for `vm ssh`: sshd running, the
// VM's host key recorded in its own known_hosts file.
func (m *Manager) PrepareSSH(ctx context.Context, name string) (api.SSHInfo, error) {
	r, err := m.get(ctx, name)
	if err != nil {
		return api.SSHInfo{}, err
	}
	if st := m.derive(ctx, r); st != StateRunning {
		return api.SSHInfo{}, errdefs.NotRunning(fmt.Sprintf("vm %s is %s, not running", r.row.Name, st))
	}
	if m.net == nil || r.spec.Net == "off" {
		return api.SSHInfo{}, errdefs.Conflict(fmt.Sprintf("vm %s has no network: use 'banger vm exec -t %s -- bash' instead", r.row.Name, r.row.Name))
	}
	l, err := m.net.Lease(r.row.ID)
	if err != nil || l == nil {
		return api.SSHInfo{}, errdefs.Conflict(fmt.Sprintf("vm %s has no address", r.row.Name))
	}
	c, err := m.agent(ctx, r)
	if err != nil {
		return api.SSHInfo{}, err
	}
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	p, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"sh", "-c", sshdUp}, Stdout: &limited{w: &out, n: 16 << 10}, Stderr: &limited{w: &errb, n: 16 << 10}})
	if err != nil {
		return api.SSHInfo{}, fmt.Errorf("vm %s: start sshd: %w", r.row.Name, err)
	}
	st, err := p.Wait()
	if err != nil || st.Code != 0 {
		return api.SSHInfo{}, fmt.Errorf("vm %s: start sshd: exit %d: %s (is openssh-server in the image?)", r.row.Name, st.Code, strings.TrimSpace(errb.String()))
	}
	key := strings.TrimSpace(out.String())
	f := strings.Fields(key)
	if len(f) < 2 || !strings.HasPrefix(f[0], "ssh-") {
		return api.SSHInfo{}, fmt.Errorf("vm %s: unexpected host key %q", r.row.Name, key)
	}
	kh := m.layout.VMKnownHosts(r.row.ID)
	line := fmt.Sprintf("%s %s %s\n", l.Addr, f[0], f[1])
	if err := os.WriteFile(kh, []byte(line), 0o600); err != nil {
		return api.SSHInfo{}, err
	}
	return api.SSHInfo{Host: l.Addr.String(), User: "root", KnownHosts: kh, Key: m.layout.SSHKey()}, nil
}

// limited writes at most n bytes to w and drops the rest: guest output is
// untrusted.
type limited struct {
	w interface{ Write([]byte) (int, error) }
	n int
}

func (l *limited) Write(p []byte) (int, error) {
	k := len(p)
	if k > l.n {
		p = p[:l.n]
	}
	l.n -= len(p)
	if len(p) > 0 {
		l.w.Write(p)
	}
	return k, nil
}
