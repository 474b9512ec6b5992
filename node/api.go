package node

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/replica"
	"github.com/syncd/syncd/resolver"
)

// AckAll asks a write to wait for every region this node has heard from.
const AckAll = -1

// WriteOptions is a write's concern: how many regions must durably hold
// it before it is answered as replicated, and for how long to wait.
type WriteOptions struct {
	Ack     int // 0 or 1: this region; N: N regions; AckAll: all known regions
	Timeout time.Duration
	// Render asks for the written document as it stands right after the
	// write, in WriteResult.View. The loop reads the document once, before
	// the write, and the write's own field reads come from that read, so
	// the answer costs neither a second read nor a race with later
	// writes. All ops must be on one document.
	Render bool
}

// WriteResult answers a write. Replicated is false when the write concern
// was not met in time: the write is durable here and will still replicate.
type WriteResult struct {
	Changes    []crdt.Change
	Token      string
	Replicated bool
	Regions    int           // regions known to hold it when answered
	View       resolver.View // with Render: the document after the write (zero if it has no fields)
}

// Write applies ops in namespace ns, all or nothing, and returns once they
// are durable here and the write concern is met or timed out.
func (n *Node) Write(ctx context.Context, ns string, ops []resolver.Op, o WriteOptions) (WriteResult, error) {
	var doc *crdt.DocKey
	if o.Render && len(ops) > 0 {
		doc = &crdt.DocKey{NS: ns, Coll: ops[0].Coll, Doc: ops[0].Doc}
		for _, op := range ops[1:] {
			if op.Coll != doc.Coll || op.Doc != doc.Doc {
				return WriteResult{}, fmt.Errorf("%w: a rendered write must stay on one document", crdt.ErrInvalid)
			}
		}
	}
	return n.write(ctx, ns, o, doc, func(r *replica.Replica) ([]crdt.Change, error) { return r.Write(ops) })
}

// PutSchema sets a collection's schema; it replicates like a write.
func (n *Node) PutSchema(ctx context.Context, ns, coll string, s resolver.Schema, o WriteOptions) (WriteResult, error) {
	return n.write(ctx, ns, o, nil, func(r *replica.Replica) ([]crdt.Change, error) { return r.PutSchema(coll, s) })
}

func (n *Node) write(ctx context.Context, ns string, o WriteOptions, doc *crdt.DocKey, f func(*replica.Replica) ([]crdt.Change, error)) (WriteResult, error) {
	var res WriteResult
	var vec crdt.Vector
	err := n.do(ctx, func(n *Node) error {
		r, err := n.replica(ns)
		if err != nil {
			return err
		}
		if doc != nil {
			// Read the whole document first: the store keeps it until the
			// round is saved, and the write's field reads find it there.
			if _, err := n.cfg.Store.Storage(ns).Doc(*doc); err != nil {
				return fmt.Errorf("read %s: %w", *doc, err)
			}
		}
		cs, err := f(r)
		if err != nil {
			return err
		}
		res.Changes, vec = cs, r.Vector()
		n.m.wrote(len(cs))
		if doc != nil {
			fs, err := r.Doc(*doc)
			if err != nil {
				return err
			}
			// Rendered here: a later input of this round may change the
			// field states in place.
			if len(fs) > 0 {
				res.View = resolver.Render(doc.Doc, fs, n.NameOf)
			}
		}
		return nil
	})
	if err != nil {
		return WriteResult{}, err
	}
	res.Token = EncodeToken(vec) // off the loop: it serves every writer
	res.Replicated, res.Regions = true, 1
	if len(res.Changes) == 0 || (o.Ack >= 0 && o.Ack <= 1) {
		return res, nil
	}
	last := res.Changes[len(res.Changes)-1]
	w := &ackWaiter{ns: ns, stamp: last.RegionDot(), need: o.Ack, done: make(chan int, 1)}
	return n.waitAck(ctx, w, o.Timeout, res)
}

type ackWaiter struct {
	ns    string
	stamp crdt.Dot
	need  int
	done  chan int
	ctx   context.Context
}

func (n *Node) waitAck(ctx context.Context, w *ackWaiter, timeout time.Duration, res WriteResult) (WriteResult, error) {
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	w.ctx = ctx
	if err := n.do(ctx, func(n *Node) error { n.acks = append(n.acks, w); return nil }); err != nil {
		res.Replicated = false
		return res, nil
	}
	select {
	case k := <-w.done:
		res.Regions = k
		return res, nil
	case <-ctx.Done():
		res.Replicated = false
		return res, nil
	}
}

type readWaiter struct {
	ns    string
	token crdt.Vector
	done  chan struct{}
	ctx   context.Context
}

// ErrBehind means a read's session token was not reached in time.
var ErrBehind = errors.New("node: this region has not caught up to the session token")

// WaitFor returns once this region durably holds everything the session
// token names, or ErrBehind when the timeout passes first.
func (n *Node) WaitFor(ctx context.Context, ns, token string, timeout time.Duration) error {
	v, err := ParseToken(token)
	if err != nil {
		return err
	}
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	w := &readWaiter{ns: ns, token: v, done: make(chan struct{}), ctx: ctx}
	if err := n.do(ctx, func(n *Node) error {
		if _, err := n.replica(ns); err != nil {
			return err
		}
		n.reads = append(n.reads, w)
		return nil
	}); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%w: %v", ErrBehind, err)
		}
		return err
	}
	select {
	case <-w.done:
		return nil
	case <-ctx.Done():
		return ErrBehind
	}
}

// checkWaiters answers the write-concern and session-token waiters that
// the last round satisfied. Runs on the loop after a save.
func (n *Node) checkWaiters() {
	keptA := n.acks[:0]
	// ack=all counts every region this node has heard from in any
	// namespace: a namespace's peers are known only once they heartbeat
	// it, so the first writes to a new namespace would otherwise count as
	// held everywhere while no other region holds them.
	var known map[crdt.ReplicaID]bool
	for _, w := range n.acks {
		if w.ctx.Err() != nil {
			continue
		}
		r := n.reps[w.ns]
		held := 1
		for _, p := range r.Status().Peers {
			if p.Vector.Covers(w.stamp) {
				held++
			}
		}
		need := w.need
		if need == AckAll {
			if known == nil {
				known = map[crdt.ReplicaID]bool{}
				for _, r := range n.reps {
					for id := range r.Status().Peers {
						known[id] = true
					}
				}
			}
			need = len(known) + 1
		}
		if held >= need {
			w.done <- held
			continue
		}
		keptA = append(keptA, w)
	}
	clear(n.acks[len(keptA):])
	n.acks = keptA

	keptR := n.reads[:0]
	for _, w := range n.reads {
		if w.ctx.Err() != nil {
			continue
		}
		if n.reps[w.ns].DurableVector().CoversAll(w.token) {
			close(w.done)
			continue
		}
		keptR = append(keptR, w)
	}
	clear(n.reads[len(keptR):])
	n.reads = keptR
}

// EncodeToken makes a session token from a vector: opaque to clients,
// safe in a URL. The body is the vector as encoding/json writes it (keys
// in order), built by hand: every write answers with one, and reflection
// over the map was a measurable share of a write's CPU.
func EncodeToken(v crdt.Vector) string {
	ids := make([]crdt.ReplicaID, 0, len(v))
	for id := range v {
		ids = append(ids, id)
	}
	// UUIDs' text is fixed-width lowercase hex, so byte order is text order.
	slices.SortFunc(ids, func(a, b crdt.ReplicaID) int { return bytes.Compare(a[:], b[:]) })
	b := make([]byte, 0, 2+len(ids)*60)
	b = append(b, '{')
	for i, id := range ids {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = append(b, id.String()...)
		b = append(b, '"', ':')
		b = strconv.AppendUint(b, v[id], 10)
	}
	b = append(b, '}')
	out := make([]byte, 3+base64.RawURLEncoding.EncodedLen(len(b)))
	copy(out, "v1.")
	base64.RawURLEncoding.Encode(out[3:], b)
	return string(out)
}

// ErrBadToken is a session token this node cannot read.
var ErrBadToken = errors.New("node: malformed session token")

// ParseToken reads a session token.
func ParseToken(s string) (crdt.Vector, error) {
	body, ok := strings.CutPrefix(s, "v1.")
	if !ok || len(body) > 64<<10 {
		return nil, ErrBadToken
	}
	b, err := base64.RawURLEncoding.DecodeString(body)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadToken, err)
	}
	var v crdt.Vector
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadToken, err)
	}
	return v, nil
}

// Status is a snapshot of the node's replicas.
type Status struct {
	Replicas map[string]replica.Status // by namespace
	Isolated bool
	Sessions int
	HLC      hlc.Timestamp // the node clock's high-water mark
}

// Status asks the loop for a snapshot.
func (n *Node) Status(ctx context.Context) (Status, error) {
	var s Status
	err := n.do(ctx, func(n *Node) error {
		s = Status{Replicas: map[string]replica.Status{}, Isolated: n.isolated, Sessions: len(n.sessions), HLC: n.cfg.Clock.Last()}
		for ns, r := range n.reps {
			s.Replicas[ns] = r.Status()
		}
		return nil
	})
	return s, err
}

// SetIsolated cuts this node off other regions (it keeps taking local
// writes and serving its devices) or heals it. Anti-entropy catches up
// after a heal.
func (n *Node) SetIsolated(ctx context.Context, on bool) error {
	return n.do(ctx, func(n *Node) error {
		n.isolated = on
		return nil
	})
}

// session is a device connected to this region.
type session struct {
	id      crdt.ReplicaID
	ns      string
	deliver func(replica.Message)
}

// Attach registers a device connected to this region: messages for it and
// the namespace's fan-out go to deliver, which must not block (the
// gateway queues, and cuts off a device that does not read). The returned
// function detaches it. A second Attach of the same device replaces the
// first: a device that reconnects before the server noticed its old
// connection die must not be shut out.
func (n *Node) Attach(ctx context.Context, ns string, id crdt.ReplicaID, deliver func(replica.Message)) (func(), error) {
	s := &session{id: id, ns: ns, deliver: deliver}
	err := n.do(ctx, func(n *Node) error {
		if _, err := n.replica(ns); err != nil {
			return err
		}
		n.sessions[id] = s
		return nil
	})
	if err != nil {
		return nil, err
	}
	return func() {
		// Not post: a detach dropped on a full queue would leave the
		// session attached for good.
		n.enqueue(func(n *Node) error {
			if n.sessions[id] == s {
				delete(n.sessions, id)
			}
			return nil
		})
	}, nil
}

// DeliverDevice hands the loop a message from a connected device and waits
// until whatever it produced is durable (so the device's flow control is
// the loop's).
func (n *Node) DeliverDevice(ctx context.Context, m replica.Message) error {
	return n.do(ctx, func(n *Node) error {
		r, err := n.replica(m.NS)
		if err != nil {
			return err
		}
		return r.Step(m)
	})
}

// ConnectUpstream tells a device node it reached a region: messages to the
// region go to send (which must not block), and the replica asks for what
// it lacks and pushes its outbox.
func (n *Node) ConnectUpstream(ctx context.Context, ns string, region crdt.ReplicaID, colls []string, send func(replica.Message)) error {
	return n.do(ctx, func(n *Node) error {
		r, err := n.replica(ns)
		if err != nil {
			return err
		}
		n.sessions[region] = &session{id: region, ns: ns, deliver: send}
		r.Connect(region, colls)
		return nil
	})
}

// DisconnectUpstream tells a device node its region connection is gone.
func (n *Node) DisconnectUpstream(ctx context.Context, ns string, region crdt.ReplicaID) error {
	return n.do(ctx, func(n *Node) error {
		delete(n.sessions, region)
		if r, ok := n.reps[ns]; ok {
			r.Disconnect()
		}
		return nil
	})
}

// Restamp re-issues a device's unpushed changes stamped above floor (see
// replica.Replica.Restamp), after a region refused them as too far ahead
// and the caller corrected the clock. It returns how many it re-issued,
// once they are durable.
func (n *Node) Restamp(ctx context.Context, ns string, floor hlc.Timestamp) (int, error) {
	var k int
	err := n.do(ctx, func(n *Node) error {
		r, err := n.replica(ns)
		if err != nil {
			return err
		}
		cs, err := r.Restamp(floor)
		k = len(cs)
		return err
	})
	return k, err
}

// Vector returns a namespace's durable vector.
func (n *Node) Vector(ctx context.Context, ns string) (crdt.Vector, error) {
	var v crdt.Vector
	err := n.do(ctx, func(n *Node) error {
		r, err := n.replica(ns)
		if err != nil {
			return err
		}
		v = r.DurableVector()
		return nil
	})
	return v, err
}
