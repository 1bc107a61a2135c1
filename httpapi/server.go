// Package httpapi is the HTTP face of `rekey run`: Prometheus metrics, the
// liveness and readiness probes, the status API and a read-only status page.
//
//	GET /metrics        Prometheus text format, from Config.Gatherer
//	GET /healthz        200 "ok" while the process runs
//	GET /readyz         200 when the store, every pingable backend and every
//	                    DEK source answer, else 503 naming each failing
//	                    component and the keys it concerns
//	                    (?format=json for a JSON body)
//	GET /api/v1/status  the status.Status that `rekey status --json` prints,
//	                    byte for byte
//	GET /               a server-rendered HTML status page (no JavaScript,
//	                    no external assets), refreshed every 10 seconds
//
// Every other path is 404 and every method but GET and HEAD is 405. Every
// response carries X-Content-Type-Options: nosniff, X-Frame-Options: DENY,
// Cache-Control: no-store and a Content-Security-Policy that allows nothing
// but inline styles.
//
// Nothing served here is secret: no plaintext or wrapped key bytes, no
// backend references, no credentials (error messages are passed through a
// redaction of URL passwords and password=… pairs as a second line of
// defence). It is, however, unauthenticated: key names, DEK counts and
// rotation history are visible to anyone who can connect. The configured
// default address is therefore a loopback one (127.0.0.1:9464); binding to
// another interface is a deliberate choice of the operator, who should put
// an authenticating proxy or a network policy in front of it. Serve logs a
// warning when the listener is not on a loopback address.
package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/rekeyhq/rekey"
	"github.com/rekeyhq/rekey/status"
)

// DefaultReadyTimeout bounds each readiness check when Config.ReadyTimeout
// is zero.
const DefaultReadyTimeout = 2 * time.Second

// Server timeouts. The API is read-only and requests have no body, so the
// read side can be short; the write side leaves room for a status page over
// a large store.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 60 * time.Second
	maxHeaderBytes    = 16 << 10
	// shutdownTimeout is how long in-flight requests get to finish once the
	// context of Serve ends.
	shutdownTimeout = 5 * time.Second
	// buildTimeout bounds the store reads behind one status response, so
	// that a hung database gives a 500 rather than a hung request.
	buildTimeout = 10 * time.Second
)

// Header values set on every response.
const (
	headerCSP = "default-src 'none'; style-src 'unsafe-inline'"
)

// Config is what a Server serves. Only Store is required.
type Config struct {
	// Store is read for /readyz, /api/v1/status and the status page.
	Store rekey.Store
	// Backends are the configured KMS backends by name. Those that
	// implement rekey.Pinger are checked by /readyz; the others are not
	// checked (they have no cheap way to say they are reachable). The
	// status view reads wrap counts through them (rekey.VersionUsage).
	Backends map[string]rekey.KMS
	// Gatherer is served at /metrics. Nil means no /metrics (404).
	Gatherer prometheus.Gatherer
	// Logger receives request failures, readiness changes and server
	// errors. Nil discards them.
	Logger *slog.Logger
	// Now is the clock for the status view. Nil means time.Now.
	Now func() time.Time
	// ReadyTimeout bounds each readiness check. Zero means
	// DefaultReadyTimeout.
	ReadyTimeout time.Duration
	// Sources are the DEK sources (the application's own tables):
	// /readyz probes each.
	Sources []Source
	// SourceCounts, when set, counts a key's rows per version in the DEK
	// sources, for /api/v1/status and the status page
	// (rotation.Engine.SourceCounts).
	SourceCounts func(ctx context.Context, key string) []status.SourceCount
}

// Source is a DEK source as /readyz sees it.
type Source struct {
	// Name is the source's name (dek_sources[].name).
	Name string
	// Key is the key of every row of the source, or "" when a column
	// names each row's key (it may then hold rows of any key).
	Key string
	// Probe returns nil when the source's database answers and its table
	// can be read (source.Source.Probe).
	Probe func(context.Context) error
}

// Server serves the endpoints of the package doc. It is safe for
// concurrent use; one Server may back several listeners.
type Server struct {
	store        rekey.Store
	backends     map[string]rekey.KMS // wrap counts for the status view
	checks       []readyCheck
	log          *slog.Logger
	now          func() time.Time
	readyTimeout time.Duration
	hasMetrics   bool
	handler      http.Handler
	readiness    readinessLog
	sourceCounts func(ctx context.Context, key string) []status.SourceCount

	// shutdownTimeout is shutdownTimeout, shortened by tests.
	shutdownTimeout time.Duration
	// onShutdown, if set (by tests), is called when a graceful shutdown
	// has begun and the listener is closed.
	onShutdown func()
}

// New returns a Server for cfg. It returns an error matching
// rekey.ErrInvalidArgument, naming the field, when Store is nil, a backend
// is nil or ReadyTimeout is negative.
func New(cfg Config) (*Server, error) {
	switch {
	case cfg.Store == nil:
		return nil, rekey.Invalidf("httpapi: Config.Store is required")
	case cfg.ReadyTimeout < 0:
		return nil, rekey.Invalidf("httpapi: Config.ReadyTimeout must not be negative, got %s", cfg.ReadyTimeout)
	}
	checks, err := newReadyChecks(cfg.Store, cfg.Backends)
	if err != nil {
		return nil, err
	}
	for i, src := range cfg.Sources {
		if src.Name == "" || src.Probe == nil {
			return nil, rekey.Invalidf("httpapi: Config.Sources[%d] needs a Name and a Probe", i)
		}
		checks = append(checks, readyCheck{component: "source:" + src.Name, ping: src.Probe, sourceKey: src.Key})
	}
	s := &Server{
		store:           cfg.Store,
		backends:        cfg.Backends,
		checks:          checks,
		log:             cfg.Logger,
		now:             cfg.Now,
		readyTimeout:    cfg.ReadyTimeout,
		shutdownTimeout: shutdownTimeout,
		sourceCounts:    cfg.SourceCounts,
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.log = s.log.With("component", "http")
	if s.now == nil {
		s.now = time.Now
	}
	if s.readyTimeout == 0 {
		s.readyTimeout = DefaultReadyTimeout
	}

	mux := http.NewServeMux()
	// A "GET" pattern also matches HEAD; the server drops HEAD bodies.
	mux.HandleFunc("GET /{$}", s.servePage)
	mux.HandleFunc("GET /healthz", serveHealthz)
	mux.HandleFunc("GET /readyz", s.serveReadyz)
	mux.HandleFunc("GET /api/v1/status", s.serveStatus)
	if cfg.Gatherer != nil {
		s.hasMetrics = true
		mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{
			ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
			// One broken collector should not hide every other metric:
			// the alerts on a dead worker depend on them being scraped.
			ErrorHandling: promhttp.ContinueOnError,
		}))
	}
	s.handler = secureHeaders(readOnly(mux))
	return s, nil
}

// Handler returns the handler of every endpoint, with the security headers.
// Use it to mount the API in another server, or in tests.
func (s *Server) Handler() http.Handler { return s.handler }

// ListenAndServe listens on the TCP address addr and serves until ctx ends
// (see Serve). An empty addr is refused with rekey.ErrInvalidArgument: the
// caller decides whether to serve at all.
func (s *Server) ListenAndServe(ctx context.Context, addr string) error {
	if addr == "" {
		return rekey.Invalidf("httpapi: empty listen address")
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("httpapi: listen on %s: %w", addr, err)
	}
	return s.Serve(ctx, ln)
}

// Serve serves on ln, which it takes over and closes, until ctx ends. Then
// it stops accepting connections, gives in-flight requests 5 seconds to
// finish (closing their connections after that), and returns nil. It
// returns an error only if serving fails before ctx ends.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	addr := ln.Addr().String()
	// Requests outlive ctx during the graceful shutdown; baseCtx ends only
	// if that times out, so that their store calls stop too.
	baseCtx, cancelBase := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelBase()
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return baseCtx },
	}
	if s.onShutdown != nil {
		srv.RegisterOnShutdown(s.onShutdown)
	}
	if !isLoopback(ln.Addr()) {
		s.log.Warn("serving on a non-loopback address: the status page, status API and metrics are unauthenticated; restrict access with a proxy or network policy",
			"addr", addr)
	}
	s.log.Info("serving", "addr", addr, "metrics", s.hasMetrics)

	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return fmt.Errorf("httpapi: serve on %s: %w", addr, err)
	case <-ctx.Done():
	}

	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		// Shutdown only fails when in-flight requests outlast the timeout.
		// Stopping the daemon matters more than finishing a page: cut them.
		s.log.Warn("requests still running after the shutdown timeout: closing their connections",
			"timeout", s.shutdownTimeout.String(), "error", err.Error())
		cancelBase()
		_ = srv.Close()
	}
	<-served // http.ErrServerClosed
	s.log.Info("stopped", "addr", addr)
	return nil
}

func isLoopback(a net.Addr) bool {
	tcp, ok := a.(*net.TCPAddr)
	return ok && tcp.IP.IsLoopback()
}

// secureHeaders sets the security headers on every response, including the
// mux's own 404 and 405 answers.
func secureHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Cache-Control", "no-store")
		h.Set("Content-Security-Policy", headerCSP)
		h.Set("Referrer-Policy", "no-referrer")
		next.ServeHTTP(w, r)
	})
}

// readOnly answers 405 to every method but GET and HEAD, on every path: the
// whole API is read-only.
func readOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed: this API is read-only (GET, HEAD)", http.StatusMethodNotAllowed)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func serveHealthz(w http.ResponseWriter, r *http.Request) {
	writeBody(w, http.StatusOK, "text/plain; charset=utf-8", []byte("ok\n"))
}

// serveStatus writes status.Build encoded exactly as `rekey status --json`
// encodes it (json.Encoder, two-space indent, trailing newline).
func (s *Server) serveStatus(w http.ResponseWriter, r *http.Request) {
	st, err := s.buildStatus(r.Context())
	if err != nil {
		s.log.Error("status API: reading the store failed", "error", err.Error())
		body, _ := json.Marshal(map[string]string{"error": "reading status: " + cleanError(err)})
		writeBody(w, http.StatusInternalServerError, "application/json", append(body, '\n'))
		return
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	if err := enc.Encode(st); err != nil {
		s.log.Error("status API: encoding failed", "error", err.Error())
		writeBody(w, http.StatusInternalServerError, "application/json", []byte(`{"error":"encoding status failed"}`+"\n"))
		return
	}
	writeBody(w, http.StatusOK, "application/json", buf.Bytes())
}

func (s *Server) buildStatus(ctx context.Context) (status.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, buildTimeout)
	defer cancel()
	st, err := status.BuildWith(ctx, s.store, s.backends, s.now(), status.Options{SourceCounts: s.sourceCounts})
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		err = fmt.Errorf("store gave no answer within %s: %w", buildTimeout, err)
	}
	return st, err
}

// writeBody writes a complete, already rendered response, so that a failure
// half-way never sends half a document with a 200.
func writeBody(w http.ResponseWriter, code int, contentType string, body []byte) {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	_, _ = w.Write(body)
}
