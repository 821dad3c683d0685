package crashpoint

import "testing"

// TestOnlyTheArmedPoint: Hit of another point returns. (That the armed
// point kills the daemon is proved by the e2e crash-point tests.)
func TestOnlyTheArmedPoint(t *testing.T) {
	if point != "" {
		t.Skip(Env + " is set")
	}
	Hit("create.row") // unarmed: a no-op
	point = "create.row"
	defer func() { point = "" }()
	Hit("create.disk")
	if !Armed("create.row") || Armed("create.disk") || Armed("") {
		t.Error("Armed disagrees with the armed point")
	}
}
