package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/banger-sh/banger/internal/errdefs"
)

// Lease is a VM's network lease: its address, host tap and MAC. The
// network package owns the meaning of the fields.
type Lease struct {
	VMID      string
	Addr      string
	Tap       string
	MAC       string
	Egress    string
	CreatedAt time.Time
}

// PickAddr chooses a free address given the leased ones and the address
// handed out last ("" when none was). It returns an error when the subnet
// is full.
type PickAddr func(used map[string]bool, last string) (string, error)

// AllocateLease records l with an address chosen by pick, in one
// transaction, so that concurrent allocations never get the same address.
// l.Addr is set on success. A VM that already holds a lease is
// ErrAlreadyExists.
func (s *Store) AllocateLease(ctx context.Context, l *Lease, pick PickAddr) error {
	tx, err := s.db.BeginTx(ctx, nil) // _txlock=immediate: writers serialise here
	if err != nil {
		return fmt.Errorf("allocate lease for %s: %w", l.VMID, err)
	}
	defer tx.Rollback()
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM leases WHERE vm_id = ?`, l.VMID).Scan(&n); err != nil {
		return fmt.Errorf("allocate lease for %s: %w", l.VMID, err)
	}
	if n > 0 {
		return errdefs.AlreadyExists(fmt.Sprintf("vm %s already holds a lease", l.VMID))
	}
	rows, err := tx.QueryContext(ctx, `SELECT addr FROM leases`)
	if err != nil {
		return fmt.Errorf("allocate lease for %s: %w", l.VMID, err)
	}
	used := map[string]bool{}
	for rows.Next() {
		var a string
		if err := rows.Scan(&a); err != nil {
			rows.Close()
			return err
		}
		used[a] = true
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	var last string
	err = tx.QueryRowContext(ctx, `SELECT addr FROM lease_cursor WHERE id = 1`).Scan(&last)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	addr, err := pick(used, last)
	if err != nil {
		return fmt.Errorf("allocate lease for %s: %w", l.VMID, err)
	}
	t := now()
	if _, err := tx.ExecContext(ctx, `INSERT INTO leases (vm_id, addr, tap, mac, egress, created_at) VALUES (?, ?, ?, ?, ?, ?)`,
		l.VMID, addr, l.Tap, l.MAC, l.Egress, t); err != nil {
		if isUnique(err) {
			return errdefs.Conflict(fmt.Sprintf("lease for %s: address %s, tap %s or MAC %s is taken", l.VMID, addr, l.Tap, l.MAC))
		}
		return fmt.Errorf("allocate lease for %s: %w", l.VMID, err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO lease_cursor (id, addr) VALUES (1, ?) ON CONFLICT(id) DO UPDATE SET addr = excluded.addr`, addr); err != nil {
		return fmt.Errorf("allocate lease for %s: %w", l.VMID, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("allocate lease for %s: %w", l.VMID, err)
	}
	l.Addr, l.CreatedAt = addr, parseTime(t)
	return nil
}

const leaseCols = `vm_id, addr, tap, mac, egress, created_at`

func scanLease(r interface{ Scan(...any) error }) (*Lease, error) {
	var l Lease
	var c string
	if err := r.Scan(&l.VMID, &l.Addr, &l.Tap, &l.MAC, &l.Egress, &c); err != nil {
		return nil, err
	}
	l.CreatedAt = parseTime(c)
	return &l, nil
}

// GetLease returns a VM's lease, or ErrNotFound.
func (s *Store) GetLease(ctx context.Context, vmID string) (*Lease, error) {
	l, err := scanLease(s.db.QueryRowContext(ctx, `SELECT `+leaseCols+` FROM leases WHERE vm_id = ?`, vmID))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, notFound("lease of vm", vmID)
	}
	if err != nil {
		return nil, fmt.Errorf("get lease of %s: %w", vmID, err)
	}
	return l, nil
}

// ListLeases returns every lease, ordered by VM id.
func (s *Store) ListLeases(ctx context.Context) ([]*Lease, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+leaseCols+` FROM leases ORDER BY vm_id`)
	if err != nil {
		return nil, fmt.Errorf("list leases: %w", err)
	}
	defer rows.Close()
	var out []*Lease
	for rows.Next() {
		l, err := scanLease(rows)
		if err != nil {
			return nil, fmt.Errorf("list leases: %w", err)
		}
		out = append(out, l)
	}
	return out, rows.Err()
}

// SetLeaseEgress changes the egress of a VM's lease; a VM without one is
// ErrNotFound.
func (s *Store) SetLeaseEgress(ctx context.Context, vmID, egress string) error {
	res, err := s.db.ExecContext(ctx, `UPDATE leases SET egress = ? WHERE vm_id = ?`, egress, vmID)
	if err != nil {
		return fmt.Errorf("set egress of %s: %w", vmID, err)
	}
	if n, err := res.RowsAffected(); err == nil && n == 0 {
		return errdefs.NotFound(fmt.Sprintf("vm %s has no network lease", vmID))
	}
	return nil
}

// DeleteLease removes a VM's lease; a VM without one is not an error.
func (s *Store) DeleteLease(ctx context.Context, vmID string) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM leases WHERE vm_id = ?`, vmID); err != nil {
		return fmt.Errorf("delete lease of %s: %w", vmID, err)
	}
	return nil
}
