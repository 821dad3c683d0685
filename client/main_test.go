package client_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/banger-sh/banger/internal/testhome"
)

// TestMain gives the examples a real daemon: an isolated BANGER_HOME
// (its own bridge, subnet, nftables table and DNS port) with the test
// image imported as "default", exported in the environment so that
// client.FromEnv finds it, as it finds a user's daemon. The examples boot
// real VMs, so they need root and the binaries of make build
// ($BANGER_TEST_BIN, which make test sets); without them (or with -short)
// only the tests run and the reason is printed.
func TestMain(m *testing.M) {
	flag.Parse()
	bin := os.Getenv("BANGER_TEST_BIN")
	why := ""
	switch {
	case testing.Short():
		why = "-short"
	case bin == "":
		why = "BANGER_TEST_BIN is not set (make test sets it to the binaries of make build)"
	case os.Geteuid() != 0:
		why = "not root"
	}
	if why != "" {
		fmt.Fprintf(os.Stderr, "client: the examples boot real VMs and are not run: %s\n", why)
		flag.Set("test.run", "^Test")
		os.Exit(m.Run())
	}
	h, err := testhome.New("bgsdk", bin, 200+os.Getpid()%40)
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	err = h.ImportTestImage(ctx, func(f string, a ...any) { fmt.Fprintf(os.Stderr, "client: "+f+"\n", a...) })
	cancel()
	code := 1
	if err != nil {
		fmt.Fprintln(os.Stderr, "client: import the test image:", err)
	} else {
		for _, kv := range h.Env() {
			k, v, _ := cutEnv(kv)
			os.Setenv(k, v)
		}
		code = m.Run()
	}
	if err := h.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "client: teardown:", err)
		code = 1
	}
	os.Exit(code)
}

func cutEnv(kv string) (string, string, bool) {
	for i := 0; i < len(kv); i++ {
		if kv[i] == '=' {
			return kv[:i], kv[i+1:], true
		}
	}
	return kv, "", false
}
