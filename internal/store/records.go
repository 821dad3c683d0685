package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/banger-sh/banger/internal/errdefs"
)

// Image is a registered guest image.
type Image struct {
	ID            string
	Name          string
	Dir           string
	Digest        string
	KernelVersion string
	Manifest      json.RawMessage
	CreatedAt     time.Time
	UpdatedAt     time.Time
}

// VM is a VM's row. Spec and Handle are owned (and typed) by internal/vm.
type VM struct {
	ID        string
	Name      string
	ImageID   string
	State     string
	Spec      json.RawMessage
	Handle    json.RawMessage
	LastError string
	CreatedAt time.Time
	UpdatedAt time.Time
	StartedAt time.Time
}

func rawOr(b json.RawMessage, def string) string {
	if len(b) == 0 {
		return def
	}
	return string(b)
}

// CreateImage registers an image; a taken name is ErrAlreadyExists.
func (s *Store) CreateImage(ctx context.Context, im *Image) error {
	t := now()
	_, err := s.db.ExecContext(ctx, `INSERT INTO images (id, name, dir, digest, kernel_version, manifest, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`, im.ID, im.Name, im.Dir, im.Digest, im.KernelVersion, rawOr(im.Manifest, "{}"), t, t)
	if isUnique(err) {
		return errdefs.AlreadyExists(fmt.Sprintf("image %q already exists", im.Name))
	}
	if err != nil {
		return fmt.Errorf("create image %s: %w", im.Name, err)
	}
	im.CreatedAt, im.UpdatedAt = parseTime(t), parseTime(t)
	return nil
}

const imageCols = `id, name, dir, digest, kernel_version, manifest, created_at, updated_at`

func scanImage(r interface{ Scan(...any) error }) (*Image, error) {
	var im Image
	var manifest, c, u string
	if err := r.Scan(&im.ID, &im.Name, &im.Dir, &im.Digest, &im.KernelVersion, &manifest, &c, &u); err != nil {
		return nil, err
	}
	im.Manifest = json.RawMessage(manifest)
	im.CreatedAt, im.UpdatedAt = parseTime(c), parseTime(u)
	return &im, nil
}

// GetImage finds an image by name or id.
func (s *Store) GetImage(ctx context.Context, nameOrID string) (*Image, error) {
	im, err := scanImage(s.db.QueryRowContext(ctx, `SELECT `+imageCols+` FROM images WHERE name = ? OR id = ? LIMIT 1`, nameOrID, nameOrID))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, notFound("image", nameOrID)
	}
	return im, err
}

// ListImages lists images by name.
func (s *Store) ListImages(ctx context.Context) ([]*Image, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+imageCols+` FROM images ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*Image
	for rows.Next() {
		im, err := scanImage(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, im)
	}
	return out, rows.Err()
}

// DeleteImage removes an image row. VMs that use it make this a conflict
// (foreign key); callers check first to name them.
func (s *Store) DeleteImage(ctx context.Context, id string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM images WHERE id = ?`, id)
	if err != nil {
		var ce interface{ Code() int }
		if errors.As(err, &ce) && ce.Code() == 787 { // SQLITE_CONSTRAINT_FOREIGNKEY
			return errdefs.Conflict(fmt.Sprintf("image %s is used by a VM", id))
		}
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return notFound("image", id)
	}
	return nil
}

// InsertVM inserts a VM row: this is how a create reserves its name. A
// taken name is ErrAlreadyExists.
func (s *Store) InsertVM(ctx context.Context, vm *VM) error {
	t := now()
	var imageID any
	if vm.ImageID != "" {
		imageID = vm.ImageID
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO vms (id, name, image_id, state, spec, handle, last_error, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`, vm.ID, vm.Name, imageID, vm.State, rawOr(vm.Spec, "{}"), rawOr(vm.Handle, "{}"), vm.LastError, t, t)
	if isUnique(err) {
		return errdefs.AlreadyExists(fmt.Sprintf("vm %q already exists", vm.Name))
	}
	if err != nil {
		return fmt.Errorf("insert vm %s: %w", vm.Name, err)
	}
	vm.CreatedAt, vm.UpdatedAt = parseTime(t), parseTime(t)
	return nil
}

// UpdateVM writes a VM's mutable fields (state, spec, handle, last error,
// started at).
func (s *Store) UpdateVM(ctx context.Context, vm *VM) error {
	t := now()
	started := ""
	if !vm.StartedAt.IsZero() {
		started = vm.StartedAt.UTC().Format(timeFormat)
	}
	res, err := s.db.ExecContext(ctx, `UPDATE vms SET state = ?, spec = ?, handle = ?, last_error = ?, started_at = ?, updated_at = ? WHERE id = ?`,
		vm.State, rawOr(vm.Spec, "{}"), rawOr(vm.Handle, "{}"), vm.LastError, started, t, vm.ID)
	if err != nil {
		return fmt.Errorf("update vm %s: %w", vm.Name, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return notFound("vm", vm.Name)
	}
	vm.UpdatedAt = parseTime(t)
	return nil
}

const vmCols = `id, name, COALESCE(image_id, ''), state, spec, handle, last_error, created_at, updated_at, started_at`

func scanVM(r interface{ Scan(...any) error }) (*VM, error) {
	var vm VM
	var spec, handle, c, u, st string
	if err := r.Scan(&vm.ID, &vm.Name, &vm.ImageID, &vm.State, &spec, &handle, &vm.LastError, &c, &u, &st); err != nil {
		return nil, err
	}
	vm.Spec, vm.Handle = json.RawMessage(spec), json.RawMessage(handle)
	vm.CreatedAt, vm.UpdatedAt, vm.StartedAt = parseTime(c), parseTime(u), parseTime(st)
	return &vm, nil
}

// GetVM finds a VM by name or id.
func (s *Store) GetVM(ctx context.Context, nameOrID string) (*VM, error) {
	vm, err := scanVM(s.db.QueryRowContext(ctx, `SELECT `+vmCols+` FROM vms WHERE name = ? OR id = ? LIMIT 1`, nameOrID, nameOrID))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, notFound("vm", nameOrID)
	}
	return vm, err
}

// ListVMs lists VMs by creation time.
func (s *Store) ListVMs(ctx context.Context) ([]*VM, error) {
	return s.queryVMs(ctx, `SELECT `+vmCols+` FROM vms ORDER BY created_at, name`)
}

// VMsUsingImage lists the VMs whose root is based on an image.
func (s *Store) VMsUsingImage(ctx context.Context, imageID string) ([]*VM, error) {
	return s.queryVMs(ctx, `SELECT `+vmCols+` FROM vms WHERE image_id = ? ORDER BY name`, imageID)
}

func (s *Store) queryVMs(ctx context.Context, q string, args ...any) ([]*VM, error) {
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*VM
	for rows.Next() {
		vm, err := scanVM(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, vm)
	}
	return out, rows.Err()
}

// DeleteVM removes a VM row.
func (s *Store) DeleteVM(ctx context.Context, id string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM vms WHERE id = ?`, id)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return notFound("vm", id)
	}
	return nil
}
