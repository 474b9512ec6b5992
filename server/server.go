// Package server is a region's HTTP face: the document API of DESIGN.md,
// schema, the conflict inbox, status, metrics, and (gateway.go) the
// websocket endpoint for devices. It moves bytes and calls the node; the
// rules live in the core.
package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/node"
	"github.com/syncd/syncd/replica"
	"github.com/syncd/syncd/resolver"
)

// Reader is what the API reads from the store directly: reads never queue
// behind the write loop.
type Reader interface {
	GetDoc(ctx context.Context, k crdt.DocKey) (map[string]*crdt.Field, error)
	ListDocs(ctx context.Context, ns, coll, after string, limit int) ([]string, error)
	ConflictDocs(ctx context.Context, ns, after string, limit int) ([]crdt.DocKey, error)
}

// Config sets up the HTTP API.
type Config struct {
	Node     *node.Node
	Reader   Reader
	Tokens   *Tokens // nil: no auth (loopback only, or --insecure)
	MaxBody  int64   // default 1 MiB
	Gatherer prometheus.Gatherer
	Logger   *slog.Logger
	// Demo, if set, serves the browser demo at /.
	Demo http.Handler
	// Ws, if set, serves the websocket gateway at /v1/ws.
	Ws http.Handler
	// Now is the wall clock in ms, for lag in seconds (default time.Now).
	Now func() int64
	// Tick is the node's tick, to turn "ticks since heard" into time.
	Tick time.Duration
}

// Server serves the API.
type Server struct {
	cfg Config
	mux *http.ServeMux
	log *slog.Logger
}

// New builds the handler.
func New(cfg Config) *Server {
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = 1 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = func() int64 { return time.Now().UnixMilli() }
	}
	if cfg.Tick <= 0 {
		cfg.Tick = 50 * time.Millisecond
	}
	s := &Server{cfg: cfg, mux: http.NewServeMux(), log: cfg.Logger}
	m := s.mux
	m.HandleFunc("GET /v1/docs/{ns}/{coll}/{id}", s.read(s.getDoc))
	m.HandleFunc("PATCH /v1/docs/{ns}/{coll}/{id}", s.write(s.patchDoc))
	m.HandleFunc("POST /v1/docs/{ns}/{coll}/{id}/ops", s.write(s.postOps))
	m.HandleFunc("POST /v1/docs/{ns}/{coll}/{id}/resolve", s.write(s.postResolve))
	m.HandleFunc("DELETE /v1/docs/{ns}/{coll}/{id}", s.write(s.deleteDoc))
	m.HandleFunc("GET /v1/docs/{ns}/{coll}", s.read(s.listDocs))
	m.HandleFunc("GET /v1/schema/{ns}/{coll}", s.read(s.getSchema))
	m.HandleFunc("PUT /v1/schema/{ns}/{coll}", s.write(s.putSchema))
	m.HandleFunc("GET /v1/conflicts/{ns}", s.read(s.conflicts))
	m.HandleFunc("GET /v1/status", s.anyToken(s.status))
	m.HandleFunc("POST /v1/admin/isolate", s.anyWriter(s.isolate))
	m.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "ok\n")
	})
	if cfg.Gatherer != nil {
		m.Handle("GET /metrics", s.anyToken(promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{}).ServeHTTP))
	}
	if cfg.Ws != nil {
		m.Handle("GET /v1/ws", cfg.Ws)
	}
	if cfg.Demo != nil {
		m.Handle("GET /", cfg.Demo)
	} else {
		m.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain")
			fmt.Fprintf(w, "syncd region %s: see /v1/status\n", cfg.Node.Name())
		})
	}
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeErr(w, http.StatusNotFound, "not_found", "no such endpoint: "+r.Method+" "+r.URL.Path)
	})
	return s
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// apiError is an error with its HTTP status and code.
type apiError struct {
	status int
	code   string
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func errf(status int, code, format string, a ...any) error {
	return &apiError{status, code, fmt.Sprintf(format, a...)}
}

func writeErr(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]any{"error": map[string]string{"code": code, "message": msg}})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// fail maps an error to its status: every refusal the core can give has a
// sentinel, so this is the one place that decides what a client sees.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &ae):
		writeErr(w, ae.status, ae.code, ae.msg)
	case errors.As(err, &mbe):
		writeErr(w, http.StatusRequestEntityTooLarge, "too_large", fmt.Sprintf("body over %d bytes", s.cfg.MaxBody))
	case errors.Is(err, crdt.ErrWrongKind):
		writeErr(w, http.StatusConflict, "wrong_kind", err.Error())
	case errors.Is(err, crdt.ErrCounterRange):
		writeErr(w, http.StatusConflict, "counter_overflow", err.Error())
	case errors.Is(err, crdt.ErrTooDeep):
		writeErr(w, http.StatusBadRequest, "too_deep", err.Error())
	case errors.Is(err, crdt.ErrValueTooBig):
		writeErr(w, http.StatusRequestEntityTooLarge, "too_large", err.Error())
	case errors.Is(err, crdt.ErrBadName):
		writeErr(w, http.StatusBadRequest, "bad_name", err.Error())
	case errors.Is(err, crdt.ErrUnknownOp):
		writeErr(w, http.StatusBadRequest, "unknown_op", err.Error())
	case errors.Is(err, crdt.ErrUnknownKind):
		writeErr(w, http.StatusBadRequest, "unknown_kind", err.Error())
	case errors.Is(err, crdt.ErrInvalid), errors.Is(err, replica.ErrEmpty):
		writeErr(w, http.StatusBadRequest, "invalid", err.Error())
	case errors.Is(err, replica.ErrReserved):
		writeErr(w, http.StatusBadRequest, "reserved", err.Error())
	case errors.Is(err, node.ErrBadToken):
		writeErr(w, http.StatusBadRequest, "bad_token", err.Error())
	case errors.Is(err, node.ErrBehind):
		writeErr(w, http.StatusPreconditionFailed, "behind", err.Error())
	case errors.Is(err, node.ErrStopped), errors.Is(err, context.Canceled):
		writeErr(w, http.StatusServiceUnavailable, "unavailable", "the region is shutting down")
	default:
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		writeErr(w, http.StatusInternalServerError, "internal", "internal error (logged on the server)")
	}
}

type handler func(w http.ResponseWriter, r *http.Request) error

// auth checks the token for the namespace in the path.
func (s *Server) auth(r *http.Request, write bool) error {
	if s.cfg.Tokens == nil {
		return nil
	}
	tok := FromRequest(r)
	if tok == "" {
		return errf(http.StatusUnauthorized, "unauthorized", "missing bearer token")
	}
	sc, ok := s.cfg.Tokens.Lookup(tok)
	if !ok {
		return errf(http.StatusUnauthorized, "unauthorized", "unknown token")
	}
	ns := r.PathValue("ns")
	switch {
	case ns == "" && write && len(sc.Write) == 0:
		return errf(http.StatusForbidden, "forbidden", "this token may not write")
	case ns != "" && write && !sc.CanWrite(ns):
		return errf(http.StatusForbidden, "forbidden", "this token may not write namespace %s", ns)
	case ns != "" && !sc.CanRead(ns):
		return errf(http.StatusForbidden, "forbidden", "this token may not read namespace %s", ns)
	}
	return nil
}

func (s *Server) wrap(write bool, h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := s.auth(r, write); err != nil {
			s.fail(w, r, err)
			return
		}
		if err := checkPath(r); err != nil {
			s.fail(w, r, err)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, s.cfg.MaxBody)
		if err := h(w, r); err != nil {
			s.fail(w, r, err)
		}
	}
}

func (s *Server) read(h handler) http.HandlerFunc  { return s.wrap(false, h) }
func (s *Server) write(h handler) http.HandlerFunc { return s.wrap(true, h) }
func (s *Server) anyToken(h http.HandlerFunc) http.HandlerFunc {
	return s.wrap(false, func(w http.ResponseWriter, r *http.Request) error { h(w, r); return nil })
}
func (s *Server) anyWriter(h handler) http.HandlerFunc { return s.wrap(true, h) }

func checkPath(r *http.Request) error {
	if ns := r.PathValue("ns"); ns != "" {
		if err := crdt.ValidateName(ns); err != nil {
			return fmt.Errorf("namespace: %w", err)
		}
	}
	if c := r.PathValue("coll"); c != "" {
		if err := crdt.ValidateName(c); err != nil {
			return fmt.Errorf("collection: %w", err)
		}
	}
	if id := r.PathValue("id"); id != "" {
		if err := crdt.ValidateDocID(id); err != nil {
			return err
		}
	}
	return nil
}

// decode reads a JSON body strictly: nesting bounded before decoding,
// unknown fields refused, nothing after the value.
func decode(r *http.Request, v any) error {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		return err
	}
	if err := crdt.CheckDepth(b, 64); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, crdt.ErrInvalid) {
			return err // an unknown op or kind: the sentinel says which
		}
		return errf(http.StatusBadRequest, "bad_json", "malformed JSON body: %v", err)
	}
	if dec.More() {
		return errf(http.StatusBadRequest, "bad_json", "malformed JSON body: data after the value")
	}
	return nil
}

func (s *Server) docKey(r *http.Request) crdt.DocKey {
	return crdt.DocKey{NS: r.PathValue("ns"), Coll: r.PathValue("coll"), Doc: r.PathValue("id")}
}

func (s *Server) view(ctx context.Context, k crdt.DocKey) (resolver.View, bool, error) {
	fs, err := s.cfg.Reader.GetDoc(ctx, k)
	if err != nil {
		return resolver.View{}, false, fmt.Errorf("read %s: %w", k, err)
	}
	if len(fs) == 0 {
		return resolver.View{}, false, nil
	}
	return resolver.Render(k.Doc, fs, s.cfg.Node.NameOf), true, nil
}

func durationParam(r *http.Request, name string, def time.Duration) (time.Duration, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 || d > 5*time.Minute {
		return 0, errf(http.StatusBadRequest, "bad_param", "%s=%q: want a duration such as 500ms or 5s, at most 5m", name, v)
	}
	return d, nil
}

func (s *Server) getDoc(w http.ResponseWriter, r *http.Request) error {
	k := s.docKey(r)
	if tok := r.URL.Query().Get("after"); tok != "" {
		timeout, err := durationParam(r, "timeout", 5*time.Second)
		if err != nil {
			return err
		}
		if err := s.cfg.Node.WaitFor(r.Context(), k.NS, tok, timeout); err != nil {
			return err
		}
	}
	v, ok, err := s.view(r.Context(), k)
	if err != nil {
		return err
	}
	if !ok {
		return errf(http.StatusNotFound, "not_found", "no document %s", k)
	}
	writeJSON(w, http.StatusOK, v)
	return nil
}

// writeOpts reads ?ack= and ?timeout=.
func writeOpts(r *http.Request) (node.WriteOptions, error) {
	var o node.WriteOptions
	var err error
	if o.Timeout, err = durationParam(r, "timeout", 5*time.Second); err != nil {
		return o, err
	}
	switch a := r.URL.Query().Get("ack"); a {
	case "", "local":
	case "all":
		o.Ack = node.AckAll
	default:
		n, err := strconv.Atoi(a)
		if err != nil || n < 1 || n > 1000 {
			return o, errf(http.StatusBadRequest, "bad_param", "ack=%q: want local, all or a number of regions", a)
		}
		o.Ack = n
	}
	return o, nil
}

// WriteResponse is a write's answer: the document as it stands after the
// write, a session token, and whether the write concern was met.
type WriteResponse struct {
	resolver.View
	Token      string `json:"token"`
	Replicated bool   `json:"replicated"`
	Regions    int    `json:"regions"`
}

func (s *Server) commit(w http.ResponseWriter, r *http.Request, ops []resolver.Op) error {
	o, err := writeOpts(r)
	if err != nil {
		return err
	}
	k := s.docKey(r)
	for i := range ops {
		ops[i].Coll, ops[i].Doc = k.Coll, k.Doc
	}
	o.Render = true
	res, err := s.cfg.Node.Write(r.Context(), k.NS, ops, o)
	if err != nil {
		return err
	}
	status := http.StatusOK
	if !res.Replicated {
		status = http.StatusAccepted
	}
	writeJSON(w, status, WriteResponse{View: res.View, Token: res.Token, Replicated: res.Replicated, Regions: res.Regions})
	return nil
}

func (s *Server) patchDoc(w http.ResponseWriter, r *http.Request) error {
	var body map[string]json.RawMessage
	if err := decode(r, &body); err != nil {
		return err
	}
	if len(body) == 0 {
		return errf(http.StatusBadRequest, "invalid", "PATCH needs at least one field")
	}
	names := make([]string, 0, len(body))
	for f := range body {
		names = append(names, f)
	}
	slices.Sort(names)
	ops := make([]resolver.Op, 0, len(body))
	for _, f := range names {
		ops = append(ops, resolver.Op{Field: f, Op: crdt.OpSet, Value: body[f]})
	}
	return s.commit(w, r, ops)
}

func (s *Server) postOps(w http.ResponseWriter, r *http.Request) error {
	var body struct {
		Ops []struct {
			Field string          `json:"field"`
			Op    crdt.Op         `json:"op"`
			Value json.RawMessage `json:"value"`
		} `json:"ops"`
	}
	if err := decode(r, &body); err != nil {
		return err
	}
	if len(body.Ops) == 0 {
		return errf(http.StatusBadRequest, "invalid", `body needs "ops": [{"field","op","value"}...]`)
	}
	ops := make([]resolver.Op, len(body.Ops))
	for i, o := range body.Ops {
		if o.Op == crdt.OpDelete || o.Op == crdt.OpResolve {
			return errf(http.StatusBadRequest, "unknown_op", "op %d: %s has its own endpoint", i, o.Op)
		}
		ops[i] = resolver.Op{Field: o.Field, Op: o.Op, Value: o.Value}
	}
	return s.commit(w, r, ops)
}

func (s *Server) postResolve(w http.ResponseWriter, r *http.Request) error {
	var body struct {
		Field string          `json:"field"`
		Value json.RawMessage `json:"value"`
	}
	if err := decode(r, &body); err != nil {
		return err
	}
	return s.commit(w, r, []resolver.Op{{Field: body.Field, Op: crdt.OpResolve, Value: body.Value}})
}

func (s *Server) deleteDoc(w http.ResponseWriter, r *http.Request) error {
	return s.commit(w, r, []resolver.Op{{Op: crdt.OpDelete}})
}

func pageParams(r *http.Request) (int, string, error) {
	limit := 100
	if l := r.URL.Query().Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > 1000 {
			return 0, "", errf(http.StatusBadRequest, "bad_param", "limit=%q: want 1 to 1000", l)
		}
		limit = n
	}
	return limit, r.URL.Query().Get("after"), nil
}

func (s *Server) listDocs(w http.ResponseWriter, r *http.Request) error {
	limit, after, err := pageParams(r)
	if err != nil {
		return err
	}
	ns, coll := r.PathValue("ns"), r.PathValue("coll")
	ids, err := s.cfg.Reader.ListDocs(r.Context(), ns, coll, after, limit)
	if err != nil {
		return fmt.Errorf("list %s/%s: %w", ns, coll, err)
	}
	out := struct {
		Docs []resolver.View `json:"docs"`
		Next string          `json:"next,omitempty"`
	}{Docs: []resolver.View{}}
	for _, id := range ids {
		v, ok, err := s.view(r.Context(), crdt.DocKey{NS: ns, Coll: coll, Doc: id})
		if err != nil {
			return err
		}
		if ok {
			out.Docs = append(out.Docs, v)
		}
	}
	if len(ids) == limit {
		out.Next = ids[len(ids)-1]
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) schemaOf(ctx context.Context, ns, coll string) (resolver.Schema, error) {
	fs, err := s.cfg.Reader.GetDoc(ctx, crdt.DocKey{NS: ns, Coll: resolver.SchemaColl, Doc: coll})
	if err != nil {
		return resolver.Schema{}, fmt.Errorf("read schema %s/%s: %w", ns, coll, err)
	}
	return resolver.SchemaFromDoc(fs), nil
}

func (s *Server) getSchema(w http.ResponseWriter, r *http.Request) error {
	sc, err := s.schemaOf(r.Context(), r.PathValue("ns"), r.PathValue("coll"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, sc)
	return nil
}

func (s *Server) putSchema(w http.ResponseWriter, r *http.Request) error {
	var sc resolver.Schema
	if err := decode(r, &sc); err != nil {
		return err
	}
	if sc.Fields == nil {
		return errf(http.StatusBadRequest, "invalid", `body needs "fields": {"name": "lww|orset|counter|manual"}`)
	}
	ns, coll := r.PathValue("ns"), r.PathValue("coll")
	if resolver.IsReserved(coll) {
		return fmt.Errorf("%w: %q", replica.ErrReserved, coll)
	}
	o, err := writeOpts(r)
	if err != nil {
		return err
	}
	res, err := s.cfg.Node.PutSchema(r.Context(), ns, coll, sc, o)
	if err != nil {
		return err
	}
	cur, err := s.schemaOf(r.Context(), ns, coll)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, struct {
		resolver.Schema
		Token string `json:"token"`
	}{cur, res.Token})
	return nil
}

func (s *Server) conflicts(w http.ResponseWriter, r *http.Request) error {
	limit, after, err := pageParams(r)
	if err != nil {
		return err
	}
	ns := r.PathValue("ns")
	keys, err := s.cfg.Reader.ConflictDocs(r.Context(), ns, after, limit)
	if err != nil {
		return fmt.Errorf("conflicts in %s: %w", ns, err)
	}
	type item struct {
		Coll string `json:"coll"`
		resolver.View
	}
	out := struct {
		Count int    `json:"count"`
		Docs  []item `json:"docs"`
		Next  string `json:"next,omitempty"`
	}{Docs: []item{}}
	for _, k := range keys {
		v, ok, err := s.view(r.Context(), k)
		if err != nil {
			return err
		}
		if ok && v.HasConflicts() {
			out.Docs = append(out.Docs, item{k.Coll, v})
		}
	}
	out.Count = len(out.Docs)
	if len(keys) == limit {
		last := keys[len(keys)-1]
		out.Next = last.Coll + "/" + last.Doc
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// PeerStatus is one other region as this one sees it, per namespace.
type PeerStatus struct {
	Node          string         `json:"node"`
	Replica       crdt.ReplicaID `json:"replica"`
	Namespace     string         `json:"ns"`
	LastHeartbeat float64        `json:"last_heartbeat_s"` // seconds ago
	LagChanges    uint64         `json:"lag_changes"`      // its changes this region has not applied
	LagSeconds    float64        `json:"lag_seconds"`      // now - HLC of the newest change applied from it, while behind
	Vector        crdt.Vector    `json:"vector"`
}

// StatusResponse is GET /v1/status.
type StatusResponse struct {
	Node       string                     `json:"node"`
	Replica    crdt.ReplicaID             `json:"replica"`
	HLC        hlc.Timestamp              `json:"hlc"`
	Namespaces map[string]NamespaceStatus `json:"namespaces"`
	Peers      []PeerStatus               `json:"peers"`
	Clients    int                        `json:"clients"`
	Isolated   bool                       `json:"isolated"`
}

// NamespaceStatus is one namespace's replica.
type NamespaceStatus struct {
	Vector crdt.Vector `json:"vector"`
	Seq    uint64      `json:"seq"`
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	out, err := s.statusNow(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// statusNow is what GET /v1/status answers, and what the peer gauges on
// /metrics report: one computation, so the two never disagree.
func (s *Server) statusNow(ctx context.Context) (StatusResponse, error) {
	st, err := s.cfg.Node.Status(ctx)
	if err != nil {
		return StatusResponse{}, err
	}
	now := s.cfg.Now()
	out := StatusResponse{Node: s.cfg.Node.Name(), Replica: s.cfg.Node.ID(), Namespaces: map[string]NamespaceStatus{},
		Peers: []PeerStatus{}, Clients: st.Sessions, Isolated: st.Isolated}
	for ns, rs := range st.Replicas {
		out.Namespaces[ns] = NamespaceStatus{Vector: rs.Vector, Seq: rs.Seq}
		for id, p := range rs.Peers {
			ps := PeerStatus{Node: p.Name, Replica: id, Namespace: ns, Vector: p.Vector,
				LastHeartbeat: (time.Duration(rs.Tick-p.Heard) * s.cfg.Tick).Seconds()}
			if theirs, mine := p.Vector[id], rs.Vector[id]; theirs > mine {
				ps.LagChanges = theirs - mine
				if t := rs.Newest[id]; !t.IsZero() {
					ps.LagSeconds = float64(now-t.WallMillis()) / 1000
				}
			}
			out.Peers = append(out.Peers, ps)
		}
	}
	slices.SortFunc(out.Peers, func(a, b PeerStatus) int {
		return strings.Compare(a.Namespace+a.Node, b.Namespace+b.Node)
	})
	out.HLC = st.HLC
	return out, nil
}

var (
	peerLabels     = []string{"ns", "peer", "replica"}
	peerLagChanges = prometheus.NewDesc("syncd_peer_lag_changes",
		"Changes a peer region holds that this region has not applied.", peerLabels, nil)
	peerLagSeconds = prometheus.NewDesc("syncd_peer_lag_seconds",
		"Now minus the HLC of the newest change applied from a peer, while behind it (0 when caught up).", peerLabels, nil)
	peerHeard = prometheus.NewDesc("syncd_peer_last_heartbeat_seconds",
		"Seconds since this region last heard from a peer.", peerLabels, nil)
)

// PeerCollector reports each peer's lag and last heartbeat as gauges, read
// from the node when /metrics is scraped (the same figures as
// /v1/status). Register it with the registry behind Config.Gatherer.
func (s *Server) PeerCollector() prometheus.Collector { return peerCollector{s} }

type peerCollector struct{ s *Server }

func (c peerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- peerLagChanges
	ch <- peerLagSeconds
	ch <- peerHeard
}

func (c peerCollector) Collect(ch chan<- prometheus.Metric) {
	// A scrape must not hang on a saturated loop.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := c.s.statusNow(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(peerLagChanges, fmt.Errorf("read peer status: %w", err))
		return
	}
	for _, p := range st.Peers {
		l := []string{p.Namespace, p.Node, p.Replica.String()}
		ch <- prometheus.MustNewConstMetric(peerLagChanges, prometheus.GaugeValue, float64(p.LagChanges), l...)
		ch <- prometheus.MustNewConstMetric(peerLagSeconds, prometheus.GaugeValue, p.LagSeconds, l...)
		ch <- prometheus.MustNewConstMetric(peerHeard, prometheus.GaugeValue, p.LastHeartbeat, l...)
	}
}

func (s *Server) isolate(w http.ResponseWriter, r *http.Request) error {
	var body struct {
		Isolated *bool `json:"isolated"`
	}
	if err := decode(r, &body); err != nil {
		return err
	}
	if body.Isolated == nil {
		return errf(http.StatusBadRequest, "invalid", `body needs {"isolated": true|false}`)
	}
	if err := s.cfg.Node.SetIsolated(r.Context(), *body.Isolated); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]bool{"isolated": *body.Isolated})
	return nil
}
