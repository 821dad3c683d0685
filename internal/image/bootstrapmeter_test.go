package image

import (
	"fmt"
	"strings"
	"testing"

	"github.com/banger-sh/banger/api"
)

// TestBootstrapMeter feeds debootstrap's own lines (cold cache: retrieved,
// then validated) and checks steps, package names and the history the next
// build's total comes from.
func TestBootstrapMeter(t *testing.T) {
	o := &BuildOptions{Suite: "bookworm", Packages: DefaultPackages(), CacheDir: t.TempDir()}
	var got []api.Progress
	o.Progress = func(p api.Progress) { got = append(got, p) }
	b := newBootstrapMeter(o)
	b.meter.Expect(0)
	var out strings.Builder
	out.WriteString("I: Retrieving InRelease \nI: Retrieving Packages \nI: Validating Packages \n")
	for _, p := range []string{"libc6", "libbz2-1.0", "git"} {
		fmt.Fprintf(&out, "I: Retrieving %s 1.0\nI: Validating %s 1.0\n", p, p)
	}
	out.WriteString("I: Chosen extractor for .deb packages: dpkg-deb\nI: Extracting libc6...\n")
	out.WriteString("I: Unpacking libbz2-1.0:amd64...\nI: Configuring git...\nI: Base system installed successfully.\n")
	// Written in odd pieces, as a pipe delivers it.
	s := out.String()
	for len(s) > 0 {
		n := min(7, len(s))
		b.Write([]byte(s[:n]))
		s = s[n:]
	}
	b.done()
	last := got[len(got)-1]
	if last.Total != defaultSteps || last.Done != defaultSteps || !strings.Contains(last.Detail, "3 packages") {
		t.Fatalf("last report %+v", last)
	}
	if b.steps != 7 { // Validating Packages, 3 validated, extracted, unpacked, configured
		t.Fatalf("steps %d", b.steps)
	}
	next := newBootstrapMeter(o)
	if next.meter.Total() != 7 || next.expect <= 0 {
		t.Fatalf("the next build's total %d, expected duration %v", next.meter.Total(), next.expect)
	}
}
