package cli

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// Flag values that refuse what their command cannot use when the command
// line is parsed, so that the error names the flag (a usage error, exit
// 2) before anything is sent to the daemon. Their Type is pflag's own, so
// that --help reads the same.

// durationRange is a duration flag within [min, max] (max 0: no upper
// bound).
type durationRange struct {
	p        *time.Duration
	min, max time.Duration
}

func (d *durationRange) String() string {
	if *d.p == 0 {
		return "0" // as pflag's own duration: --help shows no default
	}
	return d.p.String()
}
func (d *durationRange) Type() string { return "duration" }
func (d *durationRange) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("not a duration like 30s or 2m")
	}
	if v < d.min || d.max > 0 && v > d.max {
		if d.max > 0 {
			return fmt.Errorf("want %s to %s", d.min, d.max)
		}
		return fmt.Errorf("want at least %s", d.min)
	}
	*d.p = v
	return nil
}

func durationRangeVar(fs *pflag.FlagSet, p *time.Duration, name string, def, min, max time.Duration, usage string) {
	*p = def
	fs.Var(&durationRange{p: p, min: min, max: max}, name, usage)
}

// intRange is an int flag within [min, max].
type intRange struct {
	p        *int
	min, max int
}

func (r *intRange) String() string { return strconv.Itoa(*r.p) }
func (r *intRange) Type() string   { return "int" }
func (r *intRange) Set(s string) error {
	v, err := strconv.Atoi(s)
	if err != nil {
		return fmt.Errorf("not a whole number")
	}
	if v < r.min || v > r.max {
		return fmt.Errorf("want %d to %d", r.min, r.max)
	}
	*r.p = v
	return nil
}

func intRangeVarP(fs *pflag.FlagSet, p *int, name, short string, def, min, max int, usage string) {
	*p = def
	fs.VarP(&intRange{p: p, min: min, max: max}, name, short, usage)
}

// checkEnvFlags checks --env values: KEY=VALUE, KEY not empty.
func checkEnvFlags(env []string) error {
	for _, kv := range env {
		if !strings.Contains(kv, "=") || strings.HasPrefix(kv, "=") {
			return usageError{fmt.Errorf("--env %q: want KEY=VALUE", kv)}
		}
	}
	return nil
}

// checkGuestPath checks a --path (where a workspace goes in the guest)
// before anything is shipped.
func checkGuestPath(p string) error {
	if !path.IsAbs(p) || path.Clean(p) != p || p == "/" || strings.ContainsAny(p, "\n\x00") {
		return usageError{fmt.Errorf("--path %q: want an absolute, clean path in the guest other than /", p)}
	}
	return nil
}

// checkBranchName checks a --branch NAME as git check-ref-format does for
// a branch (so that the export fails before the guest is asked).
func checkBranchName(b string) error {
	bad := b == "" || b == "@" || strings.HasPrefix(b, "-") || strings.HasPrefix(b, "/") || strings.HasSuffix(b, "/") ||
		strings.HasSuffix(b, ".") || strings.HasSuffix(b, ".lock") || strings.Contains(b, "..") || strings.Contains(b, "//") ||
		strings.Contains(b, "@{") || strings.Contains(b, "/.") || strings.HasPrefix(b, ".")
	for _, r := range b {
		if r < 0x20 || r == 0x7f || strings.ContainsRune(" ~^:?*[\\", r) {
			bad = true
		}
	}
	if bad {
		return usageError{fmt.Errorf("--branch %q is not a valid git branch name", b)}
	}
	return nil
}

// checkOutFile checks an --out FILE: "-" (stdout) or a file whose
// directory exists.
func checkOutFile(p string) error {
	if p == "-" {
		return nil
	}
	if p == "" {
		return usageError{fmt.Errorf("--out \"\": name a file (or - for stdout)")}
	}
	if st, err := os.Stat(filepath.Dir(p)); err != nil || !st.IsDir() {
		return usageError{fmt.Errorf("--out %q: directory %s does not exist", p, filepath.Dir(p))}
	}
	return nil
}
