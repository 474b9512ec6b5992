// Package clientsdk is the Go SDK for devices: an offline-first replica of
// one namespace in a local SQLite file, kept in sync with any reachable
// region over the websocket protocol (docs/protocol.md).
//
// Writes go to the local store and its outbox in one transaction and are
// visible at once, connected or not. A background loop connects to one of
// the region URLs, pushes the outbox, catches up and follows live changes,
// reconnecting with backoff and jitter and failing over between regions.
// It runs the same replica core as the regions. Every method is safe to
// call from many goroutines.
//
// A collection's schema comes from the regions like any other change, so a
// fresh device should Sync once before writing set, counter or manual
// fields: until it knows the schema, every field is lww.
package clientsdk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/node"
	"github.com/syncd/syncd/replica"
	"github.com/syncd/syncd/server"
	"github.com/syncd/syncd/sqlitestore"
)

// Options configure a device.
type Options struct {
	Dir       string   // where the device keeps its SQLite file
	URLs      []string // region websocket URLs, e.g. ws://127.0.0.1:8080/v1/ws, tried in order; the device stays with one while it can reach it
	Namespace string
	Token     string
	// Collections the device follows (empty: all). Schemas always come.
	// Following more than the last Open fetches the followed collections
	// again from the start, once: what is held stays as it is, and Watch
	// reports only what the device did not hold.
	Collections []string
	Logger      *slog.Logger
	// Backoff between connection attempts: from MinBackoff doubling to
	// MaxBackoff, with jitter (defaults 100ms and 5s).
	MinBackoff, MaxBackoff time.Duration
	// Tick is the replica's logical time step (default 50ms): unanswered
	// pushes are sent again after 10 ticks.
	Tick time.Duration
	// Now reads the device's wall clock (default time.Now). The SDK
	// corrects it from the regions' clocks when it is far off.
	Now func() time.Time
}

// maxSkew is the device's bound on how far ahead of its clock a region's
// stamps may be; it is also how far off its clock may drift from a
// region's before it adopts the region's (by half of it).
const maxSkew = hlc.DefaultMaxSkew

// idleTimeout is how long a connection may stay silent before the device
// takes it for dead.
const idleTimeout = 10 * time.Second

// Client is one device's replica.
type Client struct {
	opts   Options
	st     *sqlitestore.Store
	n      *node.Node
	log    *slog.Logger
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// offset (ms) is added to Options.Now: the correction learned from
	// the regions' clocks. Read by the clock on the loop, written by the
	// connection goroutine.
	offset atomic.Int64

	mu       sync.Mutex
	region   string // node name of the connected region ("" when offline)
	url      string
	lastSync time.Time
	lastErr  string
	link     *link // the current connection (nil when offline)
	watchers map[*watcher]struct{}
	closed   bool
}

// ErrClosed is returned after Close.
var ErrClosed = errors.New("clientsdk: client closed")

// Open opens (or creates) the device's store and starts syncing in the
// background. It succeeds with no region reachable.
func Open(ctx context.Context, opts Options) (*Client, error) {
	if err := crdt.ValidateName(opts.Namespace); err != nil {
		return nil, fmt.Errorf("clientsdk: namespace: %w", err)
	}
	for _, c := range opts.Collections {
		if err := crdt.ValidateName(c); err != nil {
			return nil, fmt.Errorf("clientsdk: collection: %w", err)
		}
	}
	if opts.Dir == "" {
		return nil, errors.New("clientsdk: Options.Dir is required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 100 * time.Millisecond
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 5 * time.Second
	}
	if opts.MaxBackoff < opts.MinBackoff {
		opts.MaxBackoff = opts.MinBackoff
	}
	if opts.Tick <= 0 {
		opts.Tick = 50 * time.Millisecond
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("clientsdk: %w", err)
	}
	st, err := sqlitestore.Open(ctx, filepath.Join(opts.Dir, "device.db"), sqlitestore.Options{})
	if err != nil {
		return nil, fmt.Errorf("clientsdk: open store: %w", err)
	}
	// Before the replica is made: following more collections than last
	// time resets the vector it starts from (see sqlitestore.Follow).
	reset, err := st.Follow(ctx, opts.Namespace, opts.Collections)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("clientsdk: %w", err)
	}
	if reset {
		opts.Logger.Info("the followed collections widened: they are fetched again from the start",
			"ns", opts.Namespace, "collections", opts.Collections)
	}
	hw, err := st.NodeState(ctx)
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("clientsdk: %w", err)
	}
	c := &Client{opts: opts, st: st, log: opts.Logger, watchers: map[*watcher]struct{}{}}
	clock := hlc.NewClock(c.nowMillis, maxSkew)
	clock.Restore(hw)
	c.n = node.New(node.Config{
		ID: st.ReplicaID(), Name: "device", Role: replica.RoleDevice, Store: st, Clock: clock,
		Tick: opts.Tick, Logger: opts.Logger, OnCommit: c.onCommit,
	})
	runCtx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		if err := c.n.Run(runCtx); err != nil {
			c.log.Error("device loop stopped", "err", err)
		}
	}()
	if err := c.n.Open(ctx, opts.Namespace); err != nil {
		c.Close()
		return nil, fmt.Errorf("clientsdk: %w", err)
	}
	if len(opts.URLs) > 0 {
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			c.connectLoop(runCtx)
		}()
	}
	return c, nil
}

func (c *Client) nowMillis() int64 { return c.opts.Now().UnixMilli() + c.offset.Load() }

// ReplicaID is this device's replica id.
func (c *Client) ReplicaID() crdt.ReplicaID { return c.st.ReplicaID() }

// Close stops syncing and closes the store. Every write that returned is
// durable in the store; what is not yet pushed is pushed after the next
// Open.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	for w := range c.watchers {
		w.stop()
	}
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	return c.st.Close()
}

// Status is what the device knows of its sync.
type Status struct {
	Connected bool
	Region    string // the connected region's node name
	URL       string
	Pending   int  // local changes no region has acknowledged
	Synced    bool // caught up with the connected region, nothing pending
	// LastSync is when the device was last seen caught up with nothing
	// pending (zero: never, since Open).
	LastSync time.Time
	// LastError is the last connection failure or refusal, if any.
	LastError string
}

// Status reports the device's sync state.
func (c *Client) Status() Status {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var s Status
	if st, err := c.n.Status(ctx); err == nil {
		if rs, ok := st.Replicas[c.opts.Namespace]; ok {
			s.Pending, s.Synced = rs.Outbox, rs.Synced
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s.Region, s.URL, s.LastError = c.region, c.url, c.lastErr
	s.Connected = c.region != ""
	s.Synced = s.Synced && s.Connected
	if s.Synced {
		c.lastSync = time.Now()
	}
	s.LastSync = c.lastSync
	return s
}

// Sync returns once every local write is acknowledged by a region and the
// device holds everything that region held when Sync was called, or ctx
// ends. It waits for a connection if there is none.
//
// Once the connection's first catch-up is done it asks the region for
// what the device lacks and waits for the caught-up marker that answers
// (or follows) that request.
func (c *Client) Sync(ctx context.Context) error {
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	var asked *link
	var probe uint64
	for {
		st, err := c.n.Status(ctx)
		if err != nil {
			if errors.Is(err, node.ErrStopped) {
				return ErrClosed
			}
			return fmt.Errorf("clientsdk: sync: %w", err)
		}
		rs := st.Replicas[c.opts.Namespace]
		c.mu.Lock()
		l := c.link
		c.mu.Unlock()
		if l != nil && l != asked && rs.Synced {
			// Connected and through the first catch-up (asking before
			// would fetch it all a second time): ask what is new since.
			if probe, err = l.probe(rs.Vector); err == nil {
				asked = l
			}
		}
		if l != nil && l == asked && rs.Outbox == 0 && l.caughtUp() >= probe {
			c.mu.Lock()
			c.lastSync = time.Now()
			c.mu.Unlock()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("clientsdk: sync: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// link is one connection's traffic as Sync needs to see it. Its sync
// requests are numbered (replica.Message.Req; the hello is the first)
// and the region echoes the number on the one page answering each. The
// region hands a device's messages to its newest connection, so a page
// answering a request of the connection before (or of another process on
// the same store) can arrive here: numbers start at random, so theirs
// never fall in this link's range.
type link struct {
	out  chan replica.Message
	stop context.CancelFunc
	mu   sync.Mutex
	// first is the hello's number and last the latest request's; caught
	// is the highest of them answered by a page without more (a caught-up
	// marker) that the replica has applied.
	first, last, caught uint64
	pf                  *prefetch
	req                 replica.Message // template: ns, from, to, colls
}

// firstReq numbers a connection's hello. Half the range is left above
// it for the numbers to grow.
func firstReq() uint64 { return 1 + rand.Uint64()>>1 }

// newLink makes the link of a connection whose hello was numbered first
// and sent vector vec.
func newLink(first uint64, stop context.CancelFunc, vec crdt.Vector, req replica.Message) *link {
	return &link{out: make(chan replica.Message, 1024), stop: stop, first: first, last: first,
		pf: &prefetch{ahead: vec.Clone(), asked: []crdt.Vector{vec.Clone()}}, req: req}
}

// send queues a message for the region, numbering a sync request; it
// never blocks. A link that cannot keep up is dropped: the next one
// catches up.
func (l *link) send(m replica.Message) (req uint64, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if m.Type == replica.MsgSyncReq {
		l.last++
		m.Req = l.last
	}
	select {
	case l.out <- m:
		return m.Req, true
	default:
		l.stop()
		return 0, false
	}
}

// answered records a message the replica has applied: a caught-up marker
// answering one of this link's requests.
func (l *link) answered(m replica.Message) {
	if !m.Sync || m.More {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if m.Req >= l.first && m.Req <= l.last {
		l.caught = max(l.caught, m.Req)
	}
}

var errLinkFull = errors.New("clientsdk: connection cannot keep up")

// probe asks the region for what a replica holding v lacks and returns
// the request's number.
func (l *link) probe(v crdt.Vector) (uint64, error) {
	m := l.req
	m.Vector = v.Clone()
	l.pf.sent(m.Vector)
	n, ok := l.send(m)
	if !ok {
		return 0, errLinkFull
	}
	return n, nil
}

func (l *link) caughtUp() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.caught
}

func (c *Client) setErr(format string, a ...any) {
	msg := fmt.Sprintf(format, a...)
	c.mu.Lock()
	c.lastErr = msg
	c.mu.Unlock()
}

// connectLoop keeps one region connection up. It stays with a region
// while it can reach it and moves to the next URL when it cannot, with
// exponential backoff and jitter between failed attempts.
func (c *Client) connectLoop(ctx context.Context) {
	attempt, i := 0, 0
	for ctx.Err() == nil {
		url := c.opts.URLs[i%len(c.opts.URLs)]
		stay := c.session(ctx, url)
		if ctx.Err() != nil {
			return
		}
		var d time.Duration
		if stay {
			// The session worked and ended (the region cut a slow reader,
			// a network blip): back to the same region, after a short
			// jittered pause so that a region's devices do not all return
			// in the same millisecond.
			attempt = 0
			d = c.opts.MinBackoff
		} else {
			i++
			attempt++
			d = min(c.opts.MaxBackoff, c.opts.MinBackoff<<min(attempt-1, 16))
			if attempt < len(c.opts.URLs) {
				// One failed region is no reason to wait before trying
				// the next; backing off starts once all were tried.
				d = c.opts.MinBackoff / 4
			}
		}
		d = d/2 + rand.N(d/2+1)
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
	}
}

// session runs one connection. It reports whether to try the same region
// again (it got as far as a welcome and was not told the region is going
// away).
func (c *Client) session(ctx context.Context, url string) bool {
	ns := c.opts.Namespace
	hdr := http.Header{}
	if c.opts.Token != "" {
		hdr.Set("Authorization", "Bearer "+c.opts.Token)
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, resp, err := websocket.Dial(dctx, url, &websocket.DialOptions{HTTPHeader: hdr, Subprotocols: []string{server.Subprotocol}})
	cancel()
	if err != nil {
		if resp != nil {
			c.setErr("connect %s: %s", url, resp.Status)
		} else {
			c.setErr("connect %s: %v", url, err)
		}
		c.log.Info("connect", "url", url, "err", err)
		return false
	}
	defer conn.CloseNow()
	// The region is trusted not to flood its devices; a catch-up page or
	// a burst's fan-out may be large.
	conn.SetReadLimit(256 << 20)
	vec, err := c.n.Vector(ctx, ns)
	if err != nil {
		return false
	}
	hello := server.Hello{Type: "hello", Version: server.ProtocolVersion, NS: ns, Replica: c.ReplicaID(), Vector: vec,
		Colls: c.opts.Collections, Req: firstReq()}
	if err := writeJSON(ctx, conn, hello); err != nil {
		return false
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, data, err := conn.Read(wctx)
	cancel()
	if err != nil {
		c.setErr("region %s refused the hello: %v", url, err)
		c.log.Warn("region refused the hello", "url", url, "err", err)
		return false
	}
	var w server.Welcome
	if err := json.Unmarshal(data, &w); err != nil || w.Type != "welcome" {
		c.setErr("region %s: unexpected first message", url)
		return false
	}
	c.adoptClock(w.HLC, false)
	maxMsg := w.MaxMessage
	if maxMsg <= 0 {
		maxMsg = 1 << 20
	}

	sctx, stop := context.WithCancel(ctx)
	defer stop()
	// The region took the hello's vector as the first sync request.
	l := newLink(hello.Req, stop, vec,
		replica.Message{Type: replica.MsgSyncReq, NS: ns, From: c.ReplicaID(), To: w.Region, Colls: c.opts.Collections})
	send := func(m replica.Message) { // on the device's loop: must not block
		if m.Type == replica.MsgSyncReq && !l.pf.forward(m.Vector) {
			return
		}
		l.send(m)
	}
	if err := c.n.ConnectUpstream(ctx, ns, w.Region, c.opts.Collections, send); err != nil {
		return false
	}
	defer c.n.DisconnectUpstream(context.Background(), ns, w.Region)
	c.mu.Lock()
	c.region, c.url, c.link = w.Node, url, l
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.region, c.url, c.link = "", "", nil
		c.mu.Unlock()
	}()
	c.log.Info("connected", "region", w.Node, "url", url)

	go func() {
		defer stop()
		for {
			select {
			case m := <-l.out:
				if writeMessage(sctx, conn, m, maxMsg) != nil {
					return
				}
			case <-sctx.Done():
				return
			}
		}
	}()
	// Messages are applied in order by one goroutine while this one reads
	// and decodes the next: on a catch-up, decoding a page overlaps with
	// storing the one before.
	in := make(chan replica.Message, 2)
	applied := make(chan struct{})
	go func() {
		defer close(applied)
		for m := range in {
			c.apply(sctx, m)
			l.answered(m)
		}
	}()
	defer func() {
		close(in)
		<-applied
	}()
	for {
		// Heartbeats come about once a second: a connection silent much
		// longer is dead (a half-open socket after a network change
		// never errors by itself).
		rctx, cancel := context.WithTimeout(sctx, idleTimeout)
		_, data, err := conn.Read(rctx)
		cancel()
		if err != nil {
			code := websocket.CloseStatus(err)
			c.log.Info("disconnected", "region", w.Node, "code", int(code), "err", err)
			if code != -1 && code != websocket.StatusNormalClosure {
				c.setErr("region %s closed the connection: %v", w.Node, err)
			}
			// A region going away sends us elsewhere; anything else
			// (a resync cut, a blip) back to it.
			return code != server.CloseUnavailable && code != server.CloseForbidden
		}
		var m replica.Message
		if err := json.Unmarshal(data, &m); err != nil {
			continue // pong, or a message type this version does not know
		}
		switch m.Type {
		case replica.MsgError:
			c.setErr("region %s refused a message: %s: %s", w.Node, m.Code, m.Text)
			c.log.Warn("region refused a message", "region", w.Node, "code", m.Code, "text", m.Text)
		case replica.MsgBatch:
			// Ask for the next catch-up page now rather than once this
			// one is stored, so the region reads it meanwhile; the
			// replica's own request for it is then dropped.
			if next, ok := l.pf.next(m); ok {
				r := l.req
				r.Vector = next
				l.send(r)
			}
		}
		select {
		case in <- m:
		case <-sctx.Done():
		}
	}
}

// apply hands one message from the region to the replica, in order.
func (c *Client) apply(ctx context.Context, m replica.Message) {
	if err := c.n.DeliverDevice(ctx, m); err != nil {
		c.log.Warn("message from region refused", "type", m.Type.String(), "err", err)
	}
	if m.Type == replica.MsgError && m.Code == replica.CodeClockSkew && !m.HLC.IsZero() {
		c.adoptClock(m.HLC, true)
		if k, err := c.n.Restamp(ctx, c.opts.Namespace, m.HLC); err != nil {
			c.log.Warn("re-stamp after clock skew", "err", err)
		} else if k > 0 {
			c.log.Warn("re-stamped changes the region refused as too far ahead", "changes", k)
		}
	}
}

// prefetch pipelines a catch-up: when a page arrives that answers the
// latest request, the next request goes out at once, one page ahead of
// the replica, which asks for the same page once it has stored this one;
// that request is dropped. Anything the replica asks that was not
// anticipated (a gap seen in a live batch, a retry) goes out as usual.
type prefetch struct {
	mu    sync.Mutex
	ahead crdt.Vector   // the vector of the latest request sent
	asked []crdt.Vector // requests sent on the replica's behalf, not yet asked by it
}

func sameVector(a, b crdt.Vector) bool { return a.CoversAll(b) && b.CoversAll(a) }

// forward reports whether a request of the replica should go out.
func (p *prefetch) forward(v crdt.Vector) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, a := range p.asked {
		if sameVector(a, v) {
			p.asked = append(p.asked[:i], p.asked[i+1:]...)
			return false
		}
	}
	p.ahead = v.Clone()
	return true
}

// sent records a request made outside the replica (a Sync probe), so the
// pages answering it are pipelined too.
func (p *prefetch) sent(v crdt.Vector) {
	p.mu.Lock()
	p.ahead = v.Clone()
	p.mu.Unlock()
}

// next returns the request that follows a catch-up page, if the page
// answers the latest request and more pages follow.
func (p *prefetch) next(m replica.Message) (crdt.Vector, bool) {
	if !m.Sync || !m.More || len(m.Head) == 0 {
		return nil, false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for r, h := range m.Head {
		if m.Base[r] != p.ahead[r] || h < m.Base[r] {
			return nil, false
		}
	}
	next := p.ahead.Clone()
	next.Merge(m.Head)
	if sameVector(next, p.ahead) {
		return nil, false
	}
	p.ahead = next
	// The replica asks once per page it stores; an old anticipated
	// request it never makes (its vector moved another way) must not
	// pile up.
	if len(p.asked) >= 4 {
		p.asked = p.asked[1:]
	}
	p.asked = append(p.asked, next.Clone())
	return next, true
}

// adoptClock moves the device's wall clock to the region's when it is too
// far off: back, after the region refused our stamps as ahead of it (then
// always), or either way on a welcome when the difference passes half the
// skew bound (a clock behind would make the device refuse the region's
// changes; one ahead would have its pushes refused).
func (c *Client) adoptClock(region hlc.Timestamp, refused bool) {
	if region.IsZero() {
		return
	}
	diff := region.WallMillis() - c.nowMillis()
	if refused && diff >= 0 {
		return
	}
	if !refused && max(diff, -diff) <= maxSkew.Milliseconds()/2 {
		return
	}
	off := c.offset.Add(diff)
	c.log.Warn("device clock differs from the region's; adopting the region's", "offset_ms", off)
}

func writeJSON(ctx context.Context, conn *websocket.Conn, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return conn.Write(ctx, websocket.MessageText, b)
}

// writeMessage sends m, splitting a push that would exceed the region's
// message limit (the region would close the connection on it, and the
// same push would come again after every reconnect).
func writeMessage(ctx context.Context, conn *websocket.Conn, m replica.Message, limit int64) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if int64(len(b)) > limit && m.Type == replica.MsgPush && len(m.Changes) > 1 {
		half := len(m.Changes) / 2
		a, z := m, m
		a.Changes, z.Changes = m.Changes[:half], m.Changes[half:]
		if err := writeMessage(ctx, conn, a, limit); err != nil {
			return err
		}
		return writeMessage(ctx, conn, z, limit)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return conn.Write(ctx, websocket.MessageText, b)
}
