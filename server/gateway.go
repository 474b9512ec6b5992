package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/time/rate"

	"github.com/google/uuid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/node"
	"github.com/syncd/syncd/replica"
	"github.com/syncd/syncd/resolver"
)

// ProtocolVersion is the websocket protocol's version (docs/protocol.md).
const ProtocolVersion = 1

// Subprotocol is the websocket subprotocol name a client offers.
const Subprotocol = "syncd.v1"

// Close codes a client can act on (docs/protocol.md).
const (
	CloseResync      websocket.StatusCode = 4000 // the send queue overflowed: reconnect and catch up
	CloseBadHello    websocket.StatusCode = 4002 // the first message was not a valid hello
	CloseForbidden   websocket.StatusCode = 4003 // the token does not allow this namespace
	CloseVersion     websocket.StatusCode = 4004 // unsupported protocol version
	CloseDuplicate   websocket.StatusCode = 4005 // this replica id is already connected here
	CloseUnavailable websocket.StatusCode = 4006 // the region is shutting down
)

// Hello is a device's first message.
type Hello struct {
	Type    string         `json:"type"` // "hello"
	Version int            `json:"version"`
	NS      string         `json:"ns"`
	Replica crdt.ReplicaID `json:"replica"`
	Vector  crdt.Vector    `json:"vector"`
	Colls   []string       `json:"colls,omitempty"`
}

// Welcome answers a hello.
type Welcome struct {
	Type       string         `json:"type"` // "welcome"
	Version    int            `json:"version"`
	Region     crdt.ReplicaID `json:"region"`
	Node       string         `json:"node"`
	HLC        hlc.Timestamp  `json:"hlc"`
	MaxMessage int64          `json:"max_message"`
}

// GatewayConfig sets up the websocket endpoint.
type GatewayConfig struct {
	Node           *node.Node
	Tokens         *Tokens
	AllowedOrigins []string // host patterns; "*" allows any origin
	MaxMessage     int64    // bytes per incoming message (default 4 MiB)
	QueueLen       int      // outgoing messages buffered per device (default 256)
	Rate           rate.Limit
	Burst          int
	Clock          func() hlc.Timestamp // the region's clock, for welcome
	Logger         *slog.Logger
}

// Gateway serves GET /v1/ws.
type Gateway struct {
	cfg GatewayConfig
	log *slog.Logger
}

// NewGateway builds the websocket handler.
func NewGateway(cfg GatewayConfig) *Gateway {
	if cfg.MaxMessage <= 0 {
		cfg.MaxMessage = 4 << 20
	}
	if cfg.QueueLen <= 0 {
		cfg.QueueLen = 256
	}
	if cfg.Rate == 0 {
		cfg.Rate, cfg.Burst = 500, 1000
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Gateway{cfg: cfg, log: cfg.Logger}
}

func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var scope *Scope
	if g.cfg.Tokens != nil {
		tok := FromRequest(r)
		if tok == "" {
			writeErr(w, http.StatusUnauthorized, "unauthorized", "missing token: Authorization header or a "+WSProtocolPrefix+"<token> subprotocol")
			return
		}
		sc, ok := g.cfg.Tokens.Lookup(tok)
		if !ok {
			writeErr(w, http.StatusUnauthorized, "unauthorized", "unknown token")
			return
		}
		scope = &sc
	}
	opts := &websocket.AcceptOptions{Subprotocols: []string{Subprotocol}}
	if slices.Contains(g.cfg.AllowedOrigins, "*") {
		opts.InsecureSkipVerify = true
	} else {
		opts.OriginPatterns = g.cfg.AllowedOrigins
	}
	c, err := websocket.Accept(w, r, opts)
	if err != nil {
		// Accept has answered (403 for a foreign Origin).
		g.log.Info("websocket refused", "remote", r.RemoteAddr, "origin", r.Header.Get("Origin"), "err", err)
		return
	}
	c.SetReadLimit(g.cfg.MaxMessage)
	s := &wsSession{g: g, c: c, scope: scope, q: make(chan replica.Message, g.cfg.QueueLen), quit: make(chan struct{})}
	s.serve(r.Context())
}

// wsSession is one device connection.
type wsSession struct {
	g     *Gateway
	c     *websocket.Conn
	scope *Scope
	hello Hello
	q     chan replica.Message
	once  sync.Once
	quit  chan struct{}
	why   websocket.StatusCode
	msg   string
}

func (s *wsSession) closeWith(code websocket.StatusCode, reason string) {
	s.once.Do(func() {
		s.why, s.msg = code, reason
		close(s.quit)
	})
}

func (s *wsSession) sendJSON(ctx context.Context, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return s.c.Write(ctx, websocket.MessageText, b)
}

func (s *wsSession) serve(ctx context.Context) {
	defer s.c.CloseNow()
	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, data, err := s.c.Read(hctx)
	cancel()
	if err != nil {
		s.c.Close(CloseBadHello, "no hello within 10s")
		return
	}
	if code, why := s.readHello(data); code != 0 {
		s.c.Close(code, why)
		return
	}
	n := s.g.cfg.Node
	detach, err := n.Attach(ctx, s.hello.NS, s.hello.Replica, s.deliver)
	if err != nil {
		if errors.Is(err, node.ErrStopped) {
			s.c.Close(CloseUnavailable, "region shutting down")
		} else {
			s.c.Close(CloseDuplicate, clipReason(err.Error()))
		}
		return
	}
	defer detach()
	var now hlc.Timestamp
	if s.g.cfg.Clock != nil {
		now = s.g.cfg.Clock()
	}
	if err := s.sendJSON(ctx, Welcome{Type: "welcome", Version: ProtocolVersion, Region: n.ID(), Node: n.Name(), HLC: now, MaxMessage: s.g.cfg.MaxMessage}); err != nil {
		return
	}
	// The hello's vector is its first sync request.
	first := replica.Message{Type: replica.MsgSyncReq, NS: s.hello.NS, From: s.hello.Replica, To: n.ID(),
		Vector: s.hello.Vector, Colls: s.hello.Colls}
	if err := n.DeliverDevice(ctx, first); err != nil {
		s.c.Close(websocket.StatusInternalError, clipReason(err.Error()))
		return
	}
	ctx, cancel = context.WithCancel(ctx)
	defer cancel()
	go s.readLoop(ctx)
	s.writeLoop(ctx)
}

func (s *wsSession) readHello(data []byte) (websocket.StatusCode, string) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s.hello); err != nil || s.hello.Type != "hello" {
		return CloseBadHello, "first message must be a hello"
	}
	h := s.hello
	if h.Version != ProtocolVersion {
		return CloseVersion, fmt.Sprintf("protocol version %d not supported (want %d)", h.Version, ProtocolVersion)
	}
	if err := crdt.ValidateName(h.NS); err != nil {
		return CloseBadHello, clipReason(err.Error())
	}
	for _, c := range h.Colls {
		if err := crdt.ValidateName(c); err != nil {
			return CloseBadHello, clipReason(err.Error())
		}
	}
	if h.Replica == uuid.Nil || h.Replica == s.g.cfg.Node.ID() {
		return CloseBadHello, "hello needs the device's own replica id"
	}
	if s.scope != nil && !s.scope.CanRead(h.NS) {
		return CloseForbidden, "token may not read namespace " + h.NS
	}
	if s.hello.Vector == nil {
		s.hello.Vector = crdt.Vector{}
	}
	return 0, ""
}

// deliver is called on the node loop: it must not block. A device whose
// queue is full is cut off with CloseResync; it reconnects and catches up
// from its vector, so nothing is lost and server memory stays bounded.
func (s *wsSession) deliver(m replica.Message) {
	if m.Type == replica.MsgBatch && !m.Sync && len(s.hello.Colls) > 0 {
		m = filterBatch(m, s.hello.Colls)
	}
	select {
	case s.q <- m:
	default:
		s.closeWith(CloseResync, "send queue full: reconnect and resync")
	}
}

// filterBatch keeps the changes of the followed collections (and schemas)
// and the whole stamp range, so the device's vector still advances.
func filterBatch(m replica.Message, colls []string) replica.Message {
	out := m
	out.Changes = nil
	for _, c := range m.Changes {
		if c.Coll == resolver.SchemaColl || slices.Contains(colls, c.Coll) {
			out.Changes = append(out.Changes, c)
		}
	}
	return out
}

func (s *wsSession) writeLoop(ctx context.Context) {
	for {
		select {
		case m := <-s.q:
			if err := s.sendJSON(ctx, m); err != nil {
				return
			}
		case <-s.quit:
			s.c.Close(s.why, s.msg)
			return
		case <-ctx.Done():
			return
		}
	}
}

func (s *wsSession) readLoop(ctx context.Context) {
	lim := rate.NewLimiter(s.g.cfg.Rate, s.g.cfg.Burst)
	n := s.g.cfg.Node
	for {
		_, data, err := s.c.Read(ctx)
		if err != nil {
			s.closeWith(websocket.StatusNormalClosure, "")
			return
		}
		if err := lim.Wait(ctx); err != nil {
			return
		}
		var head struct {
			Type string `json:"type"`
		}
		if json.Unmarshal(data, &head) != nil {
			s.refuse(replica.CodeInvalid, "message is not a JSON object with a type")
			continue
		}
		switch head.Type {
		case "ping":
			// Browsers cannot send websocket pings; this is the app-level
			// one. Conn.Write is safe beside the write loop.
			if s.sendJSON(ctx, map[string]string{"type": "pong"}) != nil {
				return
			}
			continue
		case "push", "sync_req":
		default:
			s.refuse(replica.CodeInvalid, fmt.Sprintf("a device may send push, sync_req or ping, not %q", head.Type))
			continue
		}
		var m replica.Message
		if err := json.Unmarshal(data, &m); err != nil {
			s.refuse(replica.CodeInvalid, "malformed message: "+err.Error())
			continue
		}
		if m.Type == replica.MsgPush && s.scope != nil && !s.scope.CanWrite(s.hello.NS) {
			s.refuse("forbidden", "token may not write namespace "+s.hello.NS)
			continue
		}
		// Identity comes from the hello, never from the message.
		m.NS, m.From, m.To = s.hello.NS, s.hello.Replica, n.ID()
		if m.Type == replica.MsgSyncReq {
			m.Colls = s.hello.Colls
		}
		if err := n.DeliverDevice(ctx, m); err != nil {
			if errors.Is(err, node.ErrStopped) {
				s.closeWith(CloseUnavailable, "region shutting down")
				return
			}
			// The replica has queued a coded error for the device where
			// one applies (forged, clock_skew, invalid).
			s.g.log.Info("device message refused", "device", s.hello.Replica, "type", head.Type, "err", err)
		}
	}
}

func (s *wsSession) refuse(code, text string) {
	s.deliver(replica.Message{Type: replica.MsgError, NS: s.hello.NS, From: s.g.cfg.Node.ID(), To: s.hello.Replica, Code: code, Text: text})
}

func clipReason(s string) string {
	// A close reason must fit a control frame (123 bytes).
	if len(s) > 120 {
		return s[:120]
	}
	return s
}
