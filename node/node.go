// Package node runs a node's replicas: the one loop that feeds them inputs,
// saves each round of Readys in one transaction (group commit), and only
// then answers writers and sends messages. Everything else — HTTP, NATS,
// websockets — talks to the loop through the Node's methods.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/replica"
)

// Store is what the loop needs of durable storage (sqlitestore.Store).
type Store interface {
	Load(ctx context.Context, ns string) (replica.State, []crdt.Change, error)
	Storage(ns string) replica.Storage
	Save(ctx context.Context, rds []*replica.Ready) error
}

// Transport carries messages to other regions (natsbus). Send must not
// block for long: it is called from the loop.
type Transport interface {
	Send(m replica.Message) error
}

// Config sets up a node.
type Config struct {
	ID    crdt.ReplicaID
	Name  string
	Role  replica.Role
	Store Store
	Clock *hlc.Clock
	// Tick is the replicas' logical time step (default 50ms); regions
	// heartbeat every HeartbeatTicks ticks (default 4).
	Tick           time.Duration
	HeartbeatTicks int
	RetryTicks     int
	PageSize       int
	// MaxBatch bounds how many inputs one round takes, so one transaction
	// stays short (default 4096).
	MaxBatch int
	Logger   *slog.Logger
	Metrics  *Metrics // nil: none
	// NewID makes change ids (default uuid.New).
	NewID func() uuid.UUID
	// OnCommit, if set, sees every saved Ready on the loop after it is
	// durable (the SDK's Watch). It must not block.
	OnCommit func(rd *replica.Ready)
}

// Node owns the replicas of every namespace this node holds.
type Node struct {
	cfg    Config
	in     chan input
	log    *slog.Logger
	m      *Metrics
	ready  chan struct{}
	stopMu sync.Mutex
	done   chan struct{}

	// Owned by the loop.
	reps      map[string]*replica.Replica
	transport Transport
	sessions  map[crdt.ReplicaID]*session
	acks      []*ackWaiter
	reads     []*readWaiter
	isolated  bool

	// name of each replica id seen, for views; written by the loop.
	namesMu sync.RWMutex
	names   map[crdt.ReplicaID]string
}

// ErrStopped is returned to callers once the node has stopped.
var ErrStopped = errors.New("node: stopped")

// New makes a node; Run starts it.
func New(cfg Config) *Node {
	if cfg.Tick <= 0 {
		cfg.Tick = 50 * time.Millisecond
	}
	if cfg.HeartbeatTicks <= 0 {
		cfg.HeartbeatTicks = 4
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 4096
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	n := &Node{
		cfg: cfg, in: make(chan input, 4096), log: cfg.Logger, m: cfg.Metrics,
		done: make(chan struct{}), reps: map[string]*replica.Replica{},
		sessions: map[crdt.ReplicaID]*session{}, names: map[crdt.ReplicaID]string{cfg.ID: cfg.Name},
	}
	return n
}

// ID returns the node's replica id.
func (n *Node) ID() crdt.ReplicaID { return n.cfg.ID }

// Name returns the node's name.
func (n *Node) Name() string { return n.cfg.Name }

// NameOf maps a replica id to a node name if one is known.
func (n *Node) NameOf(id crdt.ReplicaID) string {
	n.namesMu.RLock()
	defer n.namesMu.RUnlock()
	return n.names[id]
}

// input is one request to the loop. run executes on the loop goroutine;
// done is called after the round's transaction committed (or failed), so a
// reply never gets ahead of durability.
type input struct {
	run  func(n *Node) error
	done func(err error)
}

// do runs f on the loop and waits until the round it ran in is durable.
func (n *Node) do(ctx context.Context, f func(n *Node) error) error {
	errc := make(chan error, 1)
	select {
	case n.in <- input{run: f, done: func(err error) { errc <- err }}:
	case <-n.done:
		return ErrStopped
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-errc:
		return err
	case <-n.done:
		// The loop drains and answers every accepted input before closing
		// done, so an answer is already waiting or never coming.
		select {
		case err := <-errc:
			return err
		default:
			return ErrStopped
		}
	}
}

// post hands the loop work that nobody waits for (a message from a peer).
// Messages are dropped when the loop is saturated: anti-entropy repairs.
func (n *Node) post(f func(n *Node) error) {
	select {
	case n.in <- input{run: f}:
	case <-n.done:
	default:
		n.m.dropped()
	}
}

// enqueue is post that waits for room instead of dropping.
func (n *Node) enqueue(f func(n *Node) error) {
	select {
	case n.in <- input{run: f}:
	case <-n.done:
	}
}

// SetTransport sets where messages to other regions go. Call before Run.
func (n *Node) SetTransport(t Transport) { n.transport = t }

// Run is the loop. It returns when ctx is done, after answering every
// input it accepted and saving what they produced.
func (n *Node) Run(ctx context.Context) error {
	defer close(n.done)
	tick := time.NewTicker(n.cfg.Tick)
	defer tick.Stop()
	var batch []input
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return n.drain(batch)
		case in := <-n.in:
			batch = append(batch, in)
		case <-tick.C:
			batch = append(batch, input{run: (*Node).tick})
		}
		// Group commit: everything that queued up while the last
		// transaction ran goes into this one. The input that woke the loop
		// handed it the sender's processor straight away, while other
		// writers were still on their way to the queue: yielding once lets
		// those that are runnable get in, which doubled the batch under 64
		// HTTP writers (`syncd bench local`: 7 to 15 changes per commit).
		runtime.Gosched()
	more:
		for len(batch) < n.cfg.MaxBatch {
			select {
			case in := <-n.in:
				batch = append(batch, in)
			default:
				break more
			}
		}
		if err := n.round(ctx, batch); err != nil {
			return err
		}
	}
}

// drain answers what is still queued when the node stops: accepted writes
// are saved and acknowledged, nothing is left hanging.
func (n *Node) drain(batch []input) error {
	for {
		select {
		case in := <-n.in:
			batch = append(batch, in)
			continue
		default:
		}
		break
	}
	return n.round(context.Background(), batch)
}

// round runs a batch of inputs, saves every Ready in one transaction, then
// answers and sends.
func (n *Node) round(ctx context.Context, batch []input) error {
	errs := make([]error, len(batch))
	for i, in := range batch {
		errs[i] = in.run(n)
	}
	var rds []*replica.Ready
	var owners []*replica.Replica
	for _, r := range n.reps {
		if r.HasReady() {
			rd := r.Ready()
			rds = append(rds, &rd)
			owners = append(owners, r)
		}
	}
	var saveErr error
	if len(rds) > 0 {
		start := time.Now()
		saveErr = n.cfg.Store.Save(ctx, rds)
		n.m.commit(time.Since(start), rds)
	}
	if saveErr != nil {
		// The replicas' in-memory state is ahead of the store now; the only
		// safe way on is to stop and let a restart reload what is durable.
		saveErr = fmt.Errorf("save round: %w", saveErr)
		for _, in := range batch {
			if in.done != nil {
				in.done(saveErr)
			}
		}
		return saveErr
	}
	for _, r := range owners {
		r.Advance()
	}
	for i, in := range batch {
		if in.done != nil {
			in.done(errs[i])
		} else if errs[i] != nil {
			n.log.Warn("refused input", "err", errs[i])
		}
	}
	for _, rd := range rds {
		n.dispatch(rd)
		if n.cfg.OnCommit != nil {
			n.cfg.OnCommit(rd)
		}
	}
	n.checkWaiters()
	return nil
}

// dispatch sends a saved Ready's messages: to other regions through the
// transport, to devices through their sessions.
func (n *Node) dispatch(rd *replica.Ready) {
	for _, m := range rd.Messages {
		if s, ok := n.sessions[m.To]; ok {
			s.deliver(m)
			continue
		}
		if m.To == uuid.Nil {
			for _, s := range n.sessions {
				if s.ns == m.NS && m.Type == replica.MsgHeartbeat {
					s.deliver(m)
				}
			}
		}
		if n.transport != nil && !n.isolated {
			if err := n.transport.Send(m); err != nil {
				n.log.Warn("send", "type", m.Type.String(), "ns", m.NS, "err", err)
			}
		}
	}
	if rd.Fanout != nil {
		for _, s := range n.sessions {
			if s.ns == rd.NS {
				s.deliver(*rd.Fanout)
			}
		}
	}
}

func (n *Node) tick() error {
	for _, r := range n.reps {
		r.Tick()
	}
	return nil
}

// replica returns the replica of a namespace, loading it on first use.
func (n *Node) replica(ns string) (*replica.Replica, error) {
	if r, ok := n.reps[ns]; ok {
		return r, nil
	}
	if err := crdt.ValidateName(ns); err != nil {
		return nil, fmt.Errorf("namespace: %w", err)
	}
	st, outbox, err := n.cfg.Store.Load(context.Background(), ns)
	if err != nil {
		return nil, fmt.Errorf("load namespace %s: %w", ns, err)
	}
	if st.Vector == nil {
		st.Vector = crdt.Vector{}
	}
	r := replica.New(replica.Config{
		ID: n.cfg.ID, Name: n.cfg.Name, NS: ns, Role: n.cfg.Role, Clock: n.cfg.Clock,
		Storage: n.cfg.Store.Storage(ns), State: st, Outbox: outbox,
		HeartbeatTicks: n.cfg.HeartbeatTicks, RetryTicks: n.cfg.RetryTicks, PageSize: n.cfg.PageSize,
		NewID: n.cfg.NewID,
	})
	n.reps[ns] = r
	return r, nil
}

// Open loads a namespace's replica now (so a region heartbeats it from
// the start, and peers learn of it).
func (n *Node) Open(ctx context.Context, ns string) error {
	return n.do(ctx, func(n *Node) error {
		_, err := n.replica(ns)
		return err
	})
}

// Deliver hands the loop a message from another region. It blocks while
// the loop's queue is full, so a burst pushes back on the transport
// (whose own overflow anti-entropy repairs) instead of growing memory.
func (n *Node) Deliver(m replica.Message) {
	n.enqueue(func(n *Node) error {
		if n.isolated {
			return nil
		}
		if m.Node != "" {
			n.learnName(m.From, m.Node)
		}
		r, err := n.replica(m.NS)
		if err != nil {
			return err
		}
		if err := r.Step(m); err != nil {
			// The replica's error names the message and the sender's id;
			// an operator reads the region's name (a refused clock, a
			// malformed batch) more easily.
			if name := n.NameOf(m.From); name != "" {
				return fmt.Errorf("region %s: %w", name, err)
			}
			return fmt.Errorf("%s from %s: %w", m.Type, m.From, err)
		}
		n.m.stepped(m)
		return nil
	})
}

func (n *Node) learnName(id crdt.ReplicaID, name string) {
	n.namesMu.RLock()
	known := n.names[id] == name
	n.namesMu.RUnlock()
	if !known {
		n.namesMu.Lock()
		n.names[id] = name
		n.namesMu.Unlock()
	}
}
