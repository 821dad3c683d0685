package network

import (
	"fmt"
	"sort"

	"github.com/google/nftables"
	"github.com/vishvananda/netns"
)

// ForwardDrop is a base chain of another table on the IPv4 forward hook
// whose policy is drop: e.g. Docker's `iptables -P FORWARD DROP`, which
// with iptables-nft is table ip filter, chain FORWARD. Every base chain on
// a hook sees every packet and a drop in any of them is final, so an
// accept in banger's table does not get a nat guest's packets past it.
type ForwardDrop struct {
	Family string `json:"family"` // "ip" or "inet"
	Table  string `json:"table"`
	Chain  string `json:"chain"`
	// DockerUser reports a DOCKER-USER chain in the same table: Docker's
	// documented place for the host's own FORWARD rules.
	DockerUser bool `json:"docker_user,omitempty"`
}

func (d ForwardDrop) String() string {
	return fmt.Sprintf("table %s %s chain %s", d.Family, d.Table, d.Chain)
}

// ForwardDrops lists the base chains on the forward hook of the ip and
// inet families whose policy is drop, but those of banger's own tables
// (named ownTable), in ns (<= 0: the caller's namespace). For doctor.
// It sees nftables only: rules of iptables-legacy are invisible to it, and
// so is a chain that accepts by policy and drops by its last rule.
func ForwardDrops(ns netns.NsHandle, ownTable string) ([]ForwardDrop, error) {
	var out []ForwardDrop
	err := inNS(ns, func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyINet} {
			chains, err := c.ListChainsOfTableFamily(fam)
			if err != nil {
				return fmt.Errorf("list nftables chains: %w", err)
			}
			dockerUser := map[string]bool{}
			for _, ch := range chains {
				if ch.Name == "DOCKER-USER" {
					dockerUser[ch.Table.Name] = true
				}
			}
			for _, ch := range chains {
				if ch.Hooknum == nil || *ch.Hooknum != *nftables.ChainHookForward ||
					ch.Policy == nil || *ch.Policy != nftables.ChainPolicyDrop ||
					(fam == nftables.TableFamilyINet && ch.Table.Name == ownTable) {
					continue
				}
				name := "ip"
				if fam == nftables.TableFamilyINet {
					name = "inet"
				}
				out = append(out, ForwardDrop{Family: name, Table: ch.Table.Name, Chain: ch.Name, DockerUser: dockerUser[ch.Table.Name]})
			}
		}
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out, err
}
