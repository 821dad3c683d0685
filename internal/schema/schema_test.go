package schema

import (
	"strings"
	"testing"
	"time"
)

type inner struct {
	N int `json:"n"`
}

type sample struct {
	Name  string            `json:"name"`
	Opt   string            `json:"opt,omitempty"`
	When  time.Time         `json:"when"`
	Ptr   *inner            `json:"ptr,omitempty"`
	List  []inner           `json:"list"`
	M     map[string]string `json:"m,omitempty"`
	Data  []byte            `json:"data,omitempty"`
	Skip  string            `json:"-"`
	Float float64           `json:"f"`
}

func TestOfAndValidate(t *testing.T) {
	s := Of(sample{})
	round, err := Parse(s.JSON())
	if err != nil {
		t.Fatal(err)
	}
	good := `{"name":"x","when":"2026-01-01T00:00:00Z","list":[{"n":1}],"f":1,"ptr":null,"m":{"a":"b"}}`
	for _, sc := range []*Schema{s, round} {
		if err := sc.Validate([]byte(good)); err != nil {
			t.Errorf("good: %v", err)
		}
	}
	for doc, want := range map[string]string{
		`{"when":"x","list":[],"f":1}`:                         `"name" missing`,
		`{"name":1,"when":"x","list":[],"f":1}`:                "$.name: integer, want string",
		`{"name":"x","when":"x","list":[{"n":"1"}],"f":1}`:     "$.list[0].n",
		`{"name":"x","when":"x","list":[],"f":1,"extra":true}`: `"extra" is not in the schema`,
		`{"name":"x","when":"x","list":[],"f":1,"m":{"a":2}}`:  "$.m.a",
		`[1]`: "array, want object",
	} {
		for _, sc := range []*Schema{s, round} {
			err := sc.Validate([]byte(doc))
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("%s: %v, want %q", doc, err, want)
			}
		}
	}
}
