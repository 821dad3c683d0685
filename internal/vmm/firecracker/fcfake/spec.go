package fcfake

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strings"

	"gopkg.in/yaml.v2"
)

// SpecVersion is the Firecracker version whose API spec the fake embeds
// (spec/firecracker-v1.16.1.yaml, unchanged from Firecracker's tree).
const SpecVersion = "1.16.1"

//go:embed spec/firecracker-v1.16.1.yaml
var specYAML []byte

// Spec is the part of Firecracker's OpenAPI (swagger 2.0) description the
// fake validates requests with.
type Spec struct {
	Paths       map[string]map[string]Operation `yaml:"paths"`
	Definitions map[string]*Schema              `yaml:"definitions"`
}

// Operation is one method of one path.
type Operation struct {
	Summary     string  `yaml:"summary"`
	OperationID string  `yaml:"operationId"`
	Parameters  []Param `yaml:"parameters"`
}

// Param is a path or body parameter.
type Param struct {
	Name     string  `yaml:"name"`
	In       string  `yaml:"in"`
	Required bool    `yaml:"required"`
	Schema   *Schema `yaml:"schema"`
}

// Schema is a JSON schema as swagger 2.0 writes it (the subset
// Firecracker's spec uses).
type Schema struct {
	Ref                  string             `yaml:"$ref"`
	Type                 string             `yaml:"type"`
	Required             []string           `yaml:"required"`
	Properties           map[string]*Schema `yaml:"properties"`
	Items                *Schema            `yaml:"items"`
	Enum                 []interface{}      `yaml:"enum"`
	Minimum              *float64           `yaml:"minimum"`
	Maximum              *float64           `yaml:"maximum"`
	AdditionalProperties interface{}        `yaml:"additionalProperties"`
	ReadOnly             bool               `yaml:"readOnly"`
}

// LoadSpec parses the embedded spec.
func LoadSpec() (*Spec, error) {
	var s Spec
	if err := yaml.Unmarshal(specYAML, &s); err != nil {
		return nil, fmt.Errorf("fcfake: parse spec: %w", err)
	}
	if len(s.Paths) == 0 || len(s.Definitions) == 0 {
		return nil, fmt.Errorf("fcfake: spec has no paths or definitions")
	}
	return &s, nil
}

// Phase says when Firecracker allows a call.
type Phase int

const (
	Any      Phase = iota
	PreBoot        // before InstanceStart or a snapshot load
	PostBoot       // after
)

// phaseOverrides are calls whose phase the spec's summary does not state,
// from Firecracker's own request handling (vmm/src/rpc_interface.rs): the
// serial console, vsock and VM state (pause/resume) calls.
var phaseOverrides = map[string]Phase{
	"PUT /serial": PreBoot,
	"PATCH /vm":   PostBoot,
}

// PhaseOf returns when method path (a spec path template) is allowed: the
// summary says "Pre-boot only" or "Post-boot only", else phaseOverrides.
func (s *Spec) PhaseOf(method, path string) Phase {
	if p, ok := phaseOverrides[strings.ToUpper(method)+" "+path]; ok {
		return p
	}
	op := s.Paths[path][strings.ToLower(method)]
	switch {
	case strings.Contains(op.Summary, "Pre-boot only"):
		return PreBoot
	case strings.Contains(op.Summary, "Post-boot only"):
		return PostBoot
	}
	return Any
}

// Route finds the spec path template and the path parameters of a
// request path ("/drives/root" -> "/drives/{drive_id}", {drive_id: root}).
func (s *Spec) Route(path string) (string, map[string]string, bool) {
	if _, ok := s.Paths[path]; ok {
		return path, nil, true
	}
	for tmpl := range s.Paths {
		if !strings.Contains(tmpl, "{") {
			continue
		}
		names := regexp.MustCompile(`\{([^}]+)\}`).FindAllStringSubmatch(tmpl, -1)
		re := "^" + regexp.MustCompile(`\\\{[^}]+\\\}`).ReplaceAllString(regexp.QuoteMeta(tmpl), `([^/]+)`) + "$"
		m := regexp.MustCompile(re).FindStringSubmatch(path)
		if m == nil {
			continue
		}
		params := map[string]string{}
		for i, n := range names {
			params[n[1]] = m[i+1]
		}
		return tmpl, params, true
	}
	return "", nil, false
}

// BodySchema returns the body schema of an operation (nil: none).
func (s *Spec) BodySchema(method, tmpl string) *Schema {
	for _, p := range s.Paths[tmpl][strings.ToLower(method)].Parameters {
		if p.In == "body" {
			return p.Schema
		}
	}
	return nil
}

func (s *Spec) resolve(sc *Schema) *Schema {
	for sc != nil && sc.Ref != "" {
		sc = s.Definitions[strings.TrimPrefix(sc.Ref, "#/definitions/")]
	}
	return sc
}

// Fields returns the property names of definition name, sorted.
func (s *Spec) Fields(name string) []string {
	d := s.Definitions[name]
	if d == nil {
		return nil
	}
	var out []string
	for k := range d.Properties {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Validate checks a JSON body against sc the way Firecracker's
// deserializer (serde, deny_unknown_fields) does: unknown fields, missing
// required fields, wrong types and enum values are errors. The message
// follows Firecracker's ("An error occurred when deserializing the json
// body of a request: ...").
func (s *Spec) Validate(sc *Schema, body []byte) error {
	var v interface{}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return deserErr("%v", err)
	}
	if dec.More() {
		return deserErr("trailing characters")
	}
	return s.validate(sc, v, "")
}

func deserErr(format string, a ...any) error {
	return fmt.Errorf("An error occurred when deserializing the json body of a request: %s.", fmt.Sprintf(format, a...))
}

func (s *Spec) validate(sc *Schema, v interface{}, at string) error {
	sc = s.resolve(sc)
	if sc == nil {
		return nil
	}
	if len(sc.Enum) > 0 {
		str, _ := v.(string)
		ok := false
		var variants []string
		for _, e := range sc.Enum {
			variants = append(variants, fmt.Sprintf("`%v`", e))
			if fmt.Sprint(e) == str {
				ok = true
			}
		}
		if !ok {
			return deserErr("unknown variant `%v`%s, expected one of %s", v, where(at), strings.Join(variants, ", "))
		}
		return nil
	}
	switch sc.Type {
	case "object", "":
		if sc.Type == "" && sc.Properties == nil {
			return nil
		}
		obj, ok := v.(map[string]interface{})
		if !ok {
			return deserErr("invalid type: %s, expected struct%s", kind(v), where(at))
		}
		if sc.Properties == nil || sc.AdditionalProperties == true {
			return nil
		}
		keys := make([]string, 0, len(obj))
		for k := range obj {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			p, known := sc.Properties[k]
			if !known {
				var names []string
				for n := range sc.Properties {
					names = append(names, "`"+n+"`")
				}
				sort.Strings(names)
				return deserErr("unknown field `%s`%s, expected one of %s", k, where(at), strings.Join(names, ", "))
			}
			if err := s.validate(p, obj[k], join(at, k)); err != nil {
				return err
			}
		}
		for _, r := range sc.Required {
			if _, ok := obj[r]; !ok {
				return deserErr("missing field `%s`%s", r, where(at))
			}
		}
	case "array":
		arr, ok := v.([]interface{})
		if !ok {
			return deserErr("invalid type: %s, expected a sequence%s", kind(v), where(at))
		}
		for i, e := range arr {
			if err := s.validate(sc.Items, e, fmt.Sprintf("%s[%d]", at, i)); err != nil {
				return err
			}
		}
	case "string":
		if _, ok := v.(string); !ok {
			return deserErr("invalid type: %s, expected a string%s", kind(v), where(at))
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			return deserErr("invalid type: %s, expected a boolean%s", kind(v), where(at))
		}
	case "integer", "number":
		n, ok := v.(json.Number)
		if !ok {
			return deserErr("invalid type: %s, expected an integer%s", kind(v), where(at))
		}
		f, err := n.Float64()
		if err != nil || sc.Type == "integer" && strings.ContainsAny(n.String(), ".eE") {
			return deserErr("invalid type: floating point `%s`, expected an integer%s", n, where(at))
		}
		if sc.Minimum != nil && f < *sc.Minimum || sc.Maximum != nil && f > *sc.Maximum {
			return deserErr("invalid value: integer `%s`%s is out of range", n, where(at))
		}
	}
	return nil
}

func join(at, k string) string {
	if at == "" {
		return k
	}
	return at + "." + k
}

func where(at string) string {
	if at == "" {
		return ""
	}
	return " (at " + at + ")"
}

func kind(v interface{}) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case string:
		return fmt.Sprintf("string %q", x)
	case bool:
		return fmt.Sprintf("boolean `%v`", x)
	case json.Number:
		return "integer `" + x.String() + "`"
	case []interface{}:
		return "sequence"
	default:
		return "map"
	}
}
