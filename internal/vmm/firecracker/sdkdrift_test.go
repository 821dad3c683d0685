package firecracker

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/firecracker-microvm/firecracker-go-sdk/client/models"

	"github.com/banger-sh/banger/internal/vmm/firecracker/fcfake"
)

// TestSDKModelsAgainstSpec: every JSON field of the SDK v1.0.0 models
// the backend sends exists in Firecracker v1.16.1's spec, except the ones
// listed here, which v1.16.1 rejects and the backend must never set (they
// are omitempty, so an unset one is not sent; the contract test proves
// what is actually sent). A new SDK version that adds fields fails here.
func TestSDKModelsAgainstSpec(t *testing.T) {
	spec, err := fcfake.LoadSpec()
	if err != nil {
		t.Fatal(err)
	}
	rejected := map[string]bool{
		"SnapshotCreateParams.version": true, // removed from Firecracker's API after v1.0
	}
	for def, model := range map[string]any{
		"MachineConfiguration": models.MachineConfiguration{},
		"BootSource":           models.BootSource{},
		"Drive":                models.Drive{},
		"PartialDrive":         models.PartialDrive{},
		"NetworkInterface":     models.NetworkInterface{},
		"Vsock":                models.Vsock{},
		"InstanceActionInfo":   models.InstanceActionInfo{},
		"Vm":                   models.VM{},
		"SnapshotCreateParams": models.SnapshotCreateParams{},
		"SnapshotLoadParams":   loadParams{},
		"MemoryBackend":        memBackend{},
		"NetworkOverride":      networkOverride{},
		"VsockOverride":        vsockOverride{},
	} {
		fields := spec.Fields(def)
		if len(fields) == 0 {
			t.Errorf("spec has no definition %s", def)
			continue
		}
		rt := reflect.TypeOf(model)
		for i := 0; i < rt.NumField(); i++ {
			tag, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
			if tag == "" || tag == "-" {
				continue
			}
			known := slices.Contains(fields, tag)
			switch {
			case !known && !rejected[def+"."+tag]:
				t.Errorf("%s (%s): field %q is not in Firecracker %s's spec", rt.Name(), def, tag, fcfake.SpecVersion)
			case known && rejected[def+"."+tag]:
				t.Errorf("%s.%s is listed as rejected but the spec has it", def, tag)
			case !known && !strings.Contains(rt.Field(i).Tag.Get("json"), "omitempty"):
				t.Errorf("%s.%s is rejected by the spec and always sent", def, tag)
			}
		}
	}
}
