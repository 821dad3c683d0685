package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/client"
)

// How progress is shown on stderr (stdout for --json).
type progressMode int

const (
	progressQuiet progressMode = iota
	// progressPlain: not a terminal. Lines, never rewritten: the phases of
	// long work (image builds: events with Steps), warnings, and for
	// metered phases a line at most every 15 s or quarter.
	progressPlain
	// progressPlainAll: as plain, and every phase (image commands).
	progressPlainAll
	// progressTTY: one live line, rewritten; a bar for metered phases.
	progressTTY
	// progressJSON: every event as a line of JSON on stdout (NDJSON, the
	// daemon's own api.Event form), the result event last.
	progressJSON
)

// progressFor picks the mode: jsonOut wins, then a terminal on stderr,
// else plain (all phases when every is set).
func (e *env) progressFor(jsonOut, every bool) progressMode {
	f, isFile := e.stderr.(*os.File)
	switch {
	case jsonOut:
		return progressJSON
	case isFile && isTerminal(f):
		return progressTTY
	case every:
		return progressPlainAll
	}
	return progressPlain
}

// progressView renders progress events in one mode.
type progressView struct {
	mode   progressMode
	w      io.Writer // stderr; stdout for JSON
	width  int
	mu     sync.Mutex
	live   bool // a live line is on the terminal
	last   map[string]printed
	closed bool
}

type printed struct {
	at      time.Time
	quarter int64
}

func (e *env) newProgressView(mode progressMode) *progressView {
	v := &progressView{mode: mode, w: e.stderr, width: 100, last: map[string]printed{}}
	if mode == progressJSON {
		v.w = e.stdout
	}
	if f, ok := e.stderr.(*os.File); ok && mode == progressTTY {
		if _, cols := termSize(f); cols > 20 {
			v.width = int(cols) - 1
		}
	}
	return v
}

// progress returns the callback to hand the client, and done, which clears
// a live line; result, for JSON, writes the result event.
func (e *env) progress(mode progressMode) (client.Progress, func()) {
	v := e.newProgressView(mode)
	return v.show, v.done
}

func (v *progressView) show(p api.Progress) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return
	}
	switch v.mode {
	case progressQuiet:
	case progressJSON:
		b, _ := json.Marshal(api.Event{Progress: &p})
		v.w.Write(append(b, '\n'))
	case progressTTY:
		if p.Phase == "warning" {
			v.clear()
			fmt.Fprintf(v.w, "banger: warning: %s\n", p.Detail)
			return
		}
		fmt.Fprintf(v.w, "\r\033[K%s", truncate(renderProgress(p, true), v.width))
		v.live = true
	default:
		if p.Phase == "warning" {
			fmt.Fprintf(v.w, "banger: warning: %s\n", p.Detail)
			return
		}
		// Short work: scripts want the result, not the phases. An image
		// build's phases are numbered steps, and "image" announces one.
		if p.Steps == 0 && p.Phase != "image" && v.mode != progressPlainAll {
			return
		}
		if p.Total > 0 {
			// A metered phase: its first and last report, and one a
			// quarter or every 15 s between.
			q := p.Done * 4 / p.Total
			prev, seen := v.last[p.Phase]
			if seen && p.Done < p.Total && q == prev.quarter && time.Since(prev.at) < 15*time.Second {
				return
			}
			v.last[p.Phase] = printed{at: time.Now(), quarter: q}
		}
		fmt.Fprintf(v.w, "banger: %s\n", renderProgress(p, false))
	}
}

func (v *progressView) clear() {
	if v.live {
		fmt.Fprint(v.w, "\r\033[K")
		v.live = false
	}
}

func (v *progressView) done() {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.clear()
	v.closed = true
}

// renderProgress is one line: [elapsed] [step/steps] phase, then for a
// metered phase a bar (on a terminal) or a percentage, the amount, the
// detail and the time left.
func renderProgress(p api.Progress, bar bool) string {
	var b strings.Builder
	if p.Elapsed != "" {
		fmt.Fprintf(&b, "[%s] ", roundElapsed(p.Elapsed))
	}
	if p.Steps > 0 {
		fmt.Fprintf(&b, "(%d/%d) ", p.Step, p.Steps)
	}
	b.WriteString(p.Phase)
	if p.Total > 0 {
		pct := p.Done * 100 / p.Total
		if bar {
			const w = 20
			n := int(p.Done * w / p.Total)
			fmt.Fprintf(&b, " [%s%s]", strings.Repeat("#", n), strings.Repeat(".", w-n))
		}
		fmt.Fprintf(&b, " %3d%%", pct)
		if p.Unit == "bytes" {
			fmt.Fprintf(&b, " %s/%s", humanSize(p.Done), humanSize(p.Total))
		}
	}
	if p.Detail != "" {
		b.WriteString(": " + p.Detail)
	}
	if p.ETASeconds >= 1 {
		fmt.Fprintf(&b, ", ~%s left", (time.Duration(p.ETASeconds) * time.Second).Round(time.Second))
	}
	return b.String()
}

// roundElapsed shortens "1m2.345s" to "1m2s" (and "345ms" stays).
func roundElapsed(s string) string {
	d, err := time.ParseDuration(s)
	if err != nil || d < time.Second {
		return s
	}
	return d.Round(time.Second).String()
}

// printEventError writes the error event that ends a failed --json
// stream, and returns err (the exit code and the message on stderr stay).
func printEventError(w io.Writer, err error) error {
	b, _ := json.Marshal(api.Event{Error: api.ToWire(err)})
	w.Write(append(b, '\n'))
	return err
}

// printEventResult writes the last NDJSON line of a --json stream.
func printEventResult(w io.Writer, result any) error {
	b, err := json.Marshal(api.Event{Result: result})
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
