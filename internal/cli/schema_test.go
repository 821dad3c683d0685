package cli

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/banger-sh/banger/internal/schema"
)

// SchemaFile is where a command's --json schema is committed.
func schemaFile(cmd string) string {
	return filepath.Join("testdata", "schemas", strings.ReplaceAll(cmd, " ", "-")+".json")
}

// TestJSONSchemas: every command with --json has an entry in JSONOutputs,
// and the schema of that type is the committed one (a change of an output
// type is a change of its schema file: go test ./internal/cli -update).
func TestJSONSchemas(t *testing.T) {
	var withJSON []string
	var walk func(c *cobra.Command, prefix string)
	walk = func(c *cobra.Command, prefix string) {
		for _, sub := range c.Commands() {
			name := strings.TrimSpace(prefix + " " + sub.Name())
			if sub.Flags().Lookup("json") != nil {
				withJSON = append(withJSON, name)
			}
			walk(sub, name)
		}
	}
	walk(newRoot(&env{}), "")
	sort.Strings(withJSON)
	if len(withJSON) < 15 {
		t.Fatalf("only %d commands with --json: %v", len(withJSON), withJSON)
	}
	for _, name := range withJSON {
		out, ok := JSONOutputs[name]
		if !ok {
			t.Errorf("%s has --json but no entry in JSONOutputs", name)
			continue
		}
		got := schema.Of(out.v).JSON()
		f := schemaFile(name)
		if *update {
			os.MkdirAll(filepath.Dir(f), 0o755)
			os.WriteFile(f, got, 0o644)
			continue
		}
		want, err := os.ReadFile(f)
		if err != nil {
			t.Errorf("%s: %v (go test ./internal/cli -update)", name, err)
			continue
		}
		if string(want) != string(got) {
			t.Errorf("%s: the --json output's type changed; its schema is now:\n%s", name, got)
		}
	}
	for name := range JSONOutputs {
		found := false
		for _, n := range withJSON {
			found = found || n == name
		}
		if !found {
			t.Errorf("JSONOutputs names %q, which has no --json", name)
		}
	}
}
