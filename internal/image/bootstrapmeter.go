package image

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/banger-sh/banger/internal/progress"
)

// debootstrap prints a line per package per step: "I: Retrieving P V",
// "I: Validating P V", "I: Extracting P...", "I: Unpacking P...",
// "I: Configuring P...". bootstrapMeter turns them into progress: one
// step per package validated (retrieved or not: a cold cache is slower,
// not longer), extracted, unpacked and configured, of a total remembered
// from the last build of the same suite and packages (defaultSteps when
// there is none), and an estimate of the time left from that build's
// duration.
type bootstrapMeter struct {
	meter   *progress.Meter
	history string // file of past builds' steps and durations
	key     string
	start   time.Time
	expect  time.Duration

	mu    sync.Mutex
	buf   []byte
	steps int64
	pkgs  map[string]bool
}

// defaultSteps is what a bookworm minbase with banger's default packages
// takes: 138 packages validated, 88 extracted, 140 unpacked, 143
// configured.
const defaultSteps = 509

type bootstrapRecord struct {
	Steps   int64   `json:"steps"`
	Seconds float64 `json:"seconds"`
}

func bootstrapKey(o *BuildOptions) string {
	pkgs := slices.Clone(o.Packages)
	slices.Sort(pkgs)
	h := sha256.Sum256([]byte(o.Suite + "\n" + strings.Join(pkgs, ",")))
	return hex.EncodeToString(h[:8])
}

func newBootstrapMeter(o *BuildOptions) *bootstrapMeter {
	b := &bootstrapMeter{
		history: filepath.Join(o.CacheDir, "debootstrap-progress.json"),
		key:     bootstrapKey(o),
		start:   time.Now(),
		pkgs:    map[string]bool{},
	}
	total := int64(defaultSteps)
	if extra := len(o.Packages) - len(defaultPackages); extra > 0 {
		total += int64(extra) * 8
	}
	if r, ok := b.load()[b.key]; ok && r.Steps > 0 {
		total, b.expect = r.Steps, time.Duration(r.Seconds*float64(time.Second))
	}
	b.meter = o.Progress.NewMeter("debootstrap", "steps", total)
	b.meter.Expect(b.expect)
	return b
}

func (b *bootstrapMeter) load() map[string]bootstrapRecord {
	m := map[string]bootstrapRecord{}
	if data, err := os.ReadFile(b.history); err == nil {
		_ = json.Unmarshal(data, &m)
	}
	return m
}

var bootstrapVerbs = map[string]string{
	"Retrieving": "retrieving", "Validating": "validated", "Extracting": "extracting",
	"Unpacking": "unpacking", "Configuring": "configuring",
}

// Write receives debootstrap's output.
func (b *bootstrapMeter) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	for {
		i := bytes.IndexByte(b.buf, '\n')
		if i < 0 {
			if len(b.buf) > 4096 {
				b.buf = b.buf[:0]
			}
			break
		}
		b.line(string(b.buf[:i]))
		b.buf = b.buf[i+1:]
	}
	return len(p), nil
}

func (b *bootstrapMeter) line(l string) {
	f := strings.Fields(strings.TrimPrefix(l, "I: "))
	if !strings.HasPrefix(l, "I: ") || len(f) < 2 {
		return
	}
	verb, ok := bootstrapVerbs[f[0]]
	if !ok {
		return
	}
	pkg := strings.TrimSuffix(f[1], "...")
	pkg, _, _ = strings.Cut(pkg, ":") // libbz2-1.0:amd64
	if f[0] != "Retrieving" {
		b.steps++
	}
	if pkg == "Packages" || pkg == "InRelease" || pkg == "Release" {
		return // the index, not a package
	}
	b.pkgs[pkg] = true
	detail := fmt.Sprintf("%s %s (%d packages)", verb, pkg, len(b.pkgs))
	b.meter.Set(b.steps, detail)
}

// done records this build's steps and duration for the next one.
func (b *bootstrapMeter) done() {
	b.mu.Lock()
	steps, pkgs := b.steps, len(b.pkgs)
	b.mu.Unlock()
	b.meter.Finish(fmt.Sprintf("%d packages installed", pkgs))
	if steps == 0 {
		return
	}
	m := b.load()
	m[b.key] = bootstrapRecord{Steps: steps, Seconds: time.Since(b.start).Seconds()}
	if data, err := json.Marshal(m); err == nil {
		tmp := b.history + ".tmp"
		if os.WriteFile(tmp, data, 0o644) == nil {
			os.Rename(tmp, b.history)
		}
	}
}

var _ io.Writer = (*bootstrapMeter)(nil)
