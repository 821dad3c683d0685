package vmm

// Process is a live VMM process found on the host.
//
// MERGE NOTE (branch fc): this file only exists so that the firecracker
// backend's FindProcesses compiles before branch neutral adds the same
// type to vmm.go (the agreed interface additions); delete this file when
// merging neutral.
type Process struct {
	PID int
	ID  string // the name of its runtime dir: Spec.RuntimeDir was runtimeRoot/ID
}
