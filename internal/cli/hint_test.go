package cli

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/client"
	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/paths"
	"github.com/banger-sh/banger/internal/system"
)

// TestHintForEveryClass pins the hint of each error class, as the CLI
// meets it: wire errors come back through api.FromWire, client-side ones
// are built as the client builds them. A hint never tells a user to start
// a daemon that is running.
func TestHintForEveryClass(t *testing.T) {
	e := &env{layout: paths.Layout{State: "/st"}}
	missing := &system.MissingError{Programs: []system.Program{{Name: "depmod", Package: "kmod"}}}
	wire := func(err error) error { return api.FromWire(api.ToWire(err)) }
	cases := []struct {
		name string
		err  error
		want string
	}{
		{"daemon unreachable", &client.UnreachableError{Socket: "/s", Err: errors.New("connection refused")}, "banger daemon status"},
		{"daemon lost mid-stream", errdefs.DaemonUnreachable("bangerd closed the stream"), "banger daemon logs"},
		{"missing program, through the wire", wire(fmt.Errorf("build image default: check: %w", missing)), "scripts/setup-host"},
		{"not running", wire(errdefs.NotRunning("vm dev is not running")), "banger vm start NAME"},
		{"not found", wire(errdefs.NotFound("no vm dev")), "banger vm ls"},
		{"already exists", wire(errdefs.AlreadyExists("vm dev exists")), "choose another name"},
		{"conflict", wire(errdefs.Conflict("unexported edits")), "banger vm show NAME"},
		{"invalid argument", wire(errdefs.InvalidArgument("--vcpu 0")), "banger help COMMAND"},
		{"unavailable in the daemon", wire(errdefs.Unavailable("no hypervisor backend can run here")), "banger doctor"},
		{"internal", wire(errors.New("boom")), "bug in banger"},
	}
	seen := map[string]bool{}
	for _, c := range cases {
		h := hint(c.err, e)
		if !strings.Contains(h, c.want) {
			t.Errorf("%s: hint %q, want it to contain %q", c.name, h, c.want)
		}
		if !errors.Is(c.err, errdefs.ErrDaemonUnreachable) && strings.Contains(h, "daemon start") {
			t.Errorf("%s: hint %q tells to start the daemon", c.name, h)
		}
		seen[api.ToWire(c.err).Code] = true
	}
	// Every wire code has a case above, and so a hint.
	for _, code := range api.Codes() {
		if !seen[code] {
			t.Errorf("no hint case for wire code %q", code)
		}
		if hint(api.FromWire(&api.Error{Code: code, Message: "x"}), e) == "" {
			t.Errorf("wire code %q has no hint", code)
		}
	}
	// The missing program's package reaches the user in the message.
	if err := wire(fmt.Errorf("check: %w", missing)); !strings.Contains(err.Error(), "apt-get install kmod") {
		t.Errorf("message %q does not name the package", err)
	}
}
