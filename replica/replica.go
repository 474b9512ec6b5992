package replica

import (
	"bytes"
	"errors"
	"fmt"
	"slices"

	"github.com/google/uuid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/resolver"
)

// Errors callers tell apart.
var (
	ErrForged    = errors.New("replica: change under another replica's id")
	ErrNamespace = errors.New("replica: message for another namespace")
	ErrReserved  = errors.New("replica: collection is reserved")
	ErrRole      = errors.New("replica: message not for this replica's role")
	ErrEmpty     = errors.New("replica: write without ops")
)

// Config sets up a replica of one namespace.
type Config struct {
	ID      crdt.ReplicaID
	Name    string // the node's human name, sent on heartbeats
	NS      string
	Role    Role
	Clock   *hlc.Clock // shared by the node's namespaces; time is passed in through it
	Storage Storage
	// State and Outbox are what the store holds from earlier runs.
	State  State
	Outbox []crdt.Change
	Limits crdt.Limits // zero: crdt.DefaultLimits
	// PageSize bounds a sync page, in changes (default 1000).
	PageSize int
	// HeartbeatTicks: a region heartbeats every this many ticks (default 1).
	HeartbeatTicks int
	// RetryTicks: an unanswered sync request or push is sent again after
	// this many ticks (default 10).
	RetryTicks int
	// NewID makes change ids (default uuid.New); the simulator seeds it.
	NewID func() uuid.UUID
}

// Replica is the replica state machine of one namespace. It is not safe
// for concurrent use: one loop owns it, as in etcd-io/raft. Inputs go in
// through Write, Step, Tick and (devices) Connect; Ready hands out what to
// persist and send; Advance says it is done.
type Replica struct {
	cfg   Config
	id    crdt.ReplicaID
	ns    string
	clock *hlc.Clock
	st    Storage
	lim   crdt.Limits

	vector  crdt.Vector // includes changes not yet durable
	durable crdt.Vector // what the store holds: the only vector we advertise
	seq     uint64

	// Field states changed since the last Ready (ours to mutate), and those
	// handed out in the Ready being persisted (read-only until Advance).
	// dirtyKeys lists dirty's keys in the order they were first changed:
	// the Ready's order, deterministic without sorting (sorting was a
	// tenth of stepping a batch).
	dirty, inflight         map[crdt.FieldKey]*crdt.Field
	dirtyKeys               []crdt.FieldKey
	dirtyDots, inflightDots map[crdt.Dot]struct{}
	spare                   map[crdt.FieldKey]*crdt.Field // the last round's maps, emptied, for the next
	spareDots               map[crdt.Dot]struct{}
	stateDirty              bool
	rd                      Ready
	cycleBase               crdt.Vector // vector when the current Ready began
	readyOut                bool
	readyState              *State

	// prefetched holds stored fields read ahead for the batch being
	// stepped; nil outside a Step.
	prefetched map[crdt.FieldKey]*crdt.Field

	schemas map[string]resolver.Schema
	tick    int
	syncing map[crdt.ReplicaID]int // peer -> tick a sync request went out
	// asked holds, per peer, the vector the latest sync request to it
	// asked from (see leadsOn).
	asked  map[crdt.ReplicaID]crdt.Vector
	peers  map[crdt.ReplicaID]*Peer
	newest map[crdt.ReplicaID]hlc.Timestamp // per region stamp: newest HLC applied

	// Devices only.
	outbox   []crdt.Change
	pushed   map[crdt.Dot]int // dot -> tick it was last pushed
	upstream crdt.ReplicaID   // the region this device is connected to
	colls    []string
	synced   bool
	lastErr  *Message
	// ackTick is when the last push ack came; ackedSent the latest tick at
	// which a change since acknowledged was pushed (see Tick).
	ackTick, ackedSent int
}

// Peer is what a region knows of another region.
type Peer struct {
	Name   string      // its node name, from its heartbeats
	Vector crdt.Vector // what the peer said it durably holds
	Heard  int         // tick of its last message
}

// New makes a replica from its persisted state.
func New(cfg Config) *Replica {
	if cfg.Limits == (crdt.Limits{}) {
		cfg.Limits = crdt.DefaultLimits
	}
	if cfg.PageSize <= 0 {
		cfg.PageSize = 1000
	}
	if cfg.HeartbeatTicks <= 0 {
		cfg.HeartbeatTicks = 1
	}
	if cfg.RetryTicks <= 0 {
		cfg.RetryTicks = 10
	}
	if cfg.NewID == nil {
		cfg.NewID = uuid.New
	}
	r := &Replica{
		cfg: cfg, id: cfg.ID, ns: cfg.NS, clock: cfg.Clock, st: cfg.Storage, lim: cfg.Limits,
		vector: cfg.State.Vector.Clone(), durable: cfg.State.Vector.Clone(), seq: cfg.State.Seq,
		dirty: map[crdt.FieldKey]*crdt.Field{}, dirtyDots: map[crdt.Dot]struct{}{},
		schemas: map[string]resolver.Schema{}, syncing: map[crdt.ReplicaID]int{},
		asked: map[crdt.ReplicaID]crdt.Vector{}, peers: map[crdt.ReplicaID]*Peer{}, newest: map[crdt.ReplicaID]hlc.Timestamp{},
		outbox: slices.Clone(cfg.Outbox), pushed: map[crdt.Dot]int{},
	}
	r.clock.Restore(cfg.State.HLC)
	r.cycleBase = r.vector.Clone()
	return r
}

// ID returns the replica's id.
func (r *Replica) ID() crdt.ReplicaID { return r.id }

// Vector returns a copy of the vector including changes not yet durable;
// after the next Advance it is durable. Writes answer with it as their
// session token.
func (r *Replica) Vector() crdt.Vector { return r.vector.Clone() }

// DurableVector returns a copy of what the store holds.
func (r *Replica) DurableVector() crdt.Vector { return r.durable.Clone() }

// field returns the current state of a field for reading.
func (r *Replica) field(k crdt.FieldKey) (*crdt.Field, error) {
	if f, ok := r.dirty[k]; ok {
		return f, nil
	}
	if f, ok := r.inflight[k]; ok {
		return f, nil
	}
	if f, ok := r.prefetched[k]; ok {
		return f, nil
	}
	f, err := r.st.Field(k)
	if err != nil {
		return nil, fmt.Errorf("read field %s: %w", k, err)
	}
	return f, nil
}

// prefetch reads, in one go, the stored fields a batch is about to touch,
// when the storage can (FieldBatcher). Valid only within one Step: the
// overlay (dirty, inflight) is consulted first, so what is prefetched is
// exactly what Field would return.
func (r *Replica) prefetch(m Message, cs []crdt.Change) error {
	fb, ok := r.st.(FieldBatcher)
	if !ok || len(cs) < 8 {
		return nil
	}
	keys := make([]crdt.FieldKey, 0, len(cs))
	for i := range cs {
		if !r.willApply(m, &cs[i]) {
			continue
		}
		k := cs[i].Key()
		if _, ok := r.dirty[k]; ok {
			continue
		}
		if _, ok := r.inflight[k]; ok {
			continue
		}
		keys = append(keys, k)
	}
	fs, err := fb.Fields(keys)
	if err != nil {
		return fmt.Errorf("read fields: %w", err)
	}
	r.prefetched = make(map[crdt.FieldKey]*crdt.Field, len(keys))
	for _, k := range keys {
		r.prefetched[k] = fs[k] // nil: known to have no state
	}
	return nil
}

// mutable returns a field state this replica may change: dirty ones are
// its own; anything else is copied first. A field with no state yet is
// made from c when c is given, by crdt.NewField (the field and its state
// in one allocation: most changes a region receives create their field),
// and made reports that c is in it already.
func (r *Replica) mutable(k crdt.FieldKey, c *crdt.Change) (f *crdt.Field, made bool, err error) {
	if f, ok := r.dirty[k]; ok {
		return f, false, nil
	}
	f, err = r.field(k)
	switch {
	case err != nil:
		return nil, false, err
	case f != nil:
		f = f.Clone()
	case c != nil:
		f, made = crdt.NewField(c), true
	default:
		f = &crdt.Field{}
	}
	r.dirty[k] = f
	r.dirtyKeys = append(r.dirtyKeys, k)
	return f, made, nil
}

func (r *Replica) hasDot(d crdt.Dot) (bool, error) {
	if _, ok := r.dirtyDots[d]; ok {
		return true, nil
	}
	if _, ok := r.inflightDots[d]; ok {
		return true, nil
	}
	ok, err := r.st.HasDot(d)
	if err != nil {
		return false, fmt.Errorf("look up dot: %w", err)
	}
	return ok, nil
}

// Doc returns the current fields of a document, durable or not. The caller
// must not modify them.
func (r *Replica) Doc(k crdt.DocKey) (map[string]*crdt.Field, error) {
	fs, err := r.st.Doc(k)
	if err != nil {
		return nil, fmt.Errorf("read doc %s: %w", k, err)
	}
	out := make(map[string]*crdt.Field, len(fs))
	for n, f := range fs {
		out[n] = f
	}
	for _, m := range []map[crdt.FieldKey]*crdt.Field{r.inflight, r.dirty} {
		for fk, f := range m {
			if fk.DocKey() == k {
				out[fk.Field] = f
			}
		}
	}
	return out, nil
}

// Schema returns a collection's schema as this replica knows it.
func (r *Replica) Schema(coll string) (resolver.Schema, error) {
	if s, ok := r.schemas[coll]; ok {
		return s, nil
	}
	fs, err := r.Doc(crdt.DocKey{NS: r.ns, Coll: resolver.SchemaColl, Doc: coll})
	if err != nil {
		return resolver.Schema{}, err
	}
	s := resolver.SchemaFromDoc(fs)
	r.schemas[coll] = s
	return s, nil
}

// PutSchema sets a collection's schema. It replicates like any write.
func (r *Replica) PutSchema(coll string, s resolver.Schema) ([]crdt.Change, error) {
	if err := crdt.ValidateName(coll); err != nil {
		return nil, fmt.Errorf("collection: %w", err)
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	old, err := r.Schema(coll)
	if err != nil {
		return nil, err
	}
	ops := resolver.SchemaOps(coll, old, s)
	if len(ops) == 0 {
		return nil, nil
	}
	return r.write(ops, true)
}

// Write turns user ops into changes and applies them locally, all or
// nothing. The changes are durable after the next Ready is persisted and
// Advance is called; only then may the caller acknowledge the write.
func (r *Replica) Write(ops []resolver.Op) ([]crdt.Change, error) {
	return r.write(ops, false)
}

func (r *Replica) write(ops []resolver.Op, internal bool) ([]crdt.Change, error) {
	if len(ops) == 0 {
		return nil, ErrEmpty
	}
	staged := map[crdt.FieldKey]*crdt.Field{}
	changes := make([]crdt.Change, 0, len(ops))
	seq := r.seq
	for i, op := range ops {
		c, err := r.prepare(op, internal, staged, seq+1)
		if err != nil {
			if len(ops) > 1 {
				return nil, fmt.Errorf("op %d: %w", i, err)
			}
			return nil, err
		}
		seq++
		changes = append(changes, c)
	}
	// Commit: nothing above touched the replica's state.
	r.seq = seq
	for i := range changes {
		// In the order of the ops, not of the map: the Ready's order
		// must not depend on map iteration.
		k := changes[i].Key()
		f, ok := staged[k]
		if !ok {
			continue
		}
		delete(staged, k)
		if _, ok := r.dirty[k]; !ok {
			r.dirtyKeys = append(r.dirtyKeys, k)
		}
		r.dirty[k] = f
		if k.Coll == resolver.SchemaColl {
			delete(r.schemas, k.Doc)
		}
	}
	for _, c := range changes {
		r.dirtyDots[c.Dot()] = struct{}{}
		r.rd.Log = append(r.rd.Log, c)
		if r.cfg.Role == RoleRegion {
			r.vector[r.id] = c.RSeq
			r.newest[r.id] = c.HLC
		} else {
			r.rd.Outbox = append(r.rd.Outbox, c)
			r.outbox = append(r.outbox, c)
		}
	}
	if r.cfg.Role == RoleDevice && r.upstream != uuid.Nil {
		r.push(changes)
	}
	r.stateDirty = true
	r.rd.Writes++
	return changes, nil
}

func (r *Replica) prepare(op resolver.Op, internal bool, staged map[crdt.FieldKey]*crdt.Field, seq uint64) (crdt.Change, error) {
	if err := crdt.ValidateName(op.Coll); err != nil {
		return crdt.Change{}, fmt.Errorf("collection: %w", err)
	}
	if !internal && resolver.IsReserved(op.Coll) {
		return crdt.Change{}, fmt.Errorf("%w: %q (names starting with _ belong to syncd)", ErrReserved, op.Coll)
	}
	c := crdt.Change{NS: r.ns, Coll: op.Coll, Doc: op.Doc, Field: op.Field, Op: op.Op, Origin: r.id, Seq: seq}
	if op.Op == crdt.OpDelete {
		c.Field = ""
		if len(op.Value) != 0 {
			return crdt.Change{}, fmt.Errorf("%w: delete takes no value", crdt.ErrInvalid)
		}
	} else {
		if op.Op == crdt.OpInvalid {
			return crdt.Change{}, fmt.Errorf("%w: missing op", crdt.ErrUnknownOp)
		}
		if len(op.Value) == 0 {
			return crdt.Change{}, fmt.Errorf("%w: op %s on %q needs a value", crdt.ErrInvalid, op.Op, op.Field)
		}
		v, err := crdt.Canonical(op.Value, r.lim)
		if err != nil {
			return crdt.Change{}, fmt.Errorf("field %q: %w", op.Field, err)
		}
		c.Value = v
		c.Kind = crdt.KindLWW
		if !internal {
			s, err := r.Schema(op.Coll)
			if err != nil {
				return crdt.Change{}, err
			}
			c.Kind = s.KindOf(op.Field)
		}
	}
	if err := crdt.ValidateDocID(c.Doc); err != nil {
		return crdt.Change{}, err
	}
	if c.Field != "" {
		if err := crdt.ValidateField(c.Field); err != nil {
			return crdt.Change{}, err
		}
	}
	k := c.Key()
	f, ok := staged[k]
	if !ok {
		cur, err := r.field(k)
		if err != nil {
			return crdt.Change{}, err
		}
		if cur == nil {
			f = &crdt.Field{}
		} else {
			f = cur.Clone()
		}
	}
	if c.Op != crdt.OpDelete {
		if err := resolver.For(c.Kind).Prepare(f, &c); err != nil {
			return crdt.Change{}, err
		}
	}
	c.ID = r.cfg.NewID()
	c.HLC = r.clock.Now()
	if r.cfg.Role == RoleRegion {
		c.Region, c.RSeq = r.id, c.Seq
	}
	if err := c.Validate(r.lim); err != nil {
		return crdt.Change{}, err
	}
	f.Apply(&c)
	staged[k] = f
	return c, nil
}

// applyRemote merges a change received from another replica unless its
// dot is already held. It reports whether it was new.
func (r *Replica) applyRemote(c *crdt.Change) (bool, error) {
	d := c.Dot()
	// A region's own change travels only under its own stamp, so when its
	// stamp is new to us (the only way it gets here from a batch) its dot
	// is too: no store lookup on the common path of replication.
	if !(c.Region == c.Origin && c.RSeq == c.Seq && r.vector[c.Region] < c.RSeq) {
		held, err := r.hasDot(d)
		if err != nil || held {
			return false, err
		}
	}
	f, made, err := r.mutable(c.Key(), c)
	if err != nil {
		return false, err
	}
	if !made {
		f.Apply(c)
	}
	r.dirtyDots[d] = struct{}{}
	if c.Coll == resolver.SchemaColl {
		delete(r.schemas, c.Doc)
	}
	return true, nil
}

// Step feeds one message from another replica. A message that is refused
// changes nothing and returns an error (and, where the sender should know,
// queues a MsgError to it); a batch is applied region by region, up to the
// first change whose clock is too far ahead.
func (r *Replica) Step(m Message) error {
	if m.NS != r.ns {
		return fmt.Errorf("%w: %q, this replica holds %q", ErrNamespace, m.NS, r.ns)
	}
	switch m.Type {
	case MsgBatch:
		return r.stepBatch(m)
	case MsgHeartbeat, MsgAck:
		if r.cfg.Role == RoleRegion {
			p := r.peers[m.From]
			if p == nil {
				p = &Peer{}
				r.peers[m.From] = p
			}
			p.Vector, p.Heard = m.Vector.Clone(), r.tick
			if m.Node != "" {
				p.Name = m.Node
			}
		}
		if m.Type == MsgHeartbeat && !r.vector.CoversAll(m.Vector) &&
			(r.cfg.Role == RoleRegion || m.From == r.upstream) {
			r.requestSync(m.From, false)
		}
		return nil
	case MsgSyncReq:
		if r.cfg.Role != RoleRegion {
			return fmt.Errorf("%w: sync request to a device", ErrRole)
		}
		return r.answerSync(m)
	case MsgPush:
		if r.cfg.Role != RoleRegion {
			return fmt.Errorf("%w: push to a device", ErrRole)
		}
		return r.stepPush(m)
	case MsgPushAck:
		if r.cfg.Role != RoleDevice {
			return fmt.Errorf("%w: push ack to a region", ErrRole)
		}
		r.stepPushAck(m)
		return nil
	case MsgError:
		e := m
		r.lastErr = &e
		return nil
	}
	return fmt.Errorf("%w: unknown message type %d", crdt.ErrInvalid, m.Type)
}

func (r *Replica) checkBatch(m Message) error {
	last := map[crdt.ReplicaID]uint64{}
	for i := range m.Changes {
		c := &m.Changes[i]
		if c.NS != r.ns {
			return fmt.Errorf("change %d: %w", i, ErrNamespace)
		}
		// Only what this replica will apply is validated in full: a batch
		// often overlaps what is already held (duplicates, a fan-out to a
		// device still catching up), and those changes are never read.
		if r.willApply(m, c) {
			if err := c.Validate(r.lim); err != nil {
				return fmt.Errorf("change %d: %w", i, err)
			}
		}
		if c.Region == uuid.Nil {
			return fmt.Errorf("change %d: %w: unstamped change in a batch", i, crdt.ErrInvalid)
		}
		head, ok := m.Head[c.Region]
		if !ok || c.RSeq <= m.Base[c.Region] || c.RSeq > head || c.RSeq <= last[c.Region] {
			return fmt.Errorf("change %d: %w: stamp %d outside the batch's range or out of order", i, crdt.ErrInvalid, c.RSeq)
		}
		last[c.Region] = c.RSeq
	}
	for reg, h := range m.Head {
		if h < m.Base[reg] {
			return fmt.Errorf("%w: batch head below its base", crdt.ErrInvalid)
		}
	}
	return nil
}

// willApply reports whether stepBatch would apply c from batch m: its
// region's part continues what is held, and c is new.
func (r *Replica) willApply(m Message, c *crdt.Change) bool {
	have := r.vector[c.Region]
	return have >= m.Base[c.Region] && c.RSeq > have
}

func (r *Replica) stepBatch(m Message) error {
	if err := r.checkBatch(m); err != nil {
		r.reply(m.From, CodeInvalid, err)
		return fmt.Errorf("batch from %s: %w", m.From, err)
	}
	if r.cfg.Role == RoleDevice && m.From != r.upstream {
		return nil // from a region this device has left; its catch-up will cover it
	}
	if r.cfg.Role == RoleDevice && m.Sync && len(m.Colls) > 0 && !sameColls(m.Colls, r.colls) {
		// A page filtered for other collections than this device follows
		// now: the answer to a request from before it followed more. Its
		// ranges would move the vector past what it left out.
		return nil
	}
	// An answer to an older request is applied like any batch, but it
	// neither ends the request in flight nor leads anywhere: following it
	// too would run a second catch-up alongside the first, pulling every
	// page twice, and one more for every retry of a long catch-up.
	answer := m.Sync && r.leadsOn(m)
	if answer {
		delete(r.syncing, m.From)
	}
	if err := r.prefetch(m, m.Changes); err != nil {
		return fmt.Errorf("apply batch from %s: %w", m.From, err)
	}
	defer func() { r.prefetched = nil }()
	var skewErr error
	gap, progressed := false, false
	for _, reg := range m.Head.Regions() {
		have := r.vector[reg]
		if have < m.Base[reg] {
			gap = true
			continue
		}
		if have >= m.Head[reg] {
			continue
		}
		upto := m.Head[reg]
		for i := range m.Changes {
			c := &m.Changes[i]
			if c.Region != reg || c.RSeq <= have {
				continue
			}
			if err := r.clock.Update(c.HLC); err != nil {
				upto = c.RSeq - 1
				skewErr = fmt.Errorf("batch from %s: change %s from %s: %w", m.From, c.ID, c.Origin, err)
				break
			}
			fresh, err := r.applyRemote(c)
			if err != nil {
				return fmt.Errorf("apply batch from %s: %w", m.From, err)
			}
			if c.HLC > r.newest[reg] {
				r.newest[reg] = c.HLC
			}
			if !fresh && r.cfg.Role == RoleDevice {
				// A device keeps no log (see Ready.Log): a change it holds
				// (its own, back with a stamp, or one fetched again after
				// its vector was reset) is no news to it.
				continue
			}
			if len(r.rd.Log) == cap(r.rd.Log) {
				// Room for the rest of the batch at once, rather than
				// repeated growth: changes are large, and a batch
				// usually holds a thousand of them.
				r.rd.Log = slices.Grow(r.rd.Log, len(m.Changes)-i)
			}
			r.rd.Log = append(r.rd.Log, *c)
		}
		if upto > have {
			r.vector[reg] = upto
			progressed = true
		}
	}
	if progressed {
		r.stateDirty = true
	}
	switch {
	case gap:
		r.requestSync(m.From, false)
	case answer && m.More && skewErr == nil:
		r.requestSync(m.From, true)
	case answer && skewErr == nil && r.cfg.Role == RoleDevice:
		r.synced = true
	case answer && skewErr == nil:
		r.nextCatchUp()
	}
	if skewErr != nil {
		// Asking again at the next heartbeat would fetch the same page and
		// refuse it again; wait a retry period for the clocks to agree.
		if m.Sync {
			r.syncing[m.From] = r.tick
		}
		// A device that refused part of what its region holds is behind.
		if r.cfg.Role == RoleDevice {
			r.synced = false
		}
	}
	if progressed && !m.Sync && r.cfg.Role == RoleRegion {
		r.send(Message{Type: MsgAck, To: m.From, Vector: r.vector.Clone()})
	}
	return skewErr
}

func (r *Replica) stepPush(m Message) error {
	for i := range m.Changes {
		c := &m.Changes[i]
		if c.Origin != m.From {
			err := fmt.Errorf("%w: change %d has origin %s, pusher is %s", ErrForged, i, c.Origin, m.From)
			r.reply(m.From, CodeForged, err)
			return err
		}
		if c.Region != uuid.Nil || c.NS != r.ns {
			err := fmt.Errorf("%w: change %d: pushed changes are unstamped and of this namespace", crdt.ErrInvalid, i)
			r.reply(m.From, CodeInvalid, err)
			return err
		}
		if err := c.Validate(r.lim); err != nil {
			err = fmt.Errorf("change %d: %w", i, err)
			r.reply(m.From, CodeInvalid, err)
			return err
		}
	}
	// Check every stamp before applying any, so a refused push changes
	// nothing. Update only moves the clock for stamps within the bound.
	for i := range m.Changes {
		if err := r.clock.Update(m.Changes[i].HLC); err != nil {
			e := Message{Type: MsgError, To: m.From, Code: CodeClockSkew, Text: err.Error(), HLC: r.clock.Now()}
			r.send(e)
			return fmt.Errorf("push from %s: %w", m.From, err)
		}
	}
	dots := make([]crdt.Dot, 0, len(m.Changes))
	for i := range m.Changes {
		c := m.Changes[i]
		dots = append(dots, c.Dot())
		fresh, err := r.applyRemote(&c)
		if err != nil {
			return fmt.Errorf("apply push from %s: %w", m.From, err)
		}
		if !fresh {
			continue // a re-sent push: acknowledged again, stamped once
		}
		r.seq++
		c.Region, c.RSeq = r.id, r.seq
		r.vector[r.id] = r.seq
		r.newest[r.id] = max(r.newest[r.id], c.HLC)
		r.rd.Log = append(r.rd.Log, c)
		r.stateDirty = true
	}
	r.send(Message{Type: MsgPushAck, To: m.From, Dots: dots})
	return nil
}

func (r *Replica) stepPushAck(m Message) {
	done := map[crdt.Dot]bool{}
	for _, d := range m.Dots {
		done[d] = true
	}
	kept := r.outbox[:0]
	for _, c := range r.outbox {
		if done[c.Dot()] {
			r.rd.OutboxDone = append(r.rd.OutboxDone, c.Dot())
			if t, ok := r.pushed[c.Dot()]; ok {
				r.ackTick, r.ackedSent = r.tick, max(r.ackedSent, t)
			}
			delete(r.pushed, c.Dot())
		} else {
			kept = append(kept, c)
		}
	}
	clear(r.outbox[len(kept):])
	r.outbox = kept
}

func (r *Replica) answerSync(m Message) error {
	limit := m.Limit
	if limit <= 0 || limit > r.cfg.PageSize {
		limit = r.cfg.PageSize
	}
	for _, c := range m.Colls {
		if err := crdt.ValidateName(c); err != nil {
			r.reply(m.From, CodeInvalid, err)
			return fmt.Errorf("sync request from %s: %w", m.From, err)
		}
	}
	// The answer names the collections it was filtered for: its ranges
	// cover what it leaves out (see stepBatch).
	out := Message{Type: MsgBatch, To: m.From, Sync: true, Base: crdt.Vector{}, Head: crdt.Vector{}, Colls: m.Colls, Req: m.Req}
	for _, reg := range r.durable.Regions() {
		from := m.Vector[reg] + 1
		if r.durable[reg] < from {
			continue
		}
		if limit == 0 {
			out.More = true
			break
		}
		cs, err := r.st.Log(reg, from, limit)
		if err != nil {
			return fmt.Errorf("sync request from %s: read log of %s: %w", m.From, reg, err)
		}
		n := 0
		for n < len(cs) && cs[n].RSeq == from+uint64(n) {
			n++ // stop at a hole; the asker will ask again from there
		}
		if n == 0 {
			continue
		}
		out.Base[reg], out.Head[reg] = from-1, from-1+uint64(n)
		page := cs[:n:n]
		if len(m.Colls) > 0 {
			page = slices.DeleteFunc(page, func(c crdt.Change) bool { return !Follows(m.Colls, c.Coll) })
		}
		// Log's slice is ours: the first region's page is sent as it is,
		// not copied.
		if out.Changes == nil {
			out.Changes = page
		} else {
			out.Changes = append(out.Changes, page...)
		}
		limit -= n
		if out.Head[reg] < r.durable[reg] {
			out.More = true
		}
	}
	r.send(out)
	return nil
}

func (r *Replica) requestSync(peer crdt.ReplicaID, force bool) {
	if !force {
		// One catch-up at a time: asking every peer that is ahead would
		// pull the same changes from each of them. Entries expire in Tick,
		// so a peer that never answers holds nothing up for long.
		for _, t := range r.syncing {
			if r.tick-t < r.cfg.RetryTicks {
				return
			}
		}
	}
	r.syncing[peer] = r.tick
	r.asked[peer] = r.vector.Clone()
	r.send(Message{Type: MsgSyncReq, To: peer, Vector: r.vector.Clone(), Colls: r.colls, Limit: r.cfg.PageSize})
}

// Follows reports whether a device that follows colls (none: all) gets
// the changes of collection coll; schemas always come. Sync answers, the
// region's websocket gateway and the simulator filter by it.
func Follows(colls []string, coll string) bool {
	return len(colls) == 0 || coll == resolver.SchemaColl || slices.Contains(colls, coll)
}

// sameColls reports whether two lists name the same collections (none:
// all).
func sameColls(a, b []string) bool {
	if len(a) == 0 || len(b) == 0 {
		return len(a) == len(b)
	}
	for _, c := range a {
		if !slices.Contains(b, c) {
			return false
		}
	}
	for _, c := range b {
		if !slices.Contains(a, c) {
			return false
		}
	}
	return true
}

// leadsOn reports whether sync answer m is one to follow: a page starts
// where its request asked from, so its base, in every region it carries,
// is either the vector of the latest request made to its sender, or this
// replica's own vector (a request made on its behalf, such as the Go
// SDK's "sync now"). An answer to an older request is neither once the
// replica has moved on; two answers to the same request, only the first
// is, since it moves the vector. (An empty last page carries no region
// and is always followed: it only says the sender had nothing more.)
func (r *Replica) leadsOn(m Message) bool {
	starts := func(v crdt.Vector) bool {
		for reg, b := range m.Base {
			if v[reg] != b {
				return false
			}
		}
		return true
	}
	v, ok := r.asked[m.From]
	return (ok && starts(v)) || starts(r.vector)
}

// nextCatchUp follows a finished catch-up with the next peer still known
// to be ahead, at once: waiting for its next heartbeat would cost a whole
// heartbeat period per peer. The lowest id goes first so that replaying
// the same inputs gives the same requests.
func (r *Replica) nextCatchUp() {
	var next crdt.ReplicaID
	for id, p := range r.peers {
		if !r.vector.CoversAll(p.Vector) && (next == uuid.Nil || bytes.Compare(id[:], next[:]) < 0) {
			next = id
		}
	}
	if next != uuid.Nil {
		r.requestSync(next, false)
	}
}

func (r *Replica) reply(to crdt.ReplicaID, code string, err error) {
	r.send(Message{Type: MsgError, To: to, Code: code, Text: err.Error()})
}

func (r *Replica) send(m Message) {
	m.NS, m.From = r.ns, r.id
	r.rd.Messages = append(r.rd.Messages, m)
}

// Tick advances the replica's logical time: regions heartbeat, and
// unanswered sync requests and pushes are retried.
func (r *Replica) Tick() {
	r.tick++
	for p, t := range r.syncing {
		if r.tick-t >= r.cfg.RetryTicks {
			delete(r.syncing, p)
		}
	}
	switch r.cfg.Role {
	case RoleRegion:
		if r.tick%r.cfg.HeartbeatTicks == 0 {
			r.send(Message{Type: MsgHeartbeat, Vector: r.durable.Clone(), Node: r.cfg.Name})
		}
	case RoleDevice:
		if r.upstream == uuid.Nil {
			return
		}
		// A push unanswered for a retry period is sent again only if it
		// looks lost: a push sent after it was acknowledged (the region
		// takes a connection's pushes in order), or no acknowledgement at
		// all came for a retry period. While acknowledgements keep coming
		// it is most likely still queued at the region, behind the rest of
		// a long outbox: sending it again would queue it twice, and again
		// at every retry, slowing the region that is already behind
		// (TestPushRetriesWaitForProgress, device_test.go, pushed 4.5 times
		// the outbox).
		quiet := r.tick-r.ackTick >= r.cfg.RetryTicks
		var again []crdt.Change
		for _, c := range r.outbox {
			t, ok := r.pushed[c.Dot()]
			if !ok || r.tick-t >= r.cfg.RetryTicks && (quiet || t < r.ackedSent) {
				again = append(again, c)
			}
		}
		r.push(again)
	}
}

// Connect tells a device it reached a region: it asks for what it lacks
// (only in colls, if given) and pushes its outbox.
func (r *Replica) Connect(region crdt.ReplicaID, colls []string) {
	r.upstream, r.colls, r.synced = region, slices.Clone(colls), false
	clear(r.pushed)
	clear(r.syncing)
	clear(r.asked)
	r.requestSync(region, true)
	r.push(r.outbox)
}

// Disconnect tells a device it lost its region.
func (r *Replica) Disconnect() {
	r.upstream, r.synced = uuid.Nil, false
	clear(r.syncing)
	clear(r.asked)
}

func (r *Replica) push(cs []crdt.Change) {
	for len(cs) > 0 {
		n := min(len(cs), r.cfg.PageSize)
		for _, c := range cs[:n] {
			r.pushed[c.Dot()] = r.tick
		}
		r.send(Message{Type: MsgPush, To: r.upstream, Changes: slices.Clone(cs[:n])})
		cs = cs[n:]
	}
}

// maxKept bounds the buffers a replica keeps from one round for the
// next: a burst's worth need not be held for good.
const maxKept = 4096

// HasReady reports whether Ready has anything to hand out.
func (r *Replica) HasReady() bool {
	return !r.readyOut && (len(r.dirty) > 0 || r.stateDirty || !r.rd.IsEmpty())
}

// Ready hands out what to persist and send. Call Advance once it is
// persisted and sent; until then Ready must not be called again.
func (r *Replica) Ready() Ready {
	if r.readyOut {
		panic("replica: Ready called before Advance")
	}
	rd := r.rd
	r.rd = Ready{}
	rd.NS = r.ns
	if r.stateDirty {
		rd.State = &State{Vector: r.vector.Clone(), Seq: r.seq, HLC: r.clock.Last()}
	}
	rd.Fields = make([]FieldUpdate, len(r.dirtyKeys))
	for i, k := range r.dirtyKeys {
		rd.Fields[i] = FieldUpdate{Key: k, State: r.dirty[k]}
	}
	if r.cfg.Role == RoleRegion {
		r.batches(&rd)
	}
	// The next round is likely the size of this one: it gets the maps
	// of the round before, emptied by Advance (or, after a burst, maps of
	// this round's size), so they neither grow change by change nor are
	// made anew every round.
	r.inflight, r.dirty = r.dirty, r.spare
	r.inflightDots, r.dirtyDots = r.dirtyDots, r.spareDots
	if r.dirty == nil {
		r.dirty = make(map[crdt.FieldKey]*crdt.Field, len(r.inflight))
		r.dirtyDots = make(map[crdt.Dot]struct{}, len(r.inflightDots))
	}
	r.spare, r.spareDots = nil, nil
	clear(r.dirtyKeys) // let the keys' strings go
	if cap(r.dirtyKeys) > maxKept {
		r.dirtyKeys = nil // a burst's worth need not be kept
	}
	r.dirtyKeys = r.dirtyKeys[:0]
	r.stateDirty = false
	r.cycleBase = r.vector.Clone()
	r.readyOut, r.readyState = true, rd.State
	return rd
}

// batches adds the live publish of this region's own stamps and the
// fan-out of everything newly held.
func (r *Replica) batches(rd *Ready) {
	fan := Message{Type: MsgBatch, Base: crdt.Vector{}, Head: crdt.Vector{}}
	for reg, n := range r.vector {
		if b := r.cycleBase[reg]; n > b {
			fan.Base[reg], fan.Head[reg] = b, n
		}
	}
	if len(fan.Head) == 0 {
		return
	}
	stamped := onlyFunc(rd.Log, func(c *crdt.Change) bool { return c.Region != uuid.Nil })
	fan.Changes = stamped
	fan.NS, fan.From = r.ns, r.id
	rd.Fanout = &fan
	if n, b := r.vector[r.id], r.cycleBase[r.id]; n > b {
		pub := Message{Type: MsgBatch, Base: crdt.Vector{r.id: b}, Head: crdt.Vector{r.id: n}}
		pub.Changes = onlyFunc(stamped, func(c *crdt.Change) bool { return c.Region == r.id })
		r.send(pub)
		rd.Messages = append(rd.Messages, r.rd.Messages...)
		r.rd.Messages = nil
	}
}

// onlyFunc returns the changes of cs that keep reports true. When that is
// all of them (every change of a region's own writes, or of a batch from
// a peer) it is cs itself, capped so an append cannot write into it: a
// Ready is read-only once handed out, and copying every change once for
// the fan-out and again for the publish was a tenth of what stepping a
// batch allocated.
func onlyFunc(cs []crdt.Change, keep func(*crdt.Change) bool) []crdt.Change {
	n := 0
	for i := range cs {
		if keep(&cs[i]) {
			n++
		}
	}
	if n == len(cs) {
		return cs[:n:n]
	}
	out := make([]crdt.Change, 0, n)
	for i := range cs {
		if keep(&cs[i]) {
			out = append(out, cs[i])
		}
	}
	return out
}

// Advance tells the replica the last Ready is persisted and sent.
func (r *Replica) Advance() {
	if r.readyState != nil {
		r.durable = r.readyState.Vector.Clone()
	}
	if len(r.inflight) <= maxKept && len(r.inflightDots) <= maxKept {
		clear(r.inflight) // let the states go
		clear(r.inflightDots)
		r.spare, r.spareDots = r.inflight, r.inflightDots
	}
	r.inflight, r.inflightDots = nil, nil
	r.readyOut, r.readyState = false, nil
}

// Status is a snapshot of what the replica knows, for /v1/status and the
// SDK.
type Status struct {
	ID       crdt.ReplicaID
	Vector   crdt.Vector // durable
	Seq      uint64
	Peers    map[crdt.ReplicaID]Peer
	Newest   map[crdt.ReplicaID]hlc.Timestamp // per region: newest HLC applied from its stamps
	Outbox   int                              // devices: changes no region has acknowledged
	Upstream crdt.ReplicaID                   // devices: the region connected to
	Synced   bool                             // devices: caught up since connecting
	LastErr  *Message                         // the last MsgError received
	Tick     int
}

// Status returns a snapshot.
func (r *Replica) Status() Status {
	s := Status{ID: r.id, Vector: r.durable.Clone(), Seq: r.seq, Peers: map[crdt.ReplicaID]Peer{},
		Newest: map[crdt.ReplicaID]hlc.Timestamp{}, Outbox: len(r.outbox), Upstream: r.upstream,
		Synced: r.synced && len(r.outbox) == 0, LastErr: r.lastErr, Tick: r.tick}
	for id, p := range r.peers {
		s.Peers[id] = Peer{Name: p.Name, Vector: p.Vector.Clone(), Heard: p.Heard}
	}
	for id, t := range r.newest {
		s.Newest[id] = t
	}
	return s
}
