package cli

import (
	"github.com/banger-sh/banger/api"
	"github.com/banger-sh/banger/internal/config"
	"github.com/banger-sh/banger/internal/doctor"
)

// What commands print with --json, for programs. The shapes are pinned:
// TestJSONSchemas keeps testdata/schemas/*.json in step with these types,
// and the end-to-end tests validate real output against those files.

type versionOutput struct {
	Version    string           `json:"version"`
	Commit     string           `json:"commit"`
	APIVersion string           `json:"api_version"`
	GoVersion  string           `json:"go_version"`
	Daemon     *api.VersionInfo `json:"daemon,omitempty"`
}

type configOutput struct {
	ConfigFile string            `json:"config_file"`
	Config     config.Config     `json:"config"`
	Dirs       map[string]string `json:"dirs"`
}

type daemonStatus struct {
	Running bool             `json:"running"`
	PID     int              `json:"pid,omitempty"`
	Socket  string           `json:"socket"`
	Log     string           `json:"log"`
	Version *api.VersionInfo `json:"version,omitempty"`
	Health  *api.Health      `json:"health,omitempty"`
}

// streamLine is one NDJSON line of image build, import and warm --json.
type streamLine[T any] struct {
	Progress *api.Progress `json:"progress,omitempty"`
	Result   *T            `json:"result,omitempty"`
	Error    *api.Error    `json:"error,omitempty"`
}

// jsonOutput is what a command prints with --json; NDJSON outputs give the
// type of one line.
type jsonOutput struct {
	v      any
	ndjson bool
}

// JSONOutputs maps "group command" to its --json output.
var JSONOutputs = map[string]jsonOutput{
	"version":       {v: versionOutput{}},
	"doctor":        {v: doctor.Report{}},
	"config show":   {v: configOutput{}},
	"daemon status": {v: daemonStatus{}},
	"vm create":     {v: api.VM{}},
	"vm ls":         {v: []api.VM{}},
	"vm show":       {v: api.VM{}},
	"vm run":        {v: Event{}, ndjson: true},
	"vm exec":       {v: Event{}, ndjson: true},
	"vm cat":        {v: api.FileContent{}},
	"vm dir":        {v: api.DirListing{}},
	"image build":   {v: streamLine[api.Image]{}, ndjson: true},
	"image import":  {v: streamLine[api.Image]{}, ndjson: true},
	"image warm":    {v: streamLine[api.Template]{}, ndjson: true},
	"image ls":      {v: []api.Image{}},
	"image show":    {v: api.Image{}},
	"image prune":   {v: api.PruneResult{}},
	"run ls":        {v: []api.Run{}},
	"run show":      {v: api.Run{}},
	"run replay":    {v: replayResult{}},
}
