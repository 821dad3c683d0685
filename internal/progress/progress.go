// Package progress is how long operations report what they are doing: a
// Func receives api.Progress values (the wire form, so the daemon streams
// them as they are). Phase reports a phase; a Meter reports work done of a
// known total in one phase, with a rate-based estimate of the time left,
// at most a few times a second.
package progress

import (
	"sync"
	"time"

	"github.com/banger-sh/banger/api"
)

// Func receives progress reports. A nil Func discards them.
type Func func(api.Progress)

// Phase reports that phase began (or a detail of it).
func (f Func) Phase(phase, detail string) {
	f.Report(api.Progress{Phase: phase, Detail: detail})
}

// Report sends p.
func (f Func) Report(p api.Progress) {
	if f != nil {
		f(p)
	}
}

// Steps returns a Func that stamps every report with its phase's place
// among phases (1-based); phases not listed pass unstamped.
func (f Func) Steps(phases ...string) Func {
	if f == nil {
		return nil
	}
	return func(p api.Progress) {
		for i, ph := range phases {
			if ph == p.Phase {
				p.Step, p.Steps = i+1, len(phases)
			}
		}
		f(p)
	}
}

// Meter reports Done of Total units of one phase.
type Meter struct {
	f     Func
	phase string
	unit  string
	every time.Duration
	now   func() time.Time

	mu     sync.Mutex
	expect time.Duration
	start  time.Time
	last   time.Time
	done   int64
	total  int64
}

// NewMeter starts a meter of total units (0: unknown) for phase.
func (f Func) NewMeter(phase, unit string, total int64) *Meter {
	m := &Meter{f: f, phase: phase, unit: unit, total: total, every: 250 * time.Millisecond, now: time.Now}
	m.start = m.now()
	return m
}

// SetTotal changes the total (when a better estimate arrives).
func (m *Meter) SetTotal(total int64) {
	m.mu.Lock()
	m.total = total
	m.mu.Unlock()
}

// Total is the current total.
func (m *Meter) Total() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.total
}

// Expect says how long the whole phase is expected to take (from an
// earlier run): the estimate of the time left is then what remains of it,
// not the rate so far (phases whose steps are of unequal cost).
func (m *Meter) Expect(d time.Duration) {
	m.mu.Lock()
	m.expect = d
	m.mu.Unlock()
}

// Add counts n more units done and reports, unless it reported less than
// a quarter of a second ago.
func (m *Meter) Add(n int64, detail string) { m.set(-1, n, detail, false) }

// Set sets the units done and reports (throttled as Add).
func (m *Meter) Set(done int64, detail string) { m.set(done, 0, detail, false) }

// Finish reports the phase complete, whatever the throttle.
func (m *Meter) Finish(detail string) {
	m.mu.Lock()
	if m.total > 0 {
		m.done = m.total
	}
	m.mu.Unlock()
	m.set(-1, 0, detail, true)
}

func (m *Meter) set(done, add int64, detail string, force bool) {
	m.mu.Lock()
	if done >= 0 {
		m.done = done
	}
	m.done += add
	if m.total > 0 && m.done > m.total {
		// The estimate was short: keep the bar from overflowing.
		m.total = m.done + m.done/20 + 1
	}
	now := m.now()
	if !force && now.Sub(m.last) < m.every {
		m.mu.Unlock()
		return
	}
	m.last = now
	p := api.Progress{Phase: m.phase, Detail: detail, Done: m.done, Total: m.total, Unit: m.unit}
	el := now.Sub(m.start)
	switch {
	case m.total <= 0 || m.done >= m.total:
	case m.expect > el:
		p.ETASeconds = (m.expect - el).Seconds()
	case m.done*20 >= m.total && el > time.Second:
		// A rate is worth quoting once 5% is done.
		p.ETASeconds = (el.Seconds() / float64(m.done)) * float64(m.total-m.done)
	}
	m.mu.Unlock()
	m.f.Report(p)
}
