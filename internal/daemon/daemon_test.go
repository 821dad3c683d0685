package daemon

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/banger-sh/banger/client"
	"github.com/banger-sh/banger/internal/config"
	"github.com/banger-sh/banger/internal/errdefs"
	"github.com/banger-sh/banger/internal/paths"
	"github.com/banger-sh/banger/internal/system"
	"github.com/banger-sh/banger/internal/testhome"
)

func testLayout(t testing.TB) paths.Layout { return testhome.Layout(t) }

// startDaemon runs an in-process daemon and returns a client of it.
func startDaemon(t testing.TB, l paths.Layout) (*client.Client, *bytes.Buffer) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	var logBuf bytes.Buffer
	go func() {
		done <- Run(ctx, Options{Layout: l, Config: config.Defaults(), NoNetwork: true, Ready: ready, LogTo: &syncWriter{w: &logBuf}})
	}()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("daemon exited: %v", err)
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatal("daemon not ready")
	}
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Error("daemon did not stop")
		}
	})
	return client.New(l.Socket()), &logBuf
}

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func TestVersionHealthAndSocketMode(t *testing.T) {
	l := testLayout(t)
	c, _ := startDaemon(t, l)
	ctx := context.Background()
	v, err := c.Version(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if v.APIVersion != "v1" || v.PID != os.Getpid() {
		t.Fatalf("version %+v", v)
	}
	h, err := c.Health(ctx)
	if err != nil || h.Status != "ok" || h.Socket != l.Socket() {
		t.Fatalf("health %+v %v", h, err)
	}
	st, err := os.Stat(l.Socket())
	if err != nil {
		t.Fatal(err)
	}
	if m := st.Mode().Perm(); m != 0o600 {
		t.Fatalf("socket mode %o", m)
	}
}

// TestSocketRefusesOtherUsers: the API is root's (it opens host paths
// for its callers), so a connection from another user is closed unheard
// even when the socket and its directory have been opened up to everyone.
func TestSocketRefusesOtherUsers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (to connect as another user)")
	}
	for _, tool := range []string{"setpriv", "curl"} {
		if _, err := system.LookPath(tool); err != nil {
			t.Fatal(err)
		}
	}
	l := testLayout(t)
	_, logs := startDaemon(t, l)
	// Everyone may reach the socket now, as a careless chmod would allow.
	for d := l.Runtime; d != "/" && d != filepath.Dir(d); d = filepath.Dir(d) {
		if strings.HasPrefix(d, os.TempDir()+"/") {
			os.Chmod(d, 0o755)
		}
	}
	os.Chmod(l.Socket(), 0o666)
	curl := []string{"curl", "-sS", "--max-time", "5", "--unix-socket", l.Socket(), "http://x/v1/health"}
	if out, err := system.Run(context.Background(), curl...); err != nil || !strings.Contains(string(out), `"ok"`) {
		t.Fatalf("control: root's curl: %q %v", out, err)
	}
	out, err := system.Run(context.Background(), append([]string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"}, curl...)...)
	if err == nil || strings.Contains(string(out), `"ok"`) {
		t.Fatalf("uid 65534 was answered: %q %v", out, err)
	}
	t.Logf("uid 65534: %v", err)
	waitLog := time.Now().Add(2 * time.Second)
	for !strings.Contains(logs.String(), "not root nor the daemon's user") && time.Now().Before(waitLog) {
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), `"uid":65534`) {
		t.Errorf("the refusal is not logged with the uid:\n%s", logs.String())
	}
}

func TestErrorCodesRoundTrip(t *testing.T) {
	l := testLayout(t)
	c, logs := startDaemon(t, l)
	ctx := context.Background()
	err := c.Do(ctx, "GET", "/v1/no/such/thing", nil, nil)
	if !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), "/v1/no/such/thing") {
		t.Fatalf("unknown endpoint: %v", err)
	}
	// Every request is logged with its id.
	if !strings.Contains(logs.String(), `"path":"/v1/no/such/thing"`) || !strings.Contains(logs.String(), `"req":`) {
		t.Fatalf("request not logged:\n%s", logs)
	}
}

// rawPost sends a body as-is, to check what a broken client can do.
func rawPost(t *testing.T, l paths.Layout, path string, body io.Reader) (*http.Response, string) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return net.Dial("unix", l.Socket())
	}}}
	resp, err := hc.Post("http://d"+path, "application/json", body)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestBadRequestsGetInvalidArgumentAndDaemonSurvives(t *testing.T) {
	l := testLayout(t)
	c, _ := startDaemon(t, l)
	for name, body := range map[string]io.Reader{
		"malformed":  strings.NewReader(`{"name": `),
		"wrong type": strings.NewReader(`{"name": 42}`),
		"unknown":    strings.NewReader(`{"bogus": true}`),
		"empty":      strings.NewReader(``),
		"huge":       io.MultiReader(strings.NewReader(`{"name":"`), io.LimitReader(zeros{}, 8<<20), strings.NewReader(`"}`)),
		"trailing":   strings.NewReader(`{"name":"a"} {"name":"b"}`),
	} {
		resp, b := rawPost(t, l, "/v1/vms", body)
		if resp.StatusCode != 400 || !strings.Contains(b, `"code":"invalid_argument"`) {
			t.Errorf("%s: %d %s", name, resp.StatusCode, b)
		}
	}
	if _, err := c.Health(context.Background()); err != nil {
		t.Fatalf("daemon died: %v", err)
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'a'
	}
	return len(p), nil
}

func TestSecondDaemonRefusesNamingPID(t *testing.T) {
	l := testLayout(t)
	startDaemon(t, l)
	err := Run(context.Background(), Options{Layout: l, Config: config.Defaults(), NoNetwork: true, LogTo: io.Discard})
	if !errors.Is(err, errdefs.ErrConflict) || !strings.Contains(err.Error(), "pid") {
		t.Fatalf("second daemon: %v", err)
	}
	if got := LockHolder(l.DaemonLock()); got != os.Getpid() {
		t.Fatalf("LockHolder = %d, want %d", got, os.Getpid())
	}
}

func TestStaleSocketAndLockAreAccepted(t *testing.T) {
	l := testLayout(t)
	l.Ensure()
	// What a SIGKILLed daemon leaves: a lock file with a dead pid and a
	// socket file nobody listens on.
	os.WriteFile(l.DaemonLock(), []byte("999999\n"), 0o644)
	ln, err := net.Listen("unix", l.Socket())
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Stat(l.Socket()); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}
	c, _ := startDaemon(t, l)
	if _, err := c.Health(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestStopRequestShutsDownAndRemovesSocket(t *testing.T) {
	l := testLayout(t)
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- Run(context.Background(), Options{Layout: l, Config: config.Defaults(), NoNetwork: true, Ready: ready, LogTo: io.Discard})
	}()
	<-ready
	if err := client.New(l.Socket()).StopDaemon(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("daemon did not stop")
	}
	if _, err := os.Stat(l.Socket()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left: %v", err)
	}
	if LockHolder(l.DaemonLock()) != 0 {
		t.Fatal("lock still held")
	}
	if _, err := client.New(l.Socket()).Health(context.Background()); !errors.Is(err, errdefs.ErrUnavailable) {
		t.Fatalf("health after stop: %v", err)
	}
	_ = filepath.Join
}

func TestRotatingLog(t *testing.T) {
	p := filepath.Join(t.TempDir(), "x.log")
	r, err := openRotating(p, 100)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 30; i++ {
		r.Write([]byte("0123456789\n"))
	}
	r.Close()
	st, _ := os.Stat(p)
	old, err := os.Stat(p + ".1")
	if err != nil || st.Size() > 100 || old.Size() > 100 {
		t.Fatalf("sizes: %v %v %v", st.Size(), old, err)
	}
}

func TestTwoDaemonsRaceOneWins(t *testing.T) {
	l := testLayout(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type res struct {
		err   error
		ready bool
	}
	results := make(chan res, 2)
	for i := 0; i < 2; i++ {
		go func() {
			ready := make(chan struct{})
			done := make(chan error, 1)
			go func() {
				done <- Run(ctx, Options{Layout: l, Config: config.Defaults(), NoNetwork: true, Ready: ready, LogTo: io.Discard})
			}()
			select {
			case <-ready:
				results <- res{ready: true}
				<-done
			case err := <-done:
				results <- res{err: err}
			}
		}()
	}
	a, b := <-results, <-results
	if a.ready == b.ready {
		t.Fatalf("want exactly one winner: %+v %+v", a, b)
	}
	loser := a
	if a.ready {
		loser = b
	}
	if !errors.Is(loser.err, errdefs.ErrConflict) {
		t.Fatalf("loser: %v", loser.err)
	}
}
