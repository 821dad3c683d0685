// Package sources computes the digest of the sources the guest agent is
// built from (every Go file of every package of this module that
// cmd/banger-agent imports, with go.mod and go.sum): agentbin/gen records
// it next to the binary, and a test compares it with the tree's, so a
// stale embedded agent fails the tests instead of booting old code.
package sources

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/banger-sh/banger/internal/system"
)

// Digest returns the sha256 over the agent's source files under root (the
// module root), in a stable order.
func Digest(ctx context.Context, root string) (string, error) {
	root, err := filepath.Abs(root)
	if err != nil {
		return "", err
	}
	out, err := system.RunOpts(ctx, system.Opts{Dir: root, Env: []string{"CGO_ENABLED=0", "GOOS=linux"}},
		"go", "list", "-deps", "-f", `{{if .Module}}{{if .Module.Main}}{{.Dir}}{{range .GoFiles}} {{.}}{{end}}{{range .EmbedFiles}} {{.}}{{end}}{{end}}{{end}}`,
		"./cmd/banger-agent")
	if err != nil {
		return "", err
	}
	files := []string{filepath.Join(root, "go.mod"), filepath.Join(root, "go.sum")}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		for _, name := range f[1:] {
			files = append(files, filepath.Join(f[0], name))
		}
	}
	slices.Sort(files)
	h := sha256.New()
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		rel, _ := filepath.Rel(root, f)
		fmt.Fprintf(h, "%s %d\n", rel, len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
