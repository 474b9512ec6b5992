// Package device is a browser device's replica: the pure core (crdt,
// resolver, replica) around an in-memory store whose whole state the page
// saves to IndexedDB as one snapshot after every step. It does no I/O and
// knows nothing of JavaScript, so it is tested as ordinary Go; package
// main beside it only binds it to syscall/js.
//
// The page drives it as the node loop drives a region: feed inputs
// (Write, Step, Tick, Connect), take a Flush from Ready, persist its
// snapshot, then Advance, and only then send its messages.
package device

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/replica"
	"github.com/syncd/syncd/resolver"
)

// ProtocolVersion is the websocket protocol version the hello announces
// (server.ProtocolVersion; not imported, so the wasm stays small).
const ProtocolVersion = 1

// SnapshotVersion is the layout of Snapshot. A page that finds another
// version in IndexedDB starts the device afresh rather than misread it.
const SnapshotVersion = 1

// ErrSnapshot is wrapped by every error reading a snapshot.
var ErrSnapshot = errors.New("device: unreadable snapshot")

// Device is one browser device's replica of one namespace. Not safe for
// concurrent use (the browser runs it on one thread).
type Device struct {
	ns     string
	id     crdt.ReplicaID
	r      *replica.Replica
	st     *replica.MemStorage
	offset int64 // ms added to the wall clock after a region refused our stamps
	// now is the wall clock in ms (time.Now in the browser; tests pass
	// their own).
	now func() int64
	// persist is set when the store changed since the last Flush: a Ready
	// that only carries messages needs no IndexedDB write.
	persist bool
}

// Snapshot is everything a device must find again after a reload: its
// identity, replica state, outbox, field states and the dots it holds.
// (A device answers no sync requests, so it keeps no change log.)
type Snapshot struct {
	Version int             `json:"version"`
	NS      string          `json:"ns"`
	ID      crdt.ReplicaID  `json:"id"`
	State   replica.State   `json:"state"`
	Outbox  []crdt.Change   `json:"outbox"`
	Fields  []SnapshotField `json:"fields"`
	Dots    []crdt.Dot      `json:"dots"`
	Offset  int64           `json:"clock_offset_ms,omitempty"`
}

// SnapshotField is one persisted field state.
type SnapshotField struct {
	Coll  string      `json:"coll"`
	Doc   string      `json:"doc"`
	Field string      `json:"field"`
	State *crdt.Field `json:"state"`
}

// New makes a device of namespace ns: a fresh one when snap is empty,
// else the one the snapshot holds. now is the wall clock in ms (nil:
// time.Now).
func New(ns string, snap []byte, now func() int64) (*Device, error) {
	if err := crdt.ValidateName(ns); err != nil {
		return nil, fmt.Errorf("namespace: %w", err)
	}
	if now == nil {
		now = func() int64 { return time.Now().UnixMilli() }
	}
	d := &Device{ns: ns, st: replica.NewMemStorage(), now: now}
	st := replica.State{Vector: crdt.Vector{}}
	var outbox []crdt.Change
	if len(snap) == 0 {
		d.id = uuid.New()
	} else {
		var s Snapshot
		if err := json.Unmarshal(snap, &s); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrSnapshot, err)
		}
		if s.Version != SnapshotVersion || s.NS != ns || s.ID == uuid.Nil {
			return nil, fmt.Errorf("%w: version %d of namespace %q, want version %d of %q", ErrSnapshot, s.Version, s.NS, SnapshotVersion, ns)
		}
		d.id, d.offset, outbox = s.ID, s.Offset, s.Outbox
		st = s.State
		if st.Vector == nil {
			st.Vector = crdt.Vector{}
		}
		for _, f := range s.Fields {
			if f.State == nil {
				continue
			}
			d.st.PutField(crdt.FieldKey{NS: ns, Coll: f.Coll, Doc: f.Doc, Field: f.Field}, f.State)
		}
		for _, dot := range s.Dots {
			d.st.Dots.Add(dot)
		}
		d.st.State, d.st.Outbox = st, slices.Clone(outbox)
	}
	clock := hlc.NewClock(func() int64 { return d.now() + d.offset }, 0)
	d.r = replica.New(replica.Config{
		ID: d.id, Name: "device", NS: ns, Role: replica.RoleDevice, Clock: clock,
		Storage: d.st, State: st, Outbox: outbox,
	})
	return d, nil
}

// ID is the device's replica id.
func (d *Device) ID() crdt.ReplicaID { return d.id }

// Op is one user operation on a document field, as the page sends it.
type Op struct {
	Coll  string          `json:"coll"`
	Doc   string          `json:"doc"`
	Field string          `json:"field"`
	Op    string          `json:"op"` // set, add, remove, incr, resolve, delete
	Value json.RawMessage `json:"value,omitempty"`
}

// Write applies ops locally, all or nothing; they are durable once the
// next Flush's snapshot is saved.
func (d *Device) Write(ops []Op) error {
	rops := make([]resolver.Op, len(ops))
	for i, o := range ops {
		op, err := crdt.ParseOp(o.Op)
		if err != nil {
			return fmt.Errorf("op %d: %w", i, err)
		}
		rops[i] = resolver.Op{Coll: o.Coll, Doc: o.Doc, Field: o.Field, Op: op, Value: o.Value}
	}
	_, err := d.r.Write(rops)
	return err
}

// Step feeds one message the region sent (a replica.Message as JSON).
// A clock_skew refusal pulls the device's clock back to the region's, as
// the Go SDK does, so its next stamps are accepted.
func (d *Device) Step(data []byte) error {
	var m replica.Message
	if err := json.Unmarshal(data, &m); err != nil {
		return fmt.Errorf("device: message from region: %w", err)
	}
	if m.Type == replica.MsgError && m.Code == replica.CodeClockSkew && !m.HLC.IsZero() {
		if off := m.HLC.WallMillis() - d.now(); off < d.offset {
			d.offset = off
		}
	}
	return d.r.Step(m)
}

// Hello is the device's first websocket message (docs/protocol.md).
func (d *Device) Hello(colls []string) ([]byte, error) {
	return json.Marshal(struct {
		Type    string         `json:"type"`
		Version int            `json:"version"`
		NS      string         `json:"ns"`
		Replica crdt.ReplicaID `json:"replica"`
		Vector  crdt.Vector    `json:"vector"`
		Colls   []string       `json:"colls,omitempty"`
	}{"hello", ProtocolVersion, d.ns, d.id, d.r.DurableVector(), colls})
}

// Connect tells the device its region welcomed it: it asks for what it
// lacks and pushes its outbox.
func (d *Device) Connect(region crdt.ReplicaID, colls []string) { d.r.Connect(region, colls) }

// Disconnect tells the device its websocket is gone.
func (d *Device) Disconnect() { d.r.Disconnect() }

// Tick advances logical time: unacknowledged pushes are retried.
func (d *Device) Tick() { d.r.Tick() }

// Flush is one Ready as the page needs it: a snapshot to save (nil when
// nothing durable changed), then messages to send once it is saved.
type Flush struct {
	Snapshot []byte   `json:"-"`
	Messages []string `json:"messages"`
	// Changes are the changes newly held (own writes, and stamped changes
	// from the region), for the page's timeline.
	Changes []crdt.Change `json:"changes,omitempty"`
}

// Ready takes what the replica produced, applies it to the in-memory
// store and returns the snapshot to persist and the messages to send
// after. ok is false when there is nothing to do. Call Advance after the
// snapshot is saved.
func (d *Device) Ready() (f Flush, ok bool, err error) {
	if !d.r.HasReady() {
		return Flush{}, false, nil
	}
	rd := d.r.Ready()
	d.st.Save(&rd)
	// Save keeps a per-region change log for answering sync requests,
	// which a device never does: drop it so memory stays with the state.
	clear(d.st.Logs)
	if rd.State != nil || len(rd.Log) > 0 || len(rd.Fields) > 0 || len(rd.Outbox) > 0 || len(rd.OutboxDone) > 0 {
		f.Snapshot, err = d.Export()
		if err != nil {
			return Flush{}, false, err
		}
	}
	for _, m := range rd.Messages {
		b, err := json.Marshal(m)
		if err != nil {
			return Flush{}, false, fmt.Errorf("device: encode %s: %w", m.Type, err)
		}
		f.Messages = append(f.Messages, string(b))
	}
	f.Changes = rd.Log
	return f, true, nil
}

// Advance tells the device the last Flush's snapshot is saved.
func (d *Device) Advance() { d.r.Advance() }

// Export returns the snapshot of what the store holds. Field states are
// written in key order, so equal states give equal bytes.
func (d *Device) Export() ([]byte, error) {
	s := Snapshot{Version: SnapshotVersion, NS: d.ns, ID: d.id, State: d.st.State, Outbox: d.st.Outbox,
		Offset: d.offset, Fields: []SnapshotField{}, Dots: make([]crdt.Dot, 0, d.st.Dots.Len())}
	if s.State.Vector == nil {
		s.State.Vector = crdt.Vector{}
	}
	if s.Outbox == nil {
		s.Outbox = []crdt.Change{}
	}
	for _, k := range d.st.DocKeys() {
		for name, f := range d.st.DocFields(k) {
			s.Fields = append(s.Fields, SnapshotField{Coll: k.Coll, Doc: k.Doc, Field: name, State: f})
		}
	}
	slices.SortFunc(s.Fields, func(a, b SnapshotField) int {
		return strings.Compare(a.Coll+"\x00"+a.Doc+"\x00"+a.Field, b.Coll+"\x00"+b.Doc+"\x00"+b.Field)
	})
	for dot := range d.st.Dots.All() {
		s.Dots = append(s.Dots, dot)
	}
	slices.SortFunc(s.Dots, func(a, b crdt.Dot) int {
		if c := strings.Compare(a.Replica.String(), b.Replica.String()); c != 0 {
			return c
		}
		return cmp.Compare(a.Seq, b.Seq)
	})
	b, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("device: snapshot: %w", err)
	}
	return b, nil
}

// Doc renders a document as the HTTP API would (ok false if the device
// holds nothing of it).
func (d *Device) Doc(coll, id string) (resolver.View, bool, error) {
	fs, err := d.r.Doc(crdt.DocKey{NS: d.ns, Coll: coll, Doc: id})
	if err != nil {
		return resolver.View{}, false, err
	}
	if len(fs) == 0 {
		return resolver.View{}, false, nil
	}
	return resolver.Render(id, fs, nil), true, nil
}

// Docs renders every document of a collection, by id.
func (d *Device) Docs(coll string) ([]resolver.View, error) {
	var ids []string
	for _, k := range d.st.DocKeys() {
		if k.Coll == coll {
			ids = append(ids, k.Doc)
		}
	}
	slices.Sort(ids)
	out := []resolver.View{}
	for _, id := range ids {
		v, ok, err := d.Doc(coll, id)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, v)
		}
	}
	return out, nil
}

// Status is what the page shows of a device's sync.
type Status struct {
	ID       crdt.ReplicaID `json:"id"`
	Vector   crdt.Vector    `json:"vector"`
	Seq      uint64         `json:"seq"`
	Outbox   []crdt.Change  `json:"outbox"` // own changes no region has acknowledged yet
	Upstream crdt.ReplicaID `json:"upstream"`
	Synced   bool           `json:"synced"` // caught up with the region, nothing pending
	LastErr  string         `json:"last_error,omitempty"`
	HLC      hlc.Timestamp  `json:"hlc"`
}

// Status returns a snapshot of the device's sync state.
func (d *Device) Status() Status {
	s := d.r.Status()
	out := Status{ID: d.id, Vector: s.Vector, Seq: s.Seq, Outbox: slices.Clone(d.st.Outbox), Upstream: s.Upstream,
		Synced: s.Synced, HLC: d.st.State.HLC}
	if out.Outbox == nil {
		out.Outbox = []crdt.Change{}
	}
	if s.LastErr != nil {
		out.LastErr = s.LastErr.Code + ": " + s.LastErr.Text
	}
	return out
}
