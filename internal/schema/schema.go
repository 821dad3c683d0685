// Package schema describes the JSON that banger prints for programs
// (--json of every command, NDJSON events) as a small JSON Schema
// (draft 2020-12 subset: type, properties, required, items,
// additionalProperties), derived from the Go types by reflection, and
// validates documents against it. Committed schema files pin the output:
// a change of a type shows as a change of its schema file, and the
// end-to-end tests validate what real commands print.
package schema

import (
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"time"
)

// Schema is a JSON Schema subset.
type Schema struct {
	Type                 any                `json:"type,omitempty"` // string or []string (with "null")
	Properties           map[string]*Schema `json:"properties,omitempty"`
	Required             []string           `json:"required,omitempty"`
	Items                *Schema            `json:"items,omitempty"`
	AdditionalProperties any                `json:"additionalProperties,omitempty"` // false, or a *Schema for maps
	Format               string             `json:"format,omitempty"`
}

var timeType = reflect.TypeOf(time.Time{})

// Of returns the schema of the JSON encoding of v's type.
func Of(v any) *Schema { return of(reflect.TypeOf(v), map[reflect.Type]bool{}) }

func of(t reflect.Type, seen map[reflect.Type]bool) *Schema {
	switch {
	case t == timeType:
		return &Schema{Type: "string", Format: "date-time"}
	case t.Kind() == reflect.Pointer:
		s := of(t.Elem(), seen)
		s.Type = nullable(s.Type)
		return s
	}
	switch t.Kind() {
	case reflect.Bool:
		return &Schema{Type: "boolean"}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return &Schema{Type: "integer"}
	case reflect.Float32, reflect.Float64:
		return &Schema{Type: "number"}
	case reflect.String:
		return &Schema{Type: "string"}
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return &Schema{Type: "string", Format: "base64"}
		}
		return &Schema{Type: []string{"array", "null"}, Items: of(t.Elem(), seen)}
	case reflect.Array:
		return &Schema{Type: "array", Items: of(t.Elem(), seen)}
	case reflect.Map:
		return &Schema{Type: []string{"object", "null"}, AdditionalProperties: of(t.Elem(), seen)}
	case reflect.Interface:
		return &Schema{} // anything
	case reflect.Struct:
		if seen[t] {
			return &Schema{Type: "object"} // recursive: not described again
		}
		seen[t] = true
		defer delete(seen, t)
		s := &Schema{Type: "object", Properties: map[string]*Schema{}, AdditionalProperties: false}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name, opts, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "-" {
				continue
			}
			if name == "" {
				name = f.Name
			}
			s.Properties[name] = of(f.Type, seen)
			if !strings.Contains(opts, "omitempty") && f.Type.Kind() != reflect.Pointer {
				s.Required = append(s.Required, name)
			}
		}
		sort.Strings(s.Required)
		return s
	}
	return &Schema{}
}

func nullable(t any) any {
	switch v := t.(type) {
	case string:
		return []string{v, "null"}
	case []string:
		for _, x := range v {
			if x == "null" {
				return v
			}
		}
		return append(v, "null")
	}
	return t
}

// JSON is the schema as indented JSON (for committed files).
func (s *Schema) JSON() []byte {
	b, _ := json.MarshalIndent(s, "", "  ")
	return append(b, '\n')
}

// Parse reads a schema file.
func Parse(b []byte) (*Schema, error) {
	var s Schema
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// Validate checks a JSON document against s: types, required properties,
// and no property the schema does not name.
func (s *Schema) Validate(doc []byte) error {
	var v any
	dec := json.NewDecoder(strings.NewReader(string(doc)))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	return s.check(v, "$")
}

func (s *Schema) types() []string {
	switch v := s.Type.(type) {
	case string:
		return []string{v}
	case []string:
		return v
	case []any:
		var out []string
		for _, x := range v {
			if str, ok := x.(string); ok {
				out = append(out, str)
			}
		}
		return out
	}
	return nil
}

func (s *Schema) check(v any, at string) error {
	ts := s.types()
	if len(ts) == 0 {
		return nil // anything
	}
	kind := jsonKind(v)
	ok := false
	for _, t := range ts {
		if t == kind || t == "number" && kind == "integer" {
			ok = true
		}
	}
	if !ok {
		return fmt.Errorf("%s: %s, want %s", at, kind, strings.Join(ts, " or "))
	}
	switch x := v.(type) {
	case map[string]any:
		for _, r := range s.Required {
			if _, has := x[r]; !has {
				return fmt.Errorf("%s: required property %q missing", at, r)
			}
		}
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			sub, named := s.Properties[k]
			if !named {
				switch ap := s.AdditionalProperties.(type) {
				case bool:
					if !ap {
						return fmt.Errorf("%s: property %q is not in the schema", at, k)
					}
					continue
				case map[string]any:
					b, _ := json.Marshal(ap)
					sub, _ = Parse(b)
				case *Schema:
					sub = ap
				default:
					continue
				}
			}
			if sub != nil {
				if err := sub.check(x[k], at+"."+k); err != nil {
					return err
				}
			}
		}
	case []any:
		if s.Items != nil {
			for i, e := range x {
				if err := s.Items.check(e, fmt.Sprintf("%s[%d]", at, i)); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func jsonKind(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case json.Number:
		if _, err := x.Int64(); err == nil && !strings.ContainsAny(x.String(), ".eE") {
			return "integer"
		}
		return "number"
	case string:
		return "string"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return "unknown"
}
