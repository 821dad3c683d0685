// Package agentbin carries the guest agent binary inside bangerd, so that
// the agent running in a guest always matches the host build. `make agent`
// builds it (CGO_ENABLED=0 go build ./cmd/banger-agent) into dist/ before
// bangerd is compiled.
package agentbin

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"io/fs"
	"sync"
)

//go:embed dist
var dist embed.FS

// ErrMissing means this build was compiled without the agent.
var ErrMissing = errors.New("this banger was built without the guest agent (internal/agentbin/dist/banger-agent): build it with 'make build'")

var (
	once   sync.Once
	bin    []byte
	digest string
)

func load() {
	b, err := fs.ReadFile(dist, "dist/banger-agent")
	if err != nil || len(b) == 0 {
		return
	}
	sum := sha256.Sum256(b)
	bin, digest = b, hex.EncodeToString(sum[:])
}

// Binary returns the agent's static binary.
func Binary() ([]byte, error) {
	once.Do(load)
	if bin == nil {
		return nil, ErrMissing
	}
	return bin, nil
}

// Digest is the sha256 of the agent binary: the agent's identity in cache
// keys (initrds, templates). Empty when the agent is missing.
func Digest() string {
	once.Do(load)
	return digest
}
