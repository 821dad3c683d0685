package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	sdk "github.com/firecracker-microvm/firecracker-go-sdk"
	"github.com/firecracker-microvm/firecracker-go-sdk/client/models"

	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/system"
	"github.com/banger-sh/banger/internal/vmm"
)

// Files of a snapshot dir.
const (
	templateName = "fc-template.json" // written at the template's Start
	shapeName    = "fc-shape.json"    // written by Snapshot, last
	vmstateName  = "vmstate"
	memName      = "mem"
)

func templateFile(dir string) string { return filepath.Join(dir, templateName) }

// templateInfo marks a snapshot dir as the one of a running template.
type templateInfo struct {
	ID            string `json:"id"`
	ControlSocket string `json:"control_socket"`
}

// snapshotInfo is the recorded shape of a snapshot: a restore must match
// it (vmm.ErrSnapshotMismatch otherwise).
type snapshotInfo struct {
	Identity  string      `json:"identity"`
	VCPUs     int         `json:"vcpus"`
	MemoryMiB int         `json:"memory_mib"`
	Disks     []diskShape `json:"disks"` // root first
	NICs      int         `json:"nics"`
}

type diskShape struct {
	Path     string `json:"path"` // the template's file, opened by the load
	Size     int64  `json:"size"`
	ReadOnly bool   `json:"read_only"`
}

func prepareSnapshotDir(spec vmm.Spec) error {
	ents, err := os.ReadDir(spec.SnapshotDir)
	if err != nil {
		return fmt.Errorf("snapshot dir: %w", err)
	}
	if len(ents) > 0 {
		return fmt.Errorf("snapshot dir %s is not empty: %w", spec.SnapshotDir, errdefs.ErrInvalidArgument)
	}
	b, _ := json.Marshal(templateInfo{ID: spec.ID, ControlSocket: APISocket(spec.RuntimeDir)})
	return os.WriteFile(templateFile(spec.SnapshotDir), b, 0o644)
}

// SnapshotIdentity implements vmm.Snapshotter: the Firecracker version and
// the binary's size and mtime (a snapshot is only restored by the same
// build).
func (b *Backend) SnapshotIdentity(ctx context.Context) (string, error) {
	path, err := system.LookPath(b.binary)
	if err != nil {
		return "", err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	key := fmt.Sprintf("%s %d %d", path, fi.Size(), fi.ModTime().UnixNano())
	b.mu.Lock()
	v, ok := b.versions[key]
	b.mu.Unlock()
	if !ok {
		if v, err = b.version(ctx, path); err != nil {
			return "", err
		}
		b.mu.Lock()
		b.versions[key] = v
		b.mu.Unlock()
	}
	return fmt.Sprintf("firecracker %s (%d bytes, %s)", v, fi.Size(), fi.ModTime().UTC().Format(time.RFC3339)), nil
}

// Snapshot implements vmm.Snapshotter: PATCH /vm Paused, PUT
// /snapshot/create (Full) into dir, then the process is killed. The shape
// file is written last: a dir without it holds nothing usable.
func (b *Backend) Snapshot(ctx context.Context, h vmm.Handle, dir string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	raw, err := os.ReadFile(templateFile(dir))
	var ti templateInfo
	if err != nil || json.Unmarshal(raw, &ti) != nil || ti.ControlSocket != h.ControlSocket {
		return fmt.Errorf("firecracker snapshot: the VM on %s is not the template of %s: %w", h.ControlSocket, dir, errdefs.ErrInvalidArgument)
	}
	if _, ok := b.proc.Alive(h.PID, h.StartTime, h.BootID); !ok {
		return errdefs.NotRunning(fmt.Sprintf("firecracker pid %d is not running", h.PID))
	}
	err = b.snapshot(ctx, h, dir)
	kctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), killTimeout)
	defer cancel()
	if kerr := b.Kill(kctx, h); kerr != nil && err == nil {
		err = kerr
	}
	if err != nil {
		for _, n := range []string{shapeName, vmstateName, memName} {
			_ = os.Remove(filepath.Join(dir, n))
		}
		return fmt.Errorf("firecracker snapshot into %s: %w", dir, err)
	}
	return nil
}

func (b *Backend) snapshot(ctx context.Context, h vmm.Handle, dir string) error {
	info, err := b.shapeOf(ctx, h)
	if err != nil {
		return err
	}
	c := client(h.ControlSocket)
	if _, err := c.PatchVM(ctx, &models.VM{State: sdk.String(models.VMStatePaused)}); err != nil {
		return fmt.Errorf("pause: %w", apiError(err))
	}
	if _, err := c.CreateSnapshot(ctx, &models.SnapshotCreateParams{
		SnapshotType: models.SnapshotCreateParamsSnapshotTypeFull,
		SnapshotPath: sdk.String(filepath.Join(dir, vmstateName)),
		MemFilePath:  sdk.String(filepath.Join(dir, memName)),
	}); err != nil {
		return fmt.Errorf("create snapshot: %w", apiError(err))
	}
	b2, _ := json.MarshalIndent(info, "", "  ")
	tmp := filepath.Join(dir, shapeName+".tmp")
	if err := os.WriteFile(tmp, b2, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, shapeName))
}

// shapeOf reads the VM's configuration back from Firecracker (GET
// /vm/config) so that the recorded shape is what the VMM runs, not what a
// caller remembers.
func (b *Backend) shapeOf(ctx context.Context, h vmm.Handle) (snapshotInfo, error) {
	id, err := b.SnapshotIdentity(ctx)
	if err != nil {
		return snapshotInfo{}, err
	}
	var cfg struct {
		Machine struct {
			VCPUs  int `json:"vcpu_count"`
			MemMiB int `json:"mem_size_mib"`
		} `json:"machine-config"`
		Drives []struct {
			ID       string `json:"drive_id"`
			Path     string `json:"path_on_host"`
			ReadOnly bool   `json:"is_read_only"`
		} `json:"drives"`
		NICs []json.RawMessage `json:"network-interfaces"`
	}
	if err := apiCall(ctx, h.ControlSocket, http.MethodGet, "/vm/config", nil, &cfg); err != nil {
		return snapshotInfo{}, fmt.Errorf("read vm config: %w", err)
	}
	info := snapshotInfo{Identity: id, VCPUs: cfg.Machine.VCPUs, MemoryMiB: cfg.Machine.MemMiB, NICs: len(cfg.NICs)}
	for i := range cfg.Drives {
		want := driveID(i)
		var found bool
		for _, d := range cfg.Drives {
			if d.ID != want {
				continue
			}
			fi, err := os.Stat(d.Path)
			if err != nil {
				return snapshotInfo{}, err
			}
			info.Disks = append(info.Disks, diskShape{Path: d.Path, Size: fi.Size(), ReadOnly: d.ReadOnly})
			found = true
		}
		if !found {
			return snapshotInfo{}, fmt.Errorf("vm config has no drive %s", want)
		}
	}
	return info, nil
}

// checkRestore compares spec with the recorded shape, before anything
// starts.
func (b *Backend) checkRestore(ctx context.Context, spec vmm.Spec) (*snapshotInfo, error) {
	dir := spec.Restore.Dir
	mismatch := func(format string, a ...any) error {
		return fmt.Errorf("firecracker restore %s from %s: %s: %w", spec.ID, dir, fmt.Sprintf(format, a...), vmm.ErrSnapshotMismatch)
	}
	raw, err := os.ReadFile(filepath.Join(dir, shapeName))
	if err != nil {
		return nil, mismatch("no snapshot (%v)", err)
	}
	var info snapshotInfo
	if err := json.Unmarshal(raw, &info); err != nil {
		return nil, mismatch("bad %s: %v", shapeName, err)
	}
	for _, n := range []string{vmstateName, memName} {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			return nil, mismatch("%v", err)
		}
	}
	id, err := b.SnapshotIdentity(ctx)
	if err != nil {
		return nil, mismatch("%v", err)
	}
	if id != info.Identity {
		return nil, mismatch("taken by %s, this is %s", info.Identity, id)
	}
	if spec.VCPUs != info.VCPUs || spec.MemoryMiB != info.MemoryMiB {
		return nil, mismatch("shape %d vCPU %d MiB, snapshot %d vCPU %d MiB", spec.VCPUs, spec.MemoryMiB, info.VCPUs, info.MemoryMiB)
	}
	disks := append([]vmm.Disk{spec.Root}, spec.Disks...)
	if len(disks) != len(info.Disks) {
		return nil, mismatch("%d disks, snapshot %d", len(disks), len(info.Disks))
	}
	for i, d := range disks {
		fi, err := os.Stat(d.Path)
		if err != nil {
			return nil, mismatch("%v", err)
		}
		if fi.Size() != info.Disks[i].Size || d.ReadOnly != info.Disks[i].ReadOnly {
			return nil, mismatch("drive %s: %d bytes read-only=%v, snapshot %d bytes read-only=%v", driveID(i), fi.Size(), d.ReadOnly, info.Disks[i].Size, info.Disks[i].ReadOnly)
		}
		// The load opens the template's files (recorded in the vmstate)
		// before banger points the drives at the clone's own.
		if _, err := os.Stat(info.Disks[i].Path); err != nil {
			return nil, mismatch("the template's drive %s is gone: %v", driveID(i), err)
		}
	}
	if len(spec.NICs) != info.NICs {
		return nil, mismatch("%d NICs, snapshot %d", len(spec.NICs), info.NICs)
	}
	return &info, nil
}

// loadParams is PUT /snapshot/load with the v1.12+/v1.16 overrides that
// the SDK's model lacks.
type loadParams struct {
	SnapshotPath     string            `json:"snapshot_path"`
	MemBackend       memBackend        `json:"mem_backend"`
	ResumeVM         bool              `json:"resume_vm"`
	NetworkOverrides []networkOverride `json:"network_overrides,omitempty"`
	VsockOverride    *vsockOverride    `json:"vsock_override,omitempty"`
}

type memBackend struct {
	BackendType string `json:"backend_type"`
	BackendPath string `json:"backend_path"`
}

type networkOverride struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
}

type vsockOverride struct {
	UdsPath string `json:"uds_path"`
}

// restore loads the snapshot paused, with the clone's taps and vsock
// socket, points every drive at the clone's file, and resumes.
func restore(ctx context.Context, c *sdk.Client, spec vmm.Spec) error {
	p := loadParams{
		SnapshotPath:  filepath.Join(spec.Restore.Dir, vmstateName),
		MemBackend:    memBackend{BackendType: "File", BackendPath: filepath.Join(spec.Restore.Dir, memName)},
		VsockOverride: &vsockOverride{UdsPath: VsockSocket(spec.RuntimeDir)},
	}
	for i, n := range spec.NICs {
		p.NetworkOverrides = append(p.NetworkOverrides, networkOverride{IfaceID: ifaceID(i), HostDevName: n.Tap})
	}
	if err := apiCall(ctx, APISocket(spec.RuntimeDir), http.MethodPut, "/snapshot/load", p, nil); err != nil {
		// A snapshot this Firecracker cannot load: the caller boots cold.
		return fmt.Errorf("load snapshot: %w: %w", err, vmm.ErrSnapshotMismatch)
	}
	for i, d := range append([]vmm.Disk{spec.Root}, spec.Disks...) {
		if _, err := c.PatchGuestDriveByID(ctx, driveID(i), d.Path); err != nil {
			return fmt.Errorf("point drive %s at %s: %w", driveID(i), d.Path, apiError(err))
		}
	}
	if _, err := c.PatchVM(ctx, &models.VM{State: sdk.String(models.VMStateResumed)}); err != nil {
		return fmt.Errorf("resume: %w", apiError(err))
	}
	return nil
}

// FaultError is a Firecracker API error response.
type FaultError struct {
	Method, Path string
	Status       int
	Fault        string // fault_message, bounded
}

func (e *FaultError) Error() string {
	return fmt.Sprintf("%s %s: %d: %s", e.Method, e.Path, e.Status, e.Fault)
}

// apiCall is one request on the API socket for what the SDK's client does
// not cover (v1.16 fields and endpoints). body nil sends none; out nil
// discards the answer. Bounded by apiTimeout and 1 MiB.
func apiCall(ctx context.Context, sock, method, path string, body, out any) error {
	ctx, cancel := context.WithTimeout(ctx, apiTimeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, rd)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		DisableKeepAlives: true,
	}}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var f struct {
			Fault string `json:"fault_message"`
		}
		_ = json.Unmarshal(data, &f)
		return &FaultError{Method: method, Path: path, Status: resp.StatusCode, Fault: bound(sanitize(f.Fault), 300)}
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("%s %s: %w", method, path, err)
		}
	}
	return nil
}
