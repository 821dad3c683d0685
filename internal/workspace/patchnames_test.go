package workspace

import (
	"errors"
	"strings"
	"testing"
)

// TestUnquotedControlCharactersRejected: git quotes every name with a
// control character, and reads an unquoted one differently (it ends it at
// a CR: "rename from a.txt\rjunk" renames a.txt, while the parser saw
// "a.txt\rjunk", which its checks passed). Such names are refused; the
// same names as git writes them (quoted) still parse.
func TestUnquotedControlCharactersRejected(t *testing.T) {
	rename := func(from string) string {
		return "diff --git a/a.txt b/y\nsimilarity index 100%\nrename from " + from + "\nrename to y\n"
	}
	for name, patch := range map[string]string{
		"rename source with CR":   rename("a.txt\rjunk"),
		"rename source with tab":  rename("a.txt\tjunk"),
		"rename source with VT":   rename(".git\vx"),
		"rename source with ESC":  rename("a.txt\x1b[2Jx"),
		"copy source with CR":     "diff --git a/a.txt b/y\nsimilarity index 100%\ncopy from a.txt\rx\ncopy to y\n",
		"rename target with CR":   "diff --git a/a.txt b/y\nsimilarity index 100%\nrename from a.txt\nrename to y\rz\n",
		"--- name with CR":        "diff --git a/a.txt b/a.txt\n--- a/a.txt\rx\n+++ b/a.txt\n@@ -1 +1 @@\n-a\n+x\n",
		"diff --git name with CR": "diff --git a/e\rx b/e\rx\ndeleted file mode 100644\nindex e69de29..0000000\n",
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := ParsePatch(strings.NewReader(patch), 0); !errors.Is(err, ErrRejected) {
				t.Errorf("ParsePatch = %v, want rejected", err)
			} else {
				t.Logf("%v", err)
			}
			if _, err := ScanPatch(strings.NewReader(patch), 0); !errors.Is(err, ErrRejected) {
				t.Errorf("ScanPatch = %v, want rejected", err)
			}
		})
	}
	// Quoted, as git writes them: fine (and the name is the decoded one).
	p, err := ParsePatch(strings.NewReader(rename(`"a.txt\rjunk"`)), 0)
	if err != nil {
		t.Fatalf("quoted rename source: %v", err)
	}
	if c := p.Changes[0]; c.OldPath != "a.txt\rjunk" || c.Path != "y" {
		t.Errorf("quoted rename: %+v", c)
	}
}
