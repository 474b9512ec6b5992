package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/time/rate"

	"github.com/google/uuid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/node"
	"github.com/syncd/syncd/replica"
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
	CloseDuplicate   websocket.StatusCode = 4005 // a newer connection of this replica replaced this one
	CloseUnavailable websocket.StatusCode = 4006 // the region is shutting down
)

// CodeForbidden refuses a push from a token that may only read.
const CodeForbidden = "forbidden"

// Hello is a device's first message.
type Hello struct {
	Type    string         `json:"type"` // "hello"
	Version int            `json:"version"`
	NS      string         `json:"ns"`
	Replica crdt.ReplicaID `json:"replica"`
	Vector  crdt.Vector    `json:"vector"`
	Colls   []string       `json:"colls,omitempty"`
	// Req numbers the hello as the first sync request (see
	// replica.Message.Req); optional.
	Req uint64 `json:"req,omitempty"`
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
	// Rate and Burst limit the messages a device sends (default 500/s,
	// bursts of 1,000); past them its messages wait, unread.
	Rate  rate.Limit
	Burst int
	// Heartbeat: at most one of the region's heartbeats per this period
	// goes to a device (default 1s). Within one connection nothing is
	// lost silently (a device that falls behind is cut), so a device needs
	// them only to know the connection is alive; at the regions' pace
	// (5/s) a thousand idle devices would cost 5,000 writes a second.
	Heartbeat time.Duration
	Clock     func() hlc.Timestamp // the region's clock, for welcome
	Logger    *slog.Logger
}

// Gateway serves GET /v1/ws.
//
// A connection costs one goroutine while idle: the handler's goroutine
// ends once the session is set up, the read loop owns the session, and a
// writer runs only while something waits to be sent.
type Gateway struct {
	cfg GatewayConfig
	log *slog.Logger

	// live maps a device to its current session, so that a reconnect
	// replaces a connection the server has not yet seen die (a phone
	// that changed networks leaves a half-open socket behind).
	mu   sync.Mutex
	live map[crdt.ReplicaID]*wsSession
	shut bool

	shared sharedCache
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
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Gateway{cfg: cfg, log: cfg.Logger, live: map[crdt.ReplicaID]*wsSession{}}
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
	// The session outlives this handler (the connection is hijacked), so
	// it does not use the request's context, which ends when we return.
	ctx, cancel := context.WithCancel(context.Background())
	s := &wsSession{g: g, c: c, scope: scope, ctx: ctx, cancel: cancel,
		q: make(chan *frame, g.cfg.QueueLen), quit: make(chan struct{}), closed: make(chan struct{})}
	if !s.open() {
		cancel()
		c.CloseNow()
		return
	}
	go s.readLoop()
}

// wsSession is one device connection.
type wsSession struct {
	g      *Gateway
	c      *websocket.Conn
	scope  *Scope
	hello  Hello
	filter string // the hello's collections, as a cache key ("" for all)
	ctx    context.Context
	cancel context.CancelFunc
	detach func()

	// q holds what waits to be written. Pointers: a queue of 256
	// Messages by value would cost 60 KiB per connection, idle or not.
	q        chan *frame
	writing  atomic.Bool  // a writer goroutine is running
	nextBeat atomic.Int64 // when the next heartbeat may go out, unix ns

	once   sync.Once
	quit   chan struct{} // closed when the session is being cut
	closed chan struct{} // closed when that cut's Close returned
}

// frame is one message to write, encoded once however many sessions send
// it (a fan-out goes to every device of the namespace).
type frame struct {
	m    *replica.Message
	once sync.Once
	b    []byte
	err  error
}

func (f *frame) bytes() ([]byte, error) {
	f.once.Do(func() {
		if f.b == nil {
			f.b, f.err = json.Marshal(f.m)
			f.m = nil
		}
	})
	return f.b, f.err
}

var pongFrame = &frame{b: []byte(`{"type":"pong"}`)}

// open reads the hello, attaches the device to the node and welcomes it.
func (s *wsSession) open() bool {
	hctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	_, data, err := s.c.Read(hctx)
	cancel()
	if err != nil {
		s.c.Close(CloseBadHello, "no hello within 10s")
		return false
	}
	if code, why := s.readHello(data); code != 0 {
		s.c.Close(code, why)
		return false
	}
	n := s.g.cfg.Node
	if !s.g.replace(s) {
		s.c.Close(CloseUnavailable, "region shutting down")
		return false
	}
	var now hlc.Timestamp
	if s.g.cfg.Clock != nil {
		now = s.g.cfg.Clock()
	}
	w := Welcome{Type: "welcome", Version: ProtocolVersion, Region: n.ID(), Node: n.Name(), HLC: now, MaxMessage: s.g.cfg.MaxMessage}
	b, _ := json.Marshal(w) // plain values always marshal
	// Queued before Attach, so it goes out before anything the node sends.
	s.enqueue(&frame{b: b})
	detach, err := n.Attach(s.ctx, s.hello.NS, s.hello.Replica, s.deliver)
	if err != nil {
		s.g.forget(s)
		if errors.Is(err, node.ErrStopped) {
			s.closeWith(CloseUnavailable, "region shutting down")
		} else {
			s.closeWith(websocket.StatusInternalError, clipReason(err.Error()))
		}
		<-s.closed
		return false
	}
	s.detach = detach
	// The hello's vector is its first sync request; the answer goes out
	// through the queue, after the welcome.
	first := replica.Message{Type: replica.MsgSyncReq, NS: s.hello.NS, From: s.hello.Replica, To: n.ID(),
		Vector: s.hello.Vector, Colls: s.hello.Colls, Req: s.hello.Req}
	if err := n.DeliverDevice(s.ctx, first); err != nil {
		s.closeWith(websocket.StatusInternalError, clipReason(err.Error()))
		<-s.closed
		s.teardown()
		return false
	}
	return true
}

// teardown detaches the session once its connection is done.
func (s *wsSession) teardown() {
	s.detach()
	s.g.forget(s)
	s.cancel()
	s.c.CloseNow()
}

// closeWith cuts the session with a close code, at most once. The close
// runs beside the writer: if that is stuck writing to a client that does
// not read, Close gives up on the frame after its own timeout and drops
// the connection, which unblocks it.
func (s *wsSession) closeWith(code websocket.StatusCode, reason string) {
	s.once.Do(func() {
		close(s.quit)
		go func() {
			defer close(s.closed)
			s.c.Close(code, reason)
		}()
	})
}

func (s *wsSession) write(b []byte) error {
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	defer cancel()
	return s.c.Write(ctx, websocket.MessageText, b)
}

// replace makes s the device's session and cuts the one before it, if
// any (the node hands the device's messages to the newest Attach).
func (g *Gateway) replace(s *wsSession) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.shut {
		return false
	}
	if old := g.live[s.hello.Replica]; old != nil {
		old.closeWith(CloseDuplicate, "replaced by a newer connection of this replica")
	}
	g.live[s.hello.Replica] = s
	return true
}

// Shutdown cuts every device with CloseUnavailable, so each reconnects
// (to another region if it has one) at once instead of waiting for its
// socket to time out, and refuses new ones.
func (g *Gateway) Shutdown() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.shut = true
	for _, s := range g.live {
		s.closeWith(CloseUnavailable, "region shutting down")
	}
}

func (g *Gateway) forget(s *wsSession) {
	g.mu.Lock()
	if g.live[s.hello.Replica] == s {
		delete(g.live, s.hello.Replica)
	}
	g.mu.Unlock()
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
	if h.Replica == uuid.Nil || h.Replica == s.g.cfg.Node.ID() || s.g.cfg.Node.NameOf(h.Replica) != "" {
		// A region's id would let a device push under the region's dots,
		// which the real region's changes would then be mistaken for.
		return CloseBadHello, "hello needs the device's own replica id (not a region's)"
	}
	if s.scope != nil && !s.scope.CanRead(h.NS) {
		return CloseForbidden, "token may not read namespace " + h.NS
	}
	if s.hello.Vector == nil {
		s.hello.Vector = crdt.Vector{}
	}
	if len(h.Colls) > 0 {
		cs := slices.Clone(h.Colls)
		slices.Sort(cs)
		s.filter = strings.Join(slices.Compact(cs), ",")
	}
	return 0, ""
}

// deliver is called on the node loop: it must not block. A device whose
// queue is full is cut off with CloseResync; it reconnects and catches up
// from its vector, so nothing is lost and server memory stays bounded.
func (s *wsSession) deliver(m replica.Message) {
	select {
	case <-s.quit:
		return // being cut: hold nothing more for it
	default:
	}
	if m.Type == replica.MsgHeartbeat {
		now := time.Now().UnixNano()
		if now < s.nextBeat.Load() {
			return
		}
		// A jittered period spreads the devices over the regions'
		// heartbeats, so a thousand of them are not all written at once.
		p := int64(s.g.cfg.Heartbeat)
		s.nextBeat.Store(now + p*3/4 + rand.Int64N(p/2+1))
	}
	var f *frame
	if m.To == uuid.Nil {
		f = s.g.shared.frame(m, s.filter, s.hello.Colls)
	} else {
		f = &frame{m: &m}
	}
	if !s.enqueue(f) {
		s.g.log.Warn("device cut off: send queue full", "device", s.hello.Replica, "queue", cap(s.q))
		s.closeWith(CloseResync, "send queue full: reconnect and resync")
	}
}

// enqueue queues a frame and makes sure a writer runs.
func (s *wsSession) enqueue(f *frame) bool {
	select {
	case s.q <- f:
	default:
		return false
	}
	if s.writing.CompareAndSwap(false, true) {
		go s.writeLoop()
	}
	return true
}

// writeLoop writes until the queue is empty, then ends: an idle
// connection keeps no writer goroutine.
func (s *wsSession) writeLoop() {
	for {
		select {
		case f := <-s.q:
			b, err := f.bytes()
			if err == nil {
				err = s.write(b)
			}
			if err != nil {
				// writing stays set: no writer runs for this session again.
				s.closeWith(websocket.StatusGoingAway, "write failed")
				return
			}
			continue
		case <-s.quit:
			return
		default:
		}
		s.writing.Store(false)
		// A frame queued between the empty check and the store would have
		// found a writer running and started none: look once more.
		if len(s.q) == 0 || !s.writing.CompareAndSwap(false, true) {
			return
		}
	}
}

// readLoop owns the session once it is open: it reads what the device
// sends and, when the connection ends, tears the session down.
func (s *wsSession) readLoop() {
	defer s.teardown()
	lim := rate.NewLimiter(s.g.cfg.Rate, s.g.cfg.Burst)
	n := s.g.cfg.Node
	for {
		_, data, err := s.c.Read(s.ctx)
		if err != nil {
			s.closeWith(websocket.StatusNormalClosure, "")
			// Let a close handshake in progress finish before the
			// teardown drops the connection under it.
			<-s.closed
			return
		}
		if err := lim.Wait(s.ctx); err != nil {
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
			// one.
			s.enqueue(pongFrame)
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
			s.refuse(CodeForbidden, "token may not write namespace "+s.hello.NS)
			continue
		}
		// Identity comes from the hello, never from the message.
		m.NS, m.From, m.To = s.hello.NS, s.hello.Replica, n.ID()
		if m.Type == replica.MsgSyncReq {
			m.Colls = s.hello.Colls
		}
		if err := n.DeliverDevice(s.ctx, m); err != nil {
			if errors.Is(err, node.ErrStopped) {
				s.closeWith(CloseUnavailable, "region shutting down")
				<-s.closed
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

// sharedCache encodes a broadcast once per collection filter. The node
// hands a fan-out or a heartbeat to every session of the namespace in
// turn, on its loop, so the message being delivered is recognised by the
// identity of its maps and changes; the cache holds the message, so
// those cannot be freed and their addresses reused by a later one.
type sharedCache struct {
	mu     sync.Mutex
	m      replica.Message
	frames map[string]*frame // by filter
}

func (c *sharedCache) frame(m replica.Message, filter string, colls []string) *frame {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.frames == nil || !sameBroadcast(c.m, m) {
		c.m, c.frames = m, map[string]*frame{}
	}
	f := c.frames[filter]
	if f == nil {
		if filter != "" && m.Type == replica.MsgBatch && !m.Sync {
			m = filterBatch(m, colls)
		}
		f = &frame{m: &m}
		c.frames[filter] = f
	}
	return f
}

func sameBroadcast(a, b replica.Message) bool {
	if a.Type != b.Type || a.From != b.From || a.NS != b.NS || len(a.Changes) != len(b.Changes) {
		return false
	}
	ptr := func(v any) uintptr { return uintptr(reflect.ValueOf(v).UnsafePointer()) }
	same := ptr(a.Head) == ptr(b.Head) && ptr(a.Base) == ptr(b.Base) && ptr(a.Vector) == ptr(b.Vector)
	if len(a.Changes) > 0 {
		same = same && &a.Changes[0] == &b.Changes[0]
	}
	// Two broadcasts without a map or a change between them have nothing
	// to tell them apart: encode each.
	known := a.Head != nil || a.Vector != nil || len(a.Changes) > 0
	return same && known
}

// filterBatch keeps the changes of the followed collections (and schemas)
// and the whole stamp range, so the device's vector still advances.
func filterBatch(m replica.Message, colls []string) replica.Message {
	out := m
	out.Changes = nil
	for _, c := range m.Changes {
		if replica.Follows(colls, c.Coll) {
			out.Changes = append(out.Changes, c)
		}
	}
	return out
}
