package agentbin

import (
	"bytes"
	"context"
	"debug/elf"
	"testing"

	"github.com/banger-sh/banger/internal/agentbin/sources"
)

// TestAgentIsFresh: the embedded agent was built from this tree's sources
// (else: go generate ./internal/agentbin), and it is a static ELF.
func TestAgentIsFresh(t *testing.T) {
	want, err := sources.Digest(context.Background(), "../..")
	if err != nil {
		t.Fatal(err)
	}
	if got := SourcesDigest(); got != want {
		t.Fatalf("the embedded agent was built from other sources (%.12s) than this tree's (%.12s): run go generate ./internal/agentbin (make build does)", got, want)
	}
	b, err := Binary()
	if err != nil {
		t.Fatal(err)
	}
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("agent is not ELF: %v", err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatal("agent is dynamically linked (want CGO_ENABLED=0)")
		}
	}
	if len(Digest()) != 64 {
		t.Fatalf("digest %q", Digest())
	}
}
