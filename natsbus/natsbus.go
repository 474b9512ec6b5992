// Package natsbus carries replication messages between regions over NATS:
// an embedded nats-server behind a small wrapper (or a connection to an
// existing deployment), one subject per message flow, and payloads chunked
// to the server's max payload.
//
// Subjects, per namespace (ids are replica UUIDs):
//
//	syncd.<ns>.changes.<region>   a region's live batches of its own stamps
//	syncd.<ns>.hb                 heartbeats (vectors), every region
//	syncd.<ns>.sync.<region>      messages addressed to one region: sync
//	                              requests, their pages, acks, errors
//
// Payloads are a compact binary form private to regions (codec.go); JSON
// is still read, so a message published by hand is understood.
//
// Core NATS is at-most-once: nothing here retries. Correctness comes from
// anti-entropy in the replica (heartbeats expose gaps, sync fills them).
// The bus only overlaps a catch-up: it asks for the next sync page as soon
// as one arrives, a few pages ahead of what the replica has stored
// (pipeline.go).
package natsbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/replica"
)

// Options configure the bus. With URL set no server is embedded.
type Options struct {
	Name string // node name, for the server and connection names
	// Embedded server.
	Host        string   // listen host (default 127.0.0.1)
	Port        int      // client port; 0: no client listener (in-process only)
	ClusterPort int      // route port for other regions; 0: no cluster
	Routes      []string // nats-route://host:port of other regions
	ConfigFile  string   // a standard nats-server config file; flags above override it where set
	// External deployment.
	URL    string
	Logger *slog.Logger
}

// Bus is a region's connection to the others.
type Bus struct {
	srv     *server.Server
	nc      *nats.Conn
	id      crdt.ReplicaID
	log     *slog.Logger
	subs    []*nats.Subscription
	maxSize int
	pipe    pipeline
}

// Start starts the embedded server (unless opts.URL is set) and connects.
func Start(ctx context.Context, id crdt.ReplicaID, opts Options) (*Bus, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	b := &Bus{id: id, log: opts.Logger}
	copts := []nats.Option{
		nats.Name("syncd " + opts.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			b.log.Warn("nats disconnected", "err", err)
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { b.log.Info("nats reconnected", "url", c.ConnectedUrlRedacted()) }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { b.log.Warn("nats", "err", err) }),
	}
	if opts.URL == "" {
		srv, err := startServer(opts)
		if err != nil {
			return nil, err
		}
		b.srv = srv
		copts = append(copts, nats.InProcessServer(srv))
	}
	nc, err := nats.Connect(opts.URL, copts...)
	if err != nil {
		b.shutdownServer()
		return nil, fmt.Errorf("connect to nats: %w", err)
	}
	b.nc = nc
	b.maxSize = int(nc.MaxPayload())
	return b, nil
}

func startServer(o Options) (*server.Server, error) {
	so := &server.Options{}
	if o.ConfigFile != "" {
		fo, err := server.ProcessConfigFile(o.ConfigFile)
		if err != nil {
			return nil, fmt.Errorf("nats config %s: %w", o.ConfigFile, err)
		}
		so = fo
	}
	so.ServerName = o.Name
	so.NoSigs = true // signals belong to the daemon
	so.NoLog = true
	if o.Host != "" || so.Host == "" {
		so.Host = orDefault(o.Host, "127.0.0.1")
	}
	switch {
	case o.Port > 0:
		so.Port = o.Port
	case o.Port < 0:
		so.Port = server.RANDOM_PORT
	case o.ConfigFile == "" && o.ClusterPort == 0:
		so.DontListen = true // same-process connection only
	case o.ConfigFile == "" || so.Port == 0:
		// nats-server starts its route listener only beside a client
		// listener: take a random loopback port nobody needs to know. A
		// config file that names no port gets one too, rather than
		// nats-server's 4222: the client port is opt-in (--nats-port),
		// and two regions on one host must not both claim 4222.
		so.Port = server.RANDOM_PORT
	}
	if o.ClusterPort != 0 {
		so.Cluster.Port = o.ClusterPort
		if so.Cluster.Host == "" {
			so.Cluster.Host = so.Host
		}
	}
	if so.Cluster.Port != 0 && so.Cluster.Name == "" {
		so.Cluster.Name = "syncd"
	}
	if len(o.Routes) > 0 {
		so.Routes = server.RoutesFromStr(strings.Join(o.Routes, ","))
	}
	srv, err := server.NewServer(so)
	if err != nil {
		return nil, fmt.Errorf("embedded nats: %w", err)
	}
	// nats-server says why it cannot start (a port already in use, most
	// often) only through its logger: keep its errors, so a failed start
	// says so at once instead of timing out.
	lg := &startLog{}
	srv.SetLogger(lg, false, false)
	go srv.Start()
	for deadline := time.Now().Add(10 * time.Second); !srv.ReadyForConnections(50 * time.Millisecond); {
		if msg := lg.fatal(); msg != "" {
			srv.Shutdown()
			return nil, fmt.Errorf("embedded nats: %s", msg)
		}
		if time.Now().After(deadline) {
			srv.Shutdown()
			if msg := lg.lastError(); msg != "" {
				return nil, fmt.Errorf("embedded nats: not ready after 10s: %s", msg)
			}
			return nil, errors.New("embedded nats: not ready after 10s")
		}
	}
	return srv, nil
}

// startLog is the embedded server's logger: it drops everything but
// errors, and keeps the first fatal one and the last other one.
type startLog struct {
	mu            sync.Mutex
	first, errMsg string
}

func (l *startLog) Fatalf(format string, v ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.first == "" {
		l.first = fmt.Sprintf(format, v...)
	}
}

func (l *startLog) Errorf(format string, v ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.errMsg = fmt.Sprintf(format, v...)
}

func (l *startLog) fatal() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.first
}

func (l *startLog) lastError() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.errMsg
}

func (*startLog) Noticef(string, ...any) {}
func (*startLog) Warnf(string, ...any)   {}
func (*startLog) Debugf(string, ...any)  {}
func (*startLog) Tracef(string, ...any)  {}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// ClientURL is the embedded server's client URL ("" when it does not
// listen or when the bus uses an external deployment).
func (b *Bus) ClientURL() string {
	if b.srv == nil || b.srv.Addr() == nil {
		return ""
	}
	return "nats://" + b.srv.Addr().String()
}

// ClusterAddr is the embedded server's route listener, if any.
func (b *Bus) ClusterAddr() string {
	if b.srv == nil {
		return ""
	}
	if a := b.srv.ClusterAddr(); a != nil {
		return net.JoinHostPort(a.IP.String(), strconv.Itoa(a.Port))
	}
	return ""
}

// Subscribe delivers every message addressed to this region (or to all
// regions) in every namespace to deliver. deliver must not block long.
func (b *Bus) Subscribe(deliver func(replica.Message)) error {
	me := b.id.String()
	handle := func(msg *nats.Msg) {
		m, err := Decode(msg.Data)
		if err != nil {
			b.log.Warn("dropping malformed message", "subject", msg.Subject, "err", err)
			return
		}
		parts := strings.Split(msg.Subject, ".")
		if len(parts) < 3 || parts[1] != m.NS || m.From == b.id {
			return // our own publish, or a namespace mismatch
		}
		if parts[2] == "changes" && (len(parts) != 4 || parts[3] != m.From.String() || m.Type != replica.MsgBatch) {
			b.log.Warn("dropping batch whose sender does not match its subject", "subject", msg.Subject, "from", m.From)
			return
		}
		if req, ok := b.pipe.next(m); ok {
			if err := b.send(*req); err != nil {
				b.log.Warn("send", "type", req.Type.String(), "ns", req.NS, "err", err)
			}
		}
		deliver(m)
	}
	for _, subj := range []string{"syncd.*.changes.*", "syncd.*.hb", "syncd.*.sync." + me} {
		s, err := b.nc.Subscribe(subj, handle)
		if err != nil {
			return fmt.Errorf("subscribe %s: %w", subj, err)
		}
		// Batches can arrive faster than the loop drains them in a burst;
		// a slow-consumer drop is repaired by anti-entropy, but a larger
		// buffer makes it rare.
		s.SetPendingLimits(1<<20, 1<<30)
		b.subs = append(b.subs, s)
	}
	return b.nc.Flush()
}

// Send publishes a message on its subject, split into chunks that fit the
// server's max payload. It implements node.Transport.
func (b *Bus) Send(m replica.Message) error {
	if m.Type == replica.MsgSyncReq {
		send, also := b.pipe.forward(m)
		if also != nil {
			if err := b.send(*also); err != nil {
				return err
			}
		}
		if !send {
			return nil
		}
	}
	return b.send(m)
}

func (b *Bus) send(m replica.Message) error {
	var subj string
	switch {
	case m.To != uuid.Nil:
		subj = "syncd." + m.NS + ".sync." + m.To.String()
	case m.Type == replica.MsgHeartbeat:
		subj = "syncd." + m.NS + ".hb"
	case m.Type == replica.MsgBatch:
		subj = "syncd." + m.NS + ".changes." + m.From.String()
	default:
		return fmt.Errorf("natsbus: no subject for a broadcast %s", m.Type)
	}
	return b.publish(subj, m)
}

func (b *Bus) publish(subj string, m replica.Message) error {
	data := Encode(&m)
	// Leave room for headers and protocol framing.
	if len(data) <= b.maxSize-1024 {
		if err := b.nc.Publish(subj, data); err != nil {
			return fmt.Errorf("publish %s: %w", subj, err)
		}
		return nil
	}
	parts, err := Split(m)
	if err != nil {
		return fmt.Errorf("publish %s: %w", subj, err)
	}
	for _, p := range parts {
		if err := b.publish(subj, p); err != nil {
			return err
		}
	}
	return nil
}

// Split halves a batch into two that together say the same: each keeps
// contiguous stamp ranges per region, so a receiver applies them in order
// like one. Only the last part keeps More, so a device does not think it
// is caught up halfway.
func Split(m replica.Message) ([]replica.Message, error) {
	if m.Type != replica.MsgBatch && m.Type != replica.MsgPush {
		return nil, fmt.Errorf("a %s message over the max payload cannot be split", m.Type)
	}
	if len(m.Changes) < 2 {
		return nil, fmt.Errorf("one change is over the max payload")
	}
	h := len(m.Changes) / 2
	a, b := m, m
	a.Changes, b.Changes = m.Changes[:h], m.Changes[h:]
	if m.Type == replica.MsgPush {
		return []replica.Message{a, b}, nil
	}
	// The first part ends, per region, at its last change; the second
	// starts there. Regions with no change in the first part stay whole in
	// the second.
	a.Base, a.Head, b.Base = crdt.Vector{}, crdt.Vector{}, m.Base.Clone()
	for _, c := range a.Changes {
		a.Base[c.Region] = m.Base[c.Region]
		a.Head[c.Region] = c.RSeq
		b.Base[c.Region] = c.RSeq
	}
	a.More = false
	return []replica.Message{a, b}, nil
}

// Close drains the connection and stops the embedded server.
func (b *Bus) Close() {
	if b.nc != nil {
		b.nc.Drain()
		b.nc.Close()
	}
	b.shutdownServer()
}

func (b *Bus) shutdownServer() {
	if b.srv != nil {
		b.srv.Shutdown()
		b.srv.WaitForShutdown()
	}
}
