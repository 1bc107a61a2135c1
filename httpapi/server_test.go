package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/kms/memkms"
	"github.com/rekeyhq/rekey/status"
	"github.com/rekeyhq/rekey/store/memstore"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testNow is the fixed clock of every test.
var testNow = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

type bundle struct {
	store *memstore.Store
	kms   *memkms.KMS
	srv   *Server
	reg   *prometheus.Registry
}

// faultSwitch injects a fault while set; safe for concurrent use.
type faultSwitch struct{ err atomic.Pointer[error] }

func (f *faultSwitch) set(err error) {
	if err == nil {
		f.err.Store(nil)
		return
	}
	f.err.Store(&err)
}

func (f *faultSwitch) get() error {
	if p := f.err.Load(); p != nil {
		return *p
	}
	return nil
}

// setup returns a server over an empty memstore and one memkms backend
// called "mem", with a registry for /metrics. mutate may change the config
// before New.
func setup(t *testing.T, mutate ...func(*Config)) *bundle {
	t.Helper()
	b := &bundle{store: memstore.New(), kms: memkms.New(), reg: prometheus.NewRegistry()}
	b.store.Now = func() time.Time { return testNow }
	cfg := Config{
		Store:    b.store,
		Backends: map[string]rekey.KMS{"mem": b.kms},
		Gatherer: b.reg,
		Now:      func() time.Time { return testNow },
	}
	for _, m := range mutate {
		m(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	b.srv = srv
	return b
}

type response struct {
	code   int
	header http.Header
	body   string
}

func (b *bundle) do(t *testing.T, method, target string) response {
	t.Helper()
	rec := httptest.NewRecorder()
	b.srv.Handler().ServeHTTP(rec, httptest.NewRequest(method, target, nil))
	return response{code: rec.Code, header: rec.Result().Header, body: rec.Body.String()}
}

func (b *bundle) get(t *testing.T, target string) response { return b.do(t, http.MethodGet, target) }

func TestNewValidates(t *testing.T) {
	t.Parallel()
	good := memstore.New()
	tests := []struct {
		name  string
		cfg   Config
		field string
	}{
		{"no store", Config{}, "Store"},
		{"negative timeout", Config{Store: good, ReadyTimeout: -time.Second}, "ReadyTimeout"},
		{"nil backend", Config{Store: good, Backends: map[string]rekey.KMS{"aws": nil}}, `Backends["aws"]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := New(tt.cfg)
			if !errors.Is(err, rekey.ErrInvalidArgument) || !strings.Contains(err.Error(), tt.field) {
				t.Fatalf("New = %v, want ErrInvalidArgument naming %s", err, tt.field)
			}
		})
	}
	if _, err := New(Config{Store: good}); err != nil {
		t.Fatalf("New with only a store: %v", err)
	}
}

func TestHealthz(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.store.Fail = func(string) error { return errors.New("down") } // liveness ignores the store
	r := b.get(t, "/healthz")
	if r.code != http.StatusOK || r.body != "ok\n" {
		t.Fatalf("/healthz = %d %q, want 200 ok", r.code, r.body)
	}
}

func TestReadyz(t *testing.T) {
	t.Parallel()
	var storeFault, kmsFault faultSwitch
	b := setup(t)
	b.store.Fail = func(op string) error {
		if op == "Ping" {
			return storeFault.get()
		}
		return nil
	}
	b.kms.Fail = func(op, ref string) error {
		if op == memkms.OpPing {
			return kmsFault.get()
		}
		return nil
	}

	r := b.get(t, "/readyz")
	if r.code != http.StatusOK || !strings.HasPrefix(r.body, "ready\n") {
		t.Fatalf("healthy /readyz = %d %q, want 200 ready", r.code, r.body)
	}

	storeFault.set(&rekey.UnreachableError{Service: "store:sqlite", Err: errors.New("database file: no such file")})
	r = b.get(t, "/readyz")
	if r.code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz with the store down = %d, want 503", r.code)
	}
	if !strings.Contains(r.body, "FAIL store: ") || !strings.Contains(r.body, "no such file") {
		t.Errorf("/readyz body does not name the store and its error:\n%s", r.body)
	}
	if strings.Contains(r.body, "backend:mem") {
		t.Errorf("/readyz names the healthy backend as failing:\n%s", r.body)
	}

	// Checks are not cached: the store's recovery shows at once. A key on
	// the failing backend is named with it.
	storeFault.set(nil)
	ref, err := b.kms.CreateKey(t.Context(), "payments")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.store.CreateKey(t.Context(), rekey.Key{Name: "payments", Backend: "mem", BackendRef: ref, ActiveVersion: 1, ExpiresAt: testNow.Add(rekey.Day),
		Policy: rekey.Policy{RotationPeriod: 2 * rekey.Day, RotateWithin: rekey.Day / 2, NotifyWithin: rekey.Day, Grace: rekey.Day}, CreatedAt: testNow},
		rekey.KeyVersion{Key: "payments", Version: 1, State: rekey.VersionActive, CreatedAt: testNow}); err != nil {
		t.Fatal(err)
	}
	kmsFault.set(&rekey.UnreachableError{Service: "kms:mem", Err: errors.New("connection refused")})
	r = b.get(t, "/readyz")
	if r.code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz with the backend down = %d, want 503", r.code)
	}
	if !strings.Contains(r.body, "FAIL backend:mem: ") || !strings.Contains(r.body, "connection refused") || !strings.Contains(r.body, "keys on it: payments") {
		t.Errorf("/readyz body does not name the backend, its error and its key:\n%s", r.body)
	}
	if strings.Contains(r.body, "FAIL store") {
		t.Errorf("/readyz names the healthy store as failing:\n%s", r.body)
	}

	r = b.get(t, "/readyz?format=json")
	if r.code != http.StatusServiceUnavailable || r.header.Get("Content-Type") != "application/json" {
		t.Fatalf("/readyz?format=json = %d %s", r.code, r.header.Get("Content-Type"))
	}
	var rep readyReport
	if err := json.Unmarshal([]byte(r.body), &rep); err != nil {
		t.Fatalf("decode %q: %v", r.body, err)
	}
	if rep.Ready || len(rep.Checks) != 2 || !rep.Checks[0].OK || rep.Checks[1].OK ||
		rep.Checks[1].Component != "backend:mem" || !strings.Contains(rep.Checks[1].Error, "connection refused") {
		t.Errorf("JSON report = %+v", rep)
	}

	kmsFault.set(nil)
	if r := b.get(t, "/readyz"); r.code != http.StatusOK {
		t.Fatalf("/readyz after recovery = %d %q, want 200", r.code, r.body)
	}
}

// pingless is a backend without the Pinger capability.
type pingless struct{ rekey.KMS }

func TestReadyzSkipsBackendsThatCannotPing(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *Config) {
		k := memkms.New()
		k.Fail = func(string, string) error { return errors.New("never asked") }
		c.Backends["plain"] = pingless{k}
	})
	r := b.get(t, "/readyz?format=json")
	if r.code != http.StatusOK || strings.Contains(r.body, "plain") {
		t.Fatalf("/readyz = %d %s", r.code, r.body)
	}
}

// TestReadyzTimeout: a Ping that hangs, even one that ignores its context,
// makes /readyz answer 503 after ReadyTimeout, not hang with it.
func TestReadyzTimeout(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	b := setup(t, func(c *Config) { c.ReadyTimeout = 20 * time.Millisecond })
	b.kms.Fail = func(op, ref string) error {
		if op == memkms.OpPing {
			<-release // ignores the context on purpose
		}
		return nil
	}
	start := time.Now()
	r := b.get(t, "/readyz")
	if r.code != http.StatusServiceUnavailable || !strings.Contains(r.body, "FAIL backend:mem: no answer within 20ms") {
		t.Fatalf("/readyz = %d %q", r.code, r.body)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("/readyz took %s with a 20ms timeout", took)
	}
}

// TestReadyzChecksConcurrently: the store and the backend are asked at the
// same time, so the probe takes one timeout, not the sum.
func TestReadyzChecksConcurrently(t *testing.T) {
	t.Parallel()
	var wg sync.WaitGroup
	wg.Add(2)
	both := make(chan struct{})
	go func() { wg.Wait(); close(both) }()
	meet := func() error {
		wg.Done()
		select {
		case <-both:
			return nil
		case <-time.After(10 * time.Second):
			return errors.New("the other check never started")
		}
	}
	b := setup(t)
	b.store.Fail = func(op string) error {
		if op == "Ping" {
			return meet()
		}
		return nil
	}
	b.kms.Fail = func(op, ref string) error {
		if op == memkms.OpPing {
			return meet()
		}
		return nil
	}
	if r := b.get(t, "/readyz"); r.code != http.StatusOK {
		t.Fatalf("/readyz = %d %q", r.code, r.body)
	}
}

func TestStatusAPIMatchesStatusBuild(t *testing.T) {
	t.Parallel()
	b := setup(t)
	seed(t, b)
	r := b.get(t, "/api/v1/status")
	if r.code != http.StatusOK || r.header.Get("Content-Type") != "application/json" {
		t.Fatalf("/api/v1/status = %d %s: %s", r.code, r.header.Get("Content-Type"), r.body)
	}
	st, err := status.Build(context.Background(), b.store, nil, testNow)
	if err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	enc := json.NewEncoder(&want)
	enc.SetIndent("", "  ")
	if err := enc.Encode(st); err != nil {
		t.Fatal(err)
	}
	if r.body != want.String() {
		t.Fatalf("/api/v1/status differs from status.Build:\n got: %s\nwant: %s", r.body, want.String())
	}
	if len(st.Keys) != 4 || len(st.Rotations) != 1 {
		t.Fatalf("seed gave %d keys and %d open rotations, want 4 and 1", len(st.Keys), len(st.Rotations))
	}
}

func TestStatusAPIStoreFailure(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.store.Fail = func(op string) error {
		return &rekey.UnreachableError{Service: "store:postgres", Err: errors.New("dial postgres://rekey:hunter2@db:5432/rekey: refused")}
	}
	r := b.get(t, "/api/v1/status")
	if r.code != http.StatusInternalServerError || r.header.Get("Content-Type") != "application/json" {
		t.Fatalf("/api/v1/status = %d %s", r.code, r.header.Get("Content-Type"))
	}
	var body struct{ Error string }
	if err := json.Unmarshal([]byte(r.body), &body); err != nil || !strings.Contains(body.Error, "store:postgres unreachable") {
		t.Fatalf("error body %q (%v)", r.body, err)
	}
	if strings.Contains(r.body, "hunter2") {
		t.Fatalf("the error leaks a password: %s", r.body)
	}
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	b := setup(t)
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "rekey_test_events_total", Help: "A test counter."})
	b.reg.MustRegister(c)
	c.Add(3)
	r := b.get(t, "/metrics")
	if r.code != http.StatusOK || !strings.Contains(r.body, "rekey_test_events_total 3") {
		t.Fatalf("/metrics = %d:\n%s", r.code, r.body)
	}

	none := setup(t, func(c *Config) { c.Gatherer = nil })
	if r := none.get(t, "/metrics"); r.code != http.StatusNotFound {
		t.Fatalf("/metrics without a gatherer = %d, want 404", r.code)
	}
}

func TestRoutingAndHeaders(t *testing.T) {
	t.Parallel()
	b := setup(t)
	tests := []struct {
		method, target string
		code           int
	}{
		{"GET", "/", 200},
		{"HEAD", "/", 200},
		{"GET", "/healthz", 200},
		{"HEAD", "/healthz", 200},
		{"GET", "/readyz", 200},
		{"GET", "/api/v1/status", 200},
		{"GET", "/metrics", 200},
		{"GET", "/nope", 404},
		{"GET", "/index.html", 404},
		{"GET", "/api/v1/status/extra", 404},
		{"GET", "/healthz/", 404},
		{"POST", "/", 405},
		{"POST", "/api/v1/status", 405},
		{"PUT", "/healthz", 405},
		{"DELETE", "/metrics", 405},
		{"OPTIONS", "/readyz", 405},
		{"POST", "/nope", 405},
	}
	for _, tt := range tests {
		r := b.do(t, tt.method, tt.target)
		if r.code != tt.code {
			t.Errorf("%s %s = %d, want %d", tt.method, tt.target, r.code, tt.code)
		}
		if tt.code == 405 && r.header.Get("Allow") != "GET, HEAD" {
			t.Errorf("%s %s: Allow = %q", tt.method, tt.target, r.header.Get("Allow"))
		}
		for name, want := range map[string]string{
			"X-Content-Type-Options":  "nosniff",
			"Cache-Control":           "no-store",
			"X-Frame-Options":         "DENY",
			"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
		} {
			if got := r.header.Get(name); got != want {
				t.Errorf("%s %s: %s = %q, want %q", tt.method, tt.target, name, got, want)
			}
		}
	}
}

// serveBundle starts Serve on 127.0.0.1:0 and returns its address, the
// cancel that stops it and a wait for its result (which may be called more
// than once). Cleanup stops it and waits.
func serveBundle(t *testing.T, b *bundle) (addr string, stop context.CancelFunc, wait func() error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var serveErr error
	done := make(chan struct{})
	go func() {
		serveErr = b.srv.Serve(ctx, ln)
		close(done)
	}()
	wait = func() error {
		select {
		case <-done:
			return serveErr
		case <-time.After(20 * time.Second):
			t.Error("Serve did not return")
			return errors.New("Serve did not return")
		}
	}
	t.Cleanup(func() {
		cancel()
		wait()
	})
	return ln.Addr().String(), cancel, wait
}

func TestServeShutsDownGracefully(t *testing.T) {
	t.Parallel()
	b := setup(t)
	shuttingDown := make(chan struct{})
	b.srv.onShutdown = func() { close(shuttingDown) }

	// An in-flight request blocks in the store until released.
	entered, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	b.store.Fail = func(op string) error {
		if op == "ListKeys" {
			once.Do(func() { close(entered) })
			<-release
		}
		return nil
	}
	addr, stop, wait := serveBundle(t, b)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

	resp, err := client.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("X-Frame-Options") != "DENY" {
		t.Fatalf("/healthz over TCP = %d %v", resp.StatusCode, resp.Header)
	}

	type result struct {
		code int
		body string
		err  error
	}
	inflight := make(chan result, 1)
	go func() {
		resp, err := client.Get("http://" + addr + "/api/v1/status")
		if err != nil {
			inflight <- result{err: err}
			return
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		inflight <- result{code: resp.StatusCode, body: string(body), err: err}
	}()
	<-entered
	stop()
	<-shuttingDown
	if _, err := net.Dial("tcp", addr); err == nil {
		t.Error("the listener still accepts connections during shutdown")
	}
	close(release)
	res := <-inflight
	if res.err != nil || res.code != 200 || !strings.Contains(res.body, `"keys"`) {
		t.Fatalf("in-flight request during shutdown = %d %q %v, want it finished with 200", res.code, res.body, res.err)
	}
	if err := wait(); err != nil {
		t.Fatalf("Serve after cancel = %v, want nil", err)
	}
}

func TestServeShutdownTimeoutStillReturnsNil(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.srv.shutdownTimeout = 10 * time.Millisecond
	entered, release := make(chan struct{}), make(chan struct{})
	t.Cleanup(func() { close(release) })
	var once sync.Once
	b.store.Fail = func(op string) error {
		if op == "ListKeys" {
			once.Do(func() { close(entered) })
			<-release // outlives the shutdown timeout
		}
		return nil
	}
	addr, stop, wait := serveBundle(t, b)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	got := make(chan error, 1)
	go func() {
		resp, err := client.Get("http://" + addr + "/")
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		got <- err
	}()
	<-entered
	stop()
	if err := wait(); err != nil {
		t.Fatalf("Serve = %v, want nil after a forced close", err)
	}
	if err := <-got; err == nil {
		t.Error("the request outliving the shutdown timeout got a full response")
	}
}

func TestListenAndServe(t *testing.T) {
	t.Parallel()
	b := setup(t)
	if err := b.srv.ListenAndServe(context.Background(), ""); !errors.Is(err, rekey.ErrInvalidArgument) {
		t.Fatalf("empty address: %v", err)
	}
	// A port that is taken fails at once, before ctx ends.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := b.srv.ListenAndServe(context.Background(), ln.Addr().String()); err == nil || !strings.Contains(err.Error(), "listen on") {
		t.Fatalf("taken address: %v", err)
	}
	// A cancelled context ends a healthy server with nil.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.srv.ListenAndServe(ctx, "127.0.0.1:0"); err != nil {
		t.Fatalf("ListenAndServe with a cancelled context = %v", err)
	}
}

func TestCleanError(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"plain", "plain"},
		{"dial postgres://rekey:s3cr3t@db:5432/rekey failed", "dial postgres://REDACTED@db:5432/rekey failed"},
		{"host=db user=rekey password=s3cr3t dbname=x", "host=db user=rekey password=REDACTED dbname=x"},
		{"token='abc def' next", "token=REDACTED next"},
		{"two\nlines\t here", "two lines here"},
		{"kms:aws unreachable: timeout", "kms:aws unreachable: timeout"},
	}
	for _, tt := range tests {
		if got := cleanText(tt.in); got != tt.want {
			t.Errorf("cleanText(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	long := cleanText(strings.Repeat("é", 2*maxErrorLen))
	if len(long) > maxErrorLen+len("…") || !strings.HasSuffix(long, "…") || !strings.HasPrefix(long, "é") {
		t.Errorf("long error not cut cleanly: %d bytes", len(long))
	}
}
