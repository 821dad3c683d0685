// Package agentbin carries the guest agent binary inside bangerd, so that
// the agent running in a guest always matches the host build.
//
// The binary is built by `go generate ./internal/agentbin` (make build
// runs it) into dist/, which git ignores. A tree where it was never built
// does not compile — the error points at the go:embed line below:
//
//	internal/agentbin/agentbin.go: pattern dist/banger-agent: no matching files found
//
// so `go build ./cmd/...` gives a working bangerd or fails at build time,
// never at the first VM command. TestAgentIsFresh fails when the embedded
// agent was built from other sources than the tree's.
package agentbin

//go:generate go run ./gen

import (
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"strings"
	"sync"
)

// The guest agent. Missing? Run: go generate ./internal/agentbin
//
//go:embed dist/banger-agent
var bin []byte

//go:embed dist/banger-agent.sources
var builtFrom string

// ErrMissing means the embedded agent is empty (a broken build).
var ErrMissing = errors.New("the embedded guest agent is empty: rebuild with 'go generate ./internal/agentbin' (or make build)")

var (
	once   sync.Once
	digest string
)

// Binary returns the agent's static binary.
func Binary() ([]byte, error) {
	if len(bin) == 0 {
		return nil, ErrMissing
	}
	return bin, nil
}

// Digest is the sha256 of the agent binary: the agent's identity in cache
// keys (initrds, templates).
func Digest() string {
	once.Do(func() {
		sum := sha256.Sum256(bin)
		digest = hex.EncodeToString(sum[:])
	})
	return digest
}

// SourcesDigest is the digest of the sources the embedded agent was built
// from (see package sources).
func SourcesDigest() string { return strings.TrimSpace(builtFrom) }
