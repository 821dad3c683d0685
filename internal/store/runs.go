package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Run is a run's row; Record is owned (and typed) by internal/run.
type Run struct {
	ID        string
	State     string
	CreatedAt string
	Record    json.RawMessage
}

// PutRun inserts or replaces a run's row.
func (s *Store) PutRun(ctx context.Context, r *Run) error {
	// Fixed width, so that the text order is the time order.
	t := time.Now().UTC().Format("2006-01-02T15:04:05.000000000Z")
	if r.CreatedAt == "" {
		r.CreatedAt = t
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO runs (id, state, created_at, updated_at, record) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT(id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at, record = excluded.record`,
		r.ID, r.State, r.CreatedAt, t, rawOr(r.Record, "{}"))
	if err != nil {
		return fmt.Errorf("save run %s: %w", r.ID, err)
	}
	return nil
}

// GetRun finds a run by id, or by a unique prefix of it.
func (s *Store) GetRun(ctx context.Context, id string) (*Run, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, state, created_at, record FROM runs WHERE id = ? OR id LIKE ? ESCAPE '\' ORDER BY id = ? DESC LIMIT 2`,
		id, likePrefix(id), id)
	if err != nil {
		return nil, err
	}
	runs, err := scanRuns(rows)
	if err != nil {
		return nil, err
	}
	switch {
	case len(runs) == 0:
		return nil, notFound("run", id)
	case runs[0].ID != id && len(runs) > 1:
		return nil, notFound("run", id+" (ambiguous prefix)")
	}
	return runs[0], nil
}

// ListRuns lists runs, newest first, at most limit (0: all).
func (s *Store) ListRuns(ctx context.Context, limit int) ([]*Run, error) {
	q := `SELECT id, state, created_at, record FROM runs ORDER BY created_at DESC, id DESC`
	if limit > 0 {
		q += fmt.Sprintf(" LIMIT %d", limit)
	}
	rows, err := s.db.QueryContext(ctx, q)
	if err != nil {
		return nil, err
	}
	return scanRuns(rows)
}

// DeleteRun removes a run's row.
func (s *Store) DeleteRun(ctx context.Context, id string) error {
	res, err := s.db.ExecContext(ctx, `DELETE FROM runs WHERE id = ?`, id)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return notFound("run", id)
	}
	return nil
}

func scanRuns(rows *sql.Rows) ([]*Run, error) {
	defer rows.Close()
	var out []*Run
	for rows.Next() {
		var r Run
		var rec string
		if err := rows.Scan(&r.ID, &r.State, &r.CreatedAt, &rec); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				break
			}
			return nil, err
		}
		r.Record = json.RawMessage(rec)
		out = append(out, &r)
	}
	return out, rows.Err()
}

// likePrefix is a LIKE pattern matching strings that start with p.
func likePrefix(p string) string {
	var b []byte
	for i := 0; i < len(p); i++ {
		if c := p[i]; c == '%' || c == '_' || c == '\\' {
			b = append(b, '\\')
		}
		b = append(b, p[i])
	}
	return string(b) + "%"
}
