package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/banger-sh/banger/api"
)

func TestRenderProgress(t *testing.T) {
	p := api.Progress{Phase: "debootstrap", Detail: "configuring libc6 (52 packages)", Elapsed: "1m2.345s",
		Step: 3, Steps: 6, Done: 254, Total: 509, Unit: "steps", ETASeconds: 41.2}
	got := renderProgress(p, true)
	want := "[1m2s] (3/6) debootstrap [#########...........]  49%: configuring libc6 (52 packages), ~41s left"
	if got != want {
		t.Errorf("tty:\n got %q\nwant %q", got, want)
	}
	b := api.Progress{Phase: "kernel", Done: 12 << 20, Total: 48 << 20, Unit: "bytes", Step: 1, Steps: 6}
	if got := renderProgress(b, false); got != "(1/6) kernel  25% 12M/48M" {
		t.Errorf("bytes: %q", got)
	}
}

// TestProgressModes: plain output (not a terminal) shows an image build's
// steps and a metered phase a line a quarter, never a VM's short phases;
// JSON mode writes every event as NDJSON.
func TestProgressModes(t *testing.T) {
	var out, errb bytes.Buffer
	e := &env{stdout: &out, stderr: &errb}
	events := []api.Progress{
		{Phase: "disk", Detail: "copy-on-write root"},
		{Phase: "image", Detail: `image "default" not found: building it first`},
		{Phase: "kernel", Step: 1, Steps: 6},
	}
	for i := int64(0); i <= 100; i += 5 {
		events = append(events, api.Progress{Phase: "debootstrap", Step: 3, Steps: 6, Done: i, Total: 100, Unit: "steps"})
	}
	events = append(events, api.Progress{Phase: "warning", Detail: "booting cold"}, api.Progress{Phase: "ready"})

	show, done := e.progress(e.progressFor(false, false))
	for _, p := range events {
		show(p)
	}
	done()
	lines := strings.Split(strings.TrimSpace(errb.String()), "\n")
	var deb int
	for _, l := range lines {
		if strings.Contains(l, "debootstrap") {
			deb++
		}
		if strings.Contains(l, "disk") || strings.Contains(l, "ready") {
			t.Errorf("short phase shown: %q", l)
		}
	}
	if deb != 5 || !strings.Contains(errb.String(), "building it first") || !strings.Contains(errb.String(), "warning: booting cold") {
		t.Errorf("plain (%d debootstrap lines):\n%s", deb, errb.String())
	}

	errb.Reset()
	show, done = e.progress(progressJSON)
	for _, p := range events {
		show(p)
	}
	done()
	printEventResult(&out, map[string]string{"name": "default"})
	n := 0
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var ev api.Event
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("not JSON: %q", l)
		}
		n++
	}
	if n != len(events)+1 || errb.Len() != 0 {
		t.Errorf("json: %d lines, stderr %q", n, errb.String())
	}
}
