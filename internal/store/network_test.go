package store

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/banger-sh/banger/internal/errdefs"
)

func TestLeases(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var gotUsed map[string]bool
	var gotLast string
	pick := func(next string) PickAddr {
		return func(used map[string]bool, last string) (string, error) {
			gotUsed, gotLast = used, last
			return next, nil
		}
	}
	a := &Lease{VMID: "a", Tap: "bgt0", MAC: "52:54:00:00:00:01", Egress: "nat"}
	if err := s.AllocateLease(ctx, a, pick("10.0.0.2")); err != nil {
		t.Fatal(err)
	}
	if a.Addr != "10.0.0.2" || a.CreatedAt.IsZero() || gotLast != "" || len(gotUsed) != 0 {
		t.Fatalf("first lease %+v, last %q, used %v", a, gotLast, gotUsed)
	}
	b := &Lease{VMID: "b", Tap: "bgt1", MAC: "52:54:00:00:00:02", Egress: "none"}
	if err := s.AllocateLease(ctx, b, pick("10.0.0.3")); err != nil {
		t.Fatal(err)
	}
	if gotLast != "10.0.0.2" || !gotUsed["10.0.0.2"] {
		t.Fatalf("second pick saw last %q used %v", gotLast, gotUsed)
	}
	// One lease per VM; an address, tap or MAC taken is a conflict.
	if err := s.AllocateLease(ctx, &Lease{VMID: "a", Tap: "bgt9", MAC: "x", Egress: "nat"}, pick("10.0.0.9")); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("second lease for a: %v", err)
	}
	if err := s.AllocateLease(ctx, &Lease{VMID: "c", Tap: "bgt2", MAC: "y", Egress: "nat"}, pick("10.0.0.3")); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("address taken: %v", err)
	}
	if err := s.AllocateLease(ctx, &Lease{VMID: "c", Tap: "bgt1", MAC: "y", Egress: "nat"}, pick("10.0.0.4")); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("tap taken: %v", err)
	}
	if err := s.AllocateLease(ctx, &Lease{VMID: "c", Tap: "bgt2", MAC: "y", Egress: "nat"}, func(map[string]bool, string) (string, error) {
		return "", errdefs.Unavailable("full")
	}); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("pick error: %v", err)
	}
	got, err := s.GetLease(ctx, "b")
	if err != nil || got.Addr != "10.0.0.3" || got.Tap != "bgt1" || got.Egress != "none" {
		t.Fatalf("get b: %+v %v", got, err)
	}
	if _, err := s.GetLease(ctx, "zz"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("get missing: %v", err)
	}
	if err := s.SetLeaseEgress(ctx, "b", "shared"); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetLease(ctx, "b"); err != nil || got.Egress != "shared" || got.Addr != "10.0.0.3" {
		t.Fatalf("b after set egress: %+v %v", got, err)
	}
	if err := s.SetLeaseEgress(ctx, "zz", "nat"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("set egress of missing: %v", err)
	}
	if err := s.DeleteLease(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteLease(ctx, "a"); err != nil {
		t.Fatalf("delete again: %v", err)
	}
	all, err := s.ListLeases(ctx)
	if err != nil || len(all) != 1 || all[0].VMID != "b" {
		t.Fatalf("list: %v %v", all, err)
	}
	// The cursor survives deletes.
	s.AllocateLease(ctx, &Lease{VMID: "d", Tap: "bgt3", MAC: "z", Egress: "nat"}, pick("10.0.0.5"))
	if gotLast != "10.0.0.3" {
		t.Fatalf("cursor %q", gotLast)
	}
}
