package vmmtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-sh/banger/internal/agent"
	"github.com/banger-sh/banger/internal/agentbin"
	"github.com/banger-sh/banger/internal/image"
	"github.com/banger-sh/banger/internal/image/imagetest"
	"github.com/banger-sh/banger/internal/initrd"
	"github.com/banger-sh/banger/internal/system"
)

// AgentEnv names a prebuilt static agent binary for AgentGuest to use
// instead of building ./cmd/banger-agent.
const AgentEnv = "BANGER_TEST_AGENT"

// AgentGuest is the real thing: the test image (imagetest.TestImage,
// built once per machine), an initrd composed of its modules and the
// guest agent as /init, and a Ready that runs the agent handshake and a
// Ping. The agent is $BANGER_TEST_AGENT when set, else built from
// ./cmd/banger-agent of this module when a
// Go toolchain can (so that the test boots the source under test), else
// taken from the one embedded in this build (internal/agentbin); the test
// is skipped when neither exists.
func AgentGuest(t testing.TB) Env {
	t.Helper()
	bin, how, err := agentBinary(t)
	if err != nil {
		t.Skipf("no guest agent: %v", err)
	}
	man, err := image.Load(imagetest.TestImage(t))
	if err != nil {
		t.Fatalf("test image: %v", err)
	}
	kernel := man.Path(image.FileVmlinux)
	if !man.Has(image.FileVmlinux) {
		kernel = man.Path(image.FileBzImage)
	}
	mods := ""
	if man.Has(image.FileLoadOrder) {
		mods = man.Path(image.DirModules)
	}
	rd := filepath.Join(t.TempDir(), "initrd.img")
	if err := initrd.Compose(rd, mods, bin); err != nil {
		t.Fatal(err)
	}
	t.Logf("agent guest: image %s (%s), agent %s", man.Dir, man.ShortDigest(), how)
	return Env{
		Kernel:         kernel,
		Initrd:         rd,
		RootBase:       man.Path(image.FileRootfs),
		RootBaseFormat: "raw",
		Ready:          PingAgent,
		PowerOff:       PowerOffAgent,
	}
}

// PowerOffAgent asks the agent to shut the guest down (sync, remount
// read-only, power off). conn is closed when it returns.
func PowerOffAgent(ctx context.Context, conn net.Conn) error {
	c, err := agent.Dial(ctx, conn)
	if err != nil {
		return fmt.Errorf("agent handshake: %w", err)
	}
	defer c.Close()
	return c.Shutdown(ctx)
}

// PingAgent runs the agent handshake on conn and pings the agent. conn is
// closed when it returns.
func PingAgent(ctx context.Context, conn net.Conn) error {
	c, err := agent.Dial(ctx, conn)
	if err != nil {
		return fmt.Errorf("agent handshake: %w", err)
	}
	defer c.Close()
	if _, err := c.Ping(ctx); err != nil {
		return fmt.Errorf("agent ping: %w", err)
	}
	return nil
}

// agentBinary builds cmd/banger-agent (static) or falls back to the
// embedded agent.
func agentBinary(t testing.TB) ([]byte, string, error) {
	if p := os.Getenv(AgentEnv); p != "" {
		b, err := os.ReadFile(p)
		return b, p + " (" + AgentEnv + ")", err
	}
	ctx := context.Background()
	var buildErr error
	if gomod, err := system.Run(ctx, "go", "env", "GOMOD"); err == nil {
		root := filepath.Dir(strings.TrimSpace(string(gomod)))
		src := filepath.Join(root, "cmd", "banger-agent")
		if files, _ := filepath.Glob(filepath.Join(src, "*.go")); len(files) > 0 {
			out := filepath.Join(t.TempDir(), "banger-agent")
			_, buildErr = system.RunOpts(ctx, system.Opts{Dir: root, Env: []string{"CGO_ENABLED=0"}},
				"go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, "./cmd/banger-agent")
			if buildErr == nil {
				b, err := os.ReadFile(out)
				return b, "built from " + src, err
			}
		} else {
			buildErr = fmt.Errorf("%s has no Go files", src)
		}
	} else {
		buildErr = err
	}
	b, err := agentbin.Binary()
	if err != nil {
		return nil, "", errors.Join(buildErr, err)
	}
	return b, "embedded (agentbin " + agentbin.Digest()[:12] + ")", nil
}
