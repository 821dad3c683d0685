package config

import (
	"bytes"
	"errors"
	"reflect"
	"runtime"
	"testing"

	"github.com/BurntSushi/toml"
)

// FuzzParse feeds config.toml arbitrary bytes. Properties: no panic; an
// error is a *Error naming the file; a config it accepts validates, and
// survives a round trip through the TOML encoder unchanged; memory is
// bounded by a multiple of the input.
func FuzzParse(f *testing.F) {
	f.Add([]byte(Example))
	f.Fuzz(func(t *testing.T, data []byte) {
		var a, b runtime.MemStats
		runtime.ReadMemStats(&a)
		c, err := Parse("fuzz.toml", data)
		runtime.ReadMemStats(&b)
		if n, max := b.TotalAlloc-a.TotalAlloc, uint64(1<<20+512*len(data)); n > max {
			t.Fatalf("Parse of %d bytes allocated %d bytes, more than %d", len(data), n, max)
		}
		if err != nil {
			var ce *Error
			if !errors.As(err, &ce) || ce.File != "fuzz.toml" {
				t.Fatalf("error is not a config.Error naming the file: %#v", err)
			}
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("Parse accepted a config Validate refuses: %v", err)
		}
		var buf bytes.Buffer
		if err := toml.NewEncoder(&buf).Encode(c); err != nil {
			t.Fatalf("encode: %v", err)
		}
		c2, err := Parse("again.toml", buf.Bytes())
		if err != nil {
			t.Fatalf("the encoded config does not parse: %v\n%s", err, buf.Bytes())
		}
		if c.Network.Allow == nil {
			c.Network.Allow = []string{}
		}
		if c2.Network.Allow == nil {
			c2.Network.Allow = []string{}
		}
		if !reflect.DeepEqual(c, c2) {
			t.Fatalf("round trip changed the config:\n%+v\n%+v", c, c2)
		}
	})
}

// FuzzParseSize: a size it accepts is between 1 byte and MaxSize.
func FuzzParseSize(f *testing.F) {
	f.Add("4G")
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseSize(s)
		if err != nil {
			return
		}
		if n < 1 || n > MaxSize {
			t.Fatalf("ParseSize(%q) = %d, outside 1..%d", s, n, int64(MaxSize))
		}
	})
}
