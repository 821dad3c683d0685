package vmmtest

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

func TestReadReady(t *testing.T) {
	host, guest := net.Pipe()
	defer host.Close()
	go func() {
		io.WriteString(guest, "noise\nbanger-test: booting\n"+ReadyLine+"\n")
		guest.Close()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := ReadReady(ctx, host); err != nil {
		t.Fatal(err)
	}

	// A silent guest: bounded by ctx.
	host2, guest2 := net.Pipe()
	defer host2.Close()
	defer guest2.Close()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	if err := ReadReady(ctx2, host2); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("silent guest: %v", err)
	}
}

func TestProcessesMentioning(t *testing.T) {
	// This test binary's own command line is excluded.
	if pids := processesMentioning(os.Args[0]); len(pids) != 0 {
		t.Errorf("found %v", pids)
	}
	if !processMentions(os.Getpid(), os.Args[0]) {
		t.Error("own command line not matched")
	}
}

func TestCheckStatic(t *testing.T) {
	if err := checkStatic("/bin/busybox"); err != nil {
		t.Logf("busybox: %v", err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	_ = checkStatic(exe) // either answer is fine; it must not panic
	if err := checkStatic("/nonexistent"); err == nil {
		t.Error("missing file accepted")
	}
}
