package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-sh/banger/internal/schema"
)

// TestJSONOutputsMatchSchemas runs every command that has --json, on real
// VMs and runs, and validates what it prints (each line, for NDJSON)
// against the schema committed in internal/cli/testdata/schemas (which
// TestJSONSchemas keeps equal to the Go types).
func TestJSONOutputsMatchSchemas(t *testing.T) {
	h, vm := sharedVM(t)
	repo := fixtureRepo(t)
	h.must(t, "vm", "put", vm, "/root/j/x.txt", "/etc/hostname")
	type call struct {
		cmd  string // schema name
		args []string
		exit int
	}
	calls := []call{
		{"version", []string{"version", "--json"}, 0},
		{"config show", []string{"config", "show", "--json"}, 0},
		{"daemon status", []string{"daemon", "status", "--json"}, 0},
		{"vm ls", []string{"vm", "ls", "--json"}, 0},
		{"vm show", []string{"vm", "show", "--json", vm}, 0},
		{"vm exec", []string{"vm", "exec", "--json", vm, "--", "sh", "-c", "echo out; echo err >&2; exit 3"}, 3},
		{"vm exec", []string{"vm", "exec", "--json", vm, "--", "no-such-program"}, 127},
		{"vm cat", []string{"vm", "cat", "--json", vm, "/root/j/x.txt"}, 0},
		{"vm dir", []string{"vm", "dir", "--json", vm, "/root/j"}, 0},
		{"vm run", []string{"vm", "run", "--rm", "--json", "--name", "jsonrun", repo, "--", "sh", "-c", "echo x > new.txt; echo done"}, 0},
		{"vm run", []string{"vm", "run", "--rm", "--json", "--image", "no-such-image", "--", "true"}, 125},
		{"image ls", []string{"image", "ls", "--json"}, 0},
		{"image show", []string{"image", "show", "--json", "default"}, 0},
		{"image warm", []string{"image", "warm", "--json", "default"}, 0},
		{"image prune", []string{"image", "prune", "--json"}, 0},
		{"run ls", []string{"run", "ls", "--json"}, 0},
	}
	for _, c := range calls {
		r, code := h.run(t, nil, c.args...)
		if code != c.exit {
			t.Errorf("%v: exit %d, want %d\n%s", c.args, code, c.exit, r.stderr)
			continue
		}
		checkSchema(t, c.cmd, c.args, r.stdout)
	}
	run, ok := runOfVM(t, h, "jsonrun")
	if !ok {
		t.Fatal("no run of jsonrun")
	}
	r, _ := h.run(t, nil, "run", "show", "--json", run.ID)
	checkSchema(t, "run show", nil, r.stdout)
	// doctor exits 1 when a check fails (the test host may lack optional
	// tools); its output is checked either way.
	r, _ = h.run(t, nil, "doctor", "--json")
	checkSchema(t, "doctor", nil, r.stdout)
	h.assertNoLeftovers(t, vm)
}

func checkSchema(t *testing.T, cmd string, args []string, out string) {
	t.Helper()
	f := filepath.Join("..", "..", "internal", "cli", "testdata", "schemas", strings.ReplaceAll(cmd, " ", "-")+".json")
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	s, err := schema.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	docs := []string{out}
	switch cmd {
	case "vm run", "vm exec", "image build", "image import", "image warm":
		docs = strings.Split(strings.TrimSpace(out), "\n")
	}
	if len(docs) == 0 || strings.TrimSpace(docs[0]) == "" {
		t.Errorf("%s %v: no output", cmd, args)
	}
	for i, d := range docs {
		if err := s.Validate([]byte(d)); err != nil {
			t.Errorf("%s %v: line %d does not match %s: %v\n%s", cmd, args, i+1, f, err, d)
		}
	}
}
