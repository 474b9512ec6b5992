package replicatest

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"

	"github.com/google/uuid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/replica"
	"github.com/syncd/syncd/resolver"
)

// Config shapes a simulated deployment and its faults.
type Config struct {
	Regions int
	Devices int
	// Ops is how many local ops the random phase makes (refused ones
	// included); the run's other events are interleaved with them.
	Ops int
	// Drop and Dup are the chances that a sent message is lost, or
	// delivered twice, during the random phase.
	Drop, Dup float64
	// Partitions and Crashes switch those faults on.
	Partitions bool
	Crashes    bool
	// FarClock gives one device, in one seed of four, a clock 70 seconds
	// ahead: past hlc.DefaultMaxSkew for most replicas, so they refuse its
	// stamps (and batches carrying them) until quiescence moves time on.
	FarClock bool
	// Docs is how many documents the ops touch. Keep it small: conflicts
	// are the point.
	Docs int
	// PageSize and RetryTicks are passed to every replica; a small page
	// makes sync answers and pushes page.
	PageSize   int
	RetryTicks int
	// MaxRounds bounds the quiescence phase; not settling within it is a
	// failure.
	MaxRounds int
	// TraceLen is how many of the last events a failure shows.
	TraceLen int
	// Follow makes every third device follow only the collection with the
	// schema, not the second one the ops then write too: catch-up pages
	// and live batches (as the region's gateway filters them) leave it
	// out. Now and then such a device starts following everything, as a
	// clientsdk device does when its Collections widen: its vector goes
	// back to empty (sqlitestore.Follow), its data and outbox stay, and it
	// restarts. Its documents of the second collection are checked only
	// once it follows it, but then in full.
	Follow bool
	// Wire is the share of deliveries that go through encoding/json, as
	// on a real transport, rather than handing the Go value over (which
	// costs several times the replica's own work).
	Wire float64
}

// DefaultConfig is the deployment of issue 2: 5 regions, 20 devices, 2,000
// ops, 20% drops, 30% duplicates, partitions and crashes.
func DefaultConfig() Config {
	return Config{
		Regions: 5, Devices: 20, Ops: 2000,
		Drop: 0.2, Dup: 0.3, Partitions: true, Crashes: true, FarClock: true,
		Docs: 3, PageSize: 16, RetryTicks: 5,
		MaxRounds: 60, TraceLen: 200, Wire: 0.02,
	}
}

// Result describes one run.
type Result struct {
	Seed uint64
	// Steps is the number of random-phase events.
	Steps int
	// Ops counts local ops tried; Refused those a replica rightly refused
	// (an op that does not fit the field's kind as that replica knows the
	// schema); Lost those made but lost in a crash before being saved.
	Ops, Refused, Lost int
	// Schemaless counts the ops tried by a replica that had not yet
	// received the schema: it writes every field as lww.
	Schemaless int
	// Changes is the number of changes made durable by their origins: the
	// reference model's input.
	Changes int
	// Network.
	Sent, Dropped, Duplicated, Delivered, MaxQueue int
	// Carried counts the changes in delivered messages: against Changes
	// times the number of replicas, what replication costs.
	Carried int
	// SkewRefusals counts messages refused, rightly, for carrying a stamp
	// too far ahead of the receiver's clock.
	SkewRefusals int
	// Faults.
	// MidReadyCrashes struck between Ready and Save; UnsentCrashes between
	// Save and sending.
	Crashes, MidReadyCrashes, UnsentCrashes, Partitions, Failovers int
	// Widened counts devices that went from following one collection to
	// following all (Config.Follow).
	Widened int
	// Rounds is how many tick-and-deliver rounds quiescence took, of which
	// RegionRounds before the devices were connected.
	Rounds, RegionRounds int
	// Digest hashes the converged state and the figures above, so two runs
	// of one seed can be compared.
	Digest string
	// Trace is the run's last events, oldest first.
	Trace []string
}

// Failure is a run that did not converge, or converged to the wrong state.
type Failure struct {
	Seed  uint64
	Err   error
	Trace []string
}

func (f *Failure) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "seed %d: %v\n", f.Seed, f.Err)
	fmt.Fprintf(&b, "replay: go test ./replica/replicatest -run TestSim -seed=%d -v\n", f.Seed)
	fmt.Fprintf(&b, "last %d events:\n", len(f.Trace))
	for _, e := range f.Trace {
		b.WriteString("  ")
		b.WriteString(e)
		b.WriteByte('\n')
	}
	return b.String()
}

func (f *Failure) Unwrap() error { return f.Err }

// Run runs the default deployment with seed.
func Run(seed uint64) (Result, error) { return DefaultConfig().Run(seed) }

// Run plays one seeded history and checks it. The error, if any, is a
// *Failure.
func (c Config) Run(seed uint64) (Result, error) {
	c.fill()
	s := newSim(c, seed)
	err := s.play()
	if err == nil {
		err = s.check()
	}
	s.res.Trace = s.trace.lines()
	if err != nil {
		return s.res, &Failure{Seed: seed, Err: err, Trace: s.res.Trace}
	}
	return s.res, nil
}

func (c *Config) fill() {
	d := DefaultConfig()
	if c.Regions <= 0 {
		c.Regions = 1
	}
	if c.Docs <= 0 {
		c.Docs = d.Docs
	}
	if c.PageSize <= 0 {
		c.PageSize = d.PageSize
	}
	if c.RetryTicks <= 0 {
		c.RetryTicks = d.RetryTicks
	}
	if c.MaxRounds <= 0 {
		c.MaxRounds = d.MaxRounds
	}
	if c.TraceLen <= 0 {
		c.TraceLen = d.TraceLen
	}
}

const (
	ns   = "app"
	coll = "items"
	// coll2 is written only with Config.Follow: it has no schema, so its
	// fields are all lww.
	coll2 = "notes"
)

// fieldSpec is a field the ops touch and the kind the schema gives it;
// "note" is not in the schema, so it is lww by default.
type fieldSpec struct {
	name string
	kind crdt.Kind
}

var fields = []fieldSpec{
	{"name", crdt.KindLWW},
	{"title", crdt.KindManual},
	{"tags", crdt.KindORSet},
	{"stock", crdt.KindCounter},
	{"note", crdt.KindLWW},
}

var schema = resolver.Schema{Fields: map[string]crdt.Kind{
	"name": crdt.KindLWW, "title": crdt.KindManual, "tags": crdt.KindORSet, "stock": crdt.KindCounter,
}}

// Values. The objects are written in non-canonical spellings, with
// characters encoding/json escapes, so replicas must agree on canonical
// bytes that survive the wire. They are picked rarely: every replica
// re-canonicalizes an object it receives, which costs more than the rest
// of its merge.
var (
	regValues  = []string{`"a"`, `"b"`, `"c"`, `"d"`, `1`, `true`, `null`}
	setValues  = []string{`"x"`, `"y"`, `"z"`, `"w"`}
	regObjects = []string{`{ "k": [1, 2], "a": "<&>" }`, `[ "a" , {"b":null} ]`}
	setObjects = []string{`{"q": 2, "id": 1}`, `{"id":1,"q":2.50}`}
)

func (s *sim) value(scalars, objects []string) json.RawMessage {
	if s.rng.IntN(25) == 0 {
		return json.RawMessage(objects[s.rng.IntN(len(objects))])
	}
	return json.RawMessage(scalars[s.rng.IntN(len(scalars))])
}

type node struct {
	idx  int
	id   crdt.ReplicaID
	name string
	role replica.Role
	st   *replica.MemStorage
	r    *replica.Replica // nil while crashed
	skew int64            // ms its physical clock is off the simulated time
	far  bool             // its clock runs farSkew ahead
	up   int              // devices: index of the region connected to, or -1
	// colls are the collections a device follows (nil: all).
	colls []string
	// pending are this replica's writes not yet in a Ready handed out: a
	// crash loses them (and those of a Ready handed out but not saved).
	pending []crdt.Change
}

func (n *node) isRegion() bool { return n.role == replica.RoleRegion }

type envelope struct {
	from, to int
	msg      replica.Message
}

type sim struct {
	cfg     Config
	rng     *rand.Rand
	clock   *hlc.ManualClock
	nodes   []*node
	byID    map[crdt.ReplicaID]int
	regions []*node
	devices []*node
	cut     [][]bool // region links cut by a partition
	cutting bool
	queue   []envelope
	drop    float64
	dup     float64
	model   *model
	res     Result
	trace   *ring
	step    int
	quiet   bool // quiescence: no more writes or faults
}

func newSim(cfg Config, seed uint64) *sim {
	s := &sim{
		cfg:   cfg,
		rng:   rand.New(rand.NewPCG(seed, 0x5eed5eed5eed5eed)),
		clock: hlc.NewManualClock(1_700_000_000_000),
		byID:  map[crdt.ReplicaID]int{},
		drop:  cfg.Drop, dup: cfg.Dup,
		model: newModel(),
		trace: newRing(cfg.TraceLen),
	}
	s.res.Seed = seed
	s.trace.s = s
	for i := 0; i < cfg.Regions+cfg.Devices; i++ {
		n := &node{idx: i, id: s.newUUID(), st: replica.NewMemStorage(), up: -1}
		if i < cfg.Regions {
			n.role, n.name = replica.RoleRegion, fmt.Sprintf("r%d", i)
			s.regions = append(s.regions, n)
		} else {
			n.role, n.name = replica.RoleDevice, fmt.Sprintf("d%d", i-cfg.Regions)
			if cfg.Follow && (i-cfg.Regions)%3 == 0 {
				n.colls = []string{coll}
			}
			s.devices = append(s.devices, n)
		}
		s.byID[n.id] = i
		s.nodes = append(s.nodes, n)
	}
	if cfg.FarClock && len(s.devices) > 0 && s.rng.IntN(4) == 0 {
		s.devices[s.rng.IntN(len(s.devices))].far = true
	}
	s.cut = make([][]bool, cfg.Regions)
	for i := range s.cut {
		s.cut[i] = make([]bool, cfg.Regions)
	}
	return s
}

// newUUID draws a version-4 UUID from the seeded source, so ids (and with
// them every tie broken by replica id) are the same on every replay.
func (s *sim) newUUID() uuid.UUID {
	var u uuid.UUID
	a, b := s.rng.Uint64(), s.rng.Uint64()
	for i := 0; i < 8; i++ {
		u[i], u[8+i] = byte(a>>(8*i)), byte(b>>(8*i))
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return u
}

func (s *sim) start(n *node) {
	// A restart may find the physical clock moved, backwards included; the
	// HLC must still never go back (it restores its high-water mark).
	n.skew = s.rng.Int64N(61) - 30
	switch {
	case n.far:
		n.skew = farSkew + s.rng.Int64N(1000)
	case s.rng.IntN(10) == 0:
		// A clock well off, but no two such clocks more than the 1 minute
		// hlc.DefaultMaxSkew apart.
		n.skew = s.rng.Int64N(50_001) - 25_000
	}
	clk := hlc.NewClock(func() int64 { return s.clock.Now() + n.skew }, 0)
	n.r = replica.New(replica.Config{
		ID: n.id, Name: n.name, NS: ns, Role: n.role, Clock: clk, Storage: n.st,
		State: n.st.State, Outbox: n.st.Outbox,
		PageSize: s.cfg.PageSize, RetryTicks: s.cfg.RetryTicks,
		NewID: s.newUUID,
	})
	n.up = -1
}

// play runs the random phase and quiescence.
func (s *sim) play() error {
	for _, n := range s.nodes {
		s.start(n)
	}
	// The schema is put once, on one region, and saved at once; it reaches
	// everyone else by replication, so devices write before they have it.
	r0 := s.regions[0]
	cs, err := r0.r.PutSchema(coll, schema)
	if err != nil {
		return fmt.Errorf("put schema: %w", err)
	}
	r0.pending = append(r0.pending, cs...)
	s.event(event{kind: evSchema, a: 0, n: len(cs)})
	if err := s.flush(r0); err != nil {
		return err
	}
	for _, d := range s.devices {
		if s.rng.IntN(2) == 0 {
			if err := s.connect(d, s.randomRegion()); err != nil {
				return err
			}
		}
	}
	for s.res.Ops < s.cfg.Ops {
		s.step++
		s.clock.Set(s.clock.Now() + s.rng.Int64N(4))
		if err := s.randomEvent(); err != nil {
			return err
		}
		s.res.MaxQueue = max(s.res.MaxQueue, len(s.queue))
	}
	s.res.Steps = s.step
	return s.quiesce()
}

// randomEvent plays one event of the random phase. Per thousand: 300
// writes, 400 batches of 1 to 8 deliveries, 120 saves, 100 ticks, 40 device
// moves, 15 partitions or heals, 25 crashes or restarts.
func (s *sim) randomEvent() error {
	x := s.rng.IntN(1000)
	switch {
	case x < 300:
		return s.write(s.randomUp())
	case x < 700:
		k := 1 + s.rng.IntN(8)
		for i := 0; i < k && len(s.queue) > 0; i++ {
			if err := s.deliver(s.rng.IntN(len(s.queue)), 0.25); err != nil {
				return err
			}
		}
		return nil
	case x < 820:
		n := s.randomUp()
		if n == nil {
			return nil
		}
		return s.flush(n)
	case x < 920:
		n := s.randomUp()
		if n == nil {
			return nil
		}
		n.r.Tick()
		s.event(event{kind: evTick, a: n.idx})
		if s.rng.IntN(2) == 0 {
			return s.flush(n)
		}
		return nil
	case x < 960:
		return s.moveDevice()
	case x < 975:
		if s.cfg.Partitions {
			s.partitionOrHeal()
		}
		return nil
	default:
		if s.cfg.Crashes {
			return s.crashOrRestart()
		}
		return nil
	}
}

func (s *sim) randomUp() *node {
	for tries := 0; tries < 8; tries++ {
		if n := s.nodes[s.rng.IntN(len(s.nodes))]; n.r != nil {
			return n
		}
	}
	return nil
}

func (s *sim) regionsUp() int {
	k := 0
	for _, r := range s.regions {
		if r.r != nil {
			k++
		}
	}
	return k
}

func (s *sim) randomRegion() *node {
	var up []*node
	for _, r := range s.regions {
		if r.r != nil {
			up = append(up, r)
		}
	}
	if len(up) == 0 {
		return nil
	}
	return up[s.rng.IntN(len(up))]
}

// write makes one local write of 1 to 3 ops. An op that does not fit the
// field's kind as this replica knows the schema must be refused, with
// nothing of the write applied; every other write must succeed.
func (s *sim) write(n *node) error {
	if n == nil {
		return nil
	}
	k := 1
	if s.rng.IntN(10) >= 7 {
		k = 2 + s.rng.IntN(2)
	}
	sc, err := n.r.Schema(coll)
	if err != nil {
		return fmt.Errorf("%s: schema: %w", n.name, err)
	}
	ops := make([]resolver.Op, k)
	fits := true
	for i := range ops {
		ops[i] = s.randomOp()
		osc, err := n.r.Schema(ops[i].Coll) // coll2 has none: all lww
		if err != nil {
			return fmt.Errorf("%s: schema: %w", n.name, err)
		}
		if ops[i].Op != crdt.OpDelete && !opFits(ops[i].Op, osc.KindOf(ops[i].Field)) {
			fits = false
		}
	}
	s.res.Ops += k
	if len(sc.Fields) == 0 {
		s.res.Schemaless += k
	}
	cs, err := n.r.Write(ops)
	s.event(event{kind: evWrite, a: n.idx, ops: ops, err: err, cs: cs})
	switch {
	case err != nil && fits:
		return fmt.Errorf("%s: write refused: %w", n.name, err)
	case err != nil && !errors.Is(err, crdt.ErrWrongKind):
		return fmt.Errorf("%s: write refused for the wrong reason: %w", n.name, err)
	case err == nil && !fits:
		return fmt.Errorf("%s: write of an op that does not fit its field was accepted", n.name)
	case err != nil:
		s.res.Refused += k
		return nil
	}
	if len(cs) != k {
		return fmt.Errorf("%s: %d ops made %d changes", n.name, k, len(cs))
	}
	n.pending = append(n.pending, cs...)
	if s.rng.IntN(2) == 0 {
		return s.flush(n)
	}
	return nil
}

func opFits(op crdt.Op, k crdt.Kind) bool {
	switch op {
	case crdt.OpSet, crdt.OpResolve:
		return k == crdt.KindLWW || k == crdt.KindManual
	case crdt.OpAdd, crdt.OpRemove:
		return k == crdt.KindORSet
	case crdt.OpIncr:
		return k == crdt.KindCounter
	}
	return false
}

func (s *sim) randomOp() resolver.Op {
	doc := fmt.Sprintf("d%d", s.rng.IntN(s.cfg.Docs))
	c := coll
	if s.cfg.Follow && s.rng.IntN(3) == 0 {
		c = coll2
	}
	if s.rng.IntN(100) < 6 {
		return resolver.Op{Coll: c, Doc: doc, Op: crdt.OpDelete}
	}
	f := fields[s.rng.IntN(len(fields))]
	kind := f.kind
	if s.rng.IntN(20) == 0 {
		// Now and then an op of another kind: refused where the schema is
		// known, and a cross-kind write to merge where it is not.
		kind = crdt.Kind(1 + s.rng.IntN(4))
	}
	op := resolver.Op{Coll: c, Doc: doc, Field: f.name}
	switch kind {
	case crdt.KindLWW, crdt.KindManual:
		op.Op = crdt.OpSet
		if s.rng.IntN(4) == 0 {
			op.Op = crdt.OpResolve
		}
		op.Value = s.value(regValues, regObjects)
	case crdt.KindORSet:
		op.Op = crdt.OpAdd
		if s.rng.IntN(5) < 2 {
			op.Op = crdt.OpRemove
		}
		op.Value = s.value(setValues, setObjects)
	case crdt.KindCounter:
		op.Op = crdt.OpIncr
		op.Value = json.RawMessage(fmt.Sprint(s.rng.IntN(9) - 3))
	}
	return op
}

// flush is the adapter loop: persist the Ready, then send its messages,
// then Advance. Now and then the replica keeps working while its Ready is
// being persisted (writes, deliveries, ticks between Ready and Advance), as
// a loop that persists asynchronously would have it do.
func (s *sim) flush(n *node) error {
	for n.r != nil && n.r.HasReady() {
		rd := n.r.Ready()
		inReady := n.pending
		n.pending = nil
		if s.rng.IntN(5) == 0 {
			if err := s.meanwhile(n); err != nil {
				return err
			}
		}
		n.st.Save(&rd)
		if err := s.madeDurable(n, inReady, &rd); err != nil {
			return err
		}
		s.event(event{kind: evSave, a: n.idx, n: len(rd.Log), m: len(rd.Messages)})
		for _, m := range rd.Messages {
			if err := s.send(n, m); err != nil {
				return err
			}
		}
		if rd.Fanout != nil {
			if !n.isRegion() {
				return fmt.Errorf("%s: a device produced a fan-out batch", n.name)
			}
			if err := s.checkDurable(n, *rd.Fanout); err != nil {
				return err
			}
			for _, d := range s.devices {
				if d.up == n.idx {
					m := *rd.Fanout
					m.To = d.id
					if d.colls != nil {
						m.Changes = slices.DeleteFunc(slices.Clone(m.Changes), func(c crdt.Change) bool { return !replica.Follows(d.colls, c.Coll) })
					}
					s.enqueue(n.idx, d.idx, m)
				}
			}
		}
		n.r.Advance()
	}
	return nil
}

// meanwhile gives a replica whose Ready is out a few more inputs.
func (s *sim) meanwhile(n *node) error {
	s.event(event{kind: evMeanwhile, a: n.idx})
	for k := 1 + s.rng.IntN(3); k > 0; k-- {
		switch s.rng.IntN(3) {
		case 0:
			if s.quiet {
				continue // no new writes once quiescence began
			}
			if err := s.write(n); err != nil {
				return err
			}
		case 1:
			n.r.Tick()
			s.event(event{kind: evTick, a: n.idx})
		default:
			for i := range s.queue {
				if s.queue[i].to == n.idx {
					if err := s.deliver(i, 0); err != nil {
						return err
					}
					break
				}
			}
		}
	}
	return nil
}

// madeDurable moves the writes that were pending when Ready was called,
// all of which must be in the Ready just saved, into the reference model.
func (s *sim) madeDurable(n *node, writes []crdt.Change, rd *replica.Ready) error {
	if len(writes) == 0 {
		return nil
	}
	inLog := make(map[crdt.Dot]uuid.UUID, len(rd.Log))
	for i := range rd.Log {
		inLog[rd.Log[i].Dot()] = rd.Log[i].ID
	}
	for i := range writes {
		c := &writes[i]
		if id, ok := inLog[c.Dot()]; !ok || id != c.ID {
			return fmt.Errorf("%s: write %s (dot %s/%d) missing from the Ready saved after it", n.name, c.ID, s.nameOf(c.Origin), c.Seq)
		}
		if err := s.model.add(c); err != nil {
			return fmt.Errorf("%s: %w", n.name, err)
		}
	}
	s.res.Changes = len(s.model.order)
	return nil
}

// checkDurable enforces the rule at every adapter: a message may carry only
// changes their origin has made durable, and that its sender has saved.
func (s *sim) checkDurable(n *node, m replica.Message) error {
	for i := range m.Changes {
		c := &m.Changes[i]
		if !n.st.Dots.Has(c.Dot()) {
			return fmt.Errorf("%s sends %s carrying change %s/%d it has not saved", n.name, m.Type, s.nameOf(c.Origin), c.Seq)
		}
		if !s.model.hasID(c) {
			return fmt.Errorf("%s sends %s carrying change %s/%d (id %s) its origin has not made durable", n.name, m.Type, s.nameOf(c.Origin), c.Seq, c.ID)
		}
	}
	for _, d := range m.Dots {
		if !n.st.Dots.Has(d) {
			return fmt.Errorf("%s acknowledges %s/%d before saving it", n.name, s.nameOf(d.Replica), d.Seq)
		}
	}
	return nil
}

func (s *sim) send(n *node, m replica.Message) error {
	if m.From != n.id || m.NS != ns {
		return fmt.Errorf("%s sends %s from %s in namespace %q", n.name, m.Type, s.nameOf(m.From), m.NS)
	}
	if err := s.checkDurable(n, m); err != nil {
		return err
	}
	if m.To == uuid.Nil {
		if !n.isRegion() {
			return fmt.Errorf("%s: a device broadcast %s", n.name, m.Type)
		}
		for _, r := range s.regions {
			if r != n {
				s.enqueue(n.idx, r.idx, m)
			}
		}
		if m.Type == replica.MsgHeartbeat {
			for _, d := range s.devices {
				if d.up == n.idx {
					s.enqueue(n.idx, d.idx, m)
				}
			}
		}
		return nil
	}
	to, ok := s.byID[m.To]
	if !ok || to == n.idx {
		return fmt.Errorf("%s sends %s to unknown replica %s", n.name, m.Type, m.To)
	}
	if !n.isRegion() && !s.nodes[to].isRegion() {
		return fmt.Errorf("%s sends %s to device %s", n.name, m.Type, s.nodes[to].name)
	}
	s.enqueue(n.idx, to, m)
	return nil
}

func (s *sim) enqueue(from, to int, m replica.Message) {
	s.res.Sent++
	if s.drop > 0 && s.rng.Float64() < s.drop {
		s.res.Dropped++
		s.event(event{kind: evDrop, a: from, b: to, msg: m})
		return
	}
	s.queue = append(s.queue, envelope{from, to, m})
	if s.dup > 0 && s.rng.Float64() < s.dup {
		s.res.Duplicated++
		s.queue = append(s.queue, envelope{from, to, m})
	}
}

// deliver takes message i off the queue (picking at random reorders and
// delays) and steps its receiver, unless the link is gone by now.
func (s *sim) deliver(i int, flushChance float64) error {
	e := s.queue[i]
	if i == 0 {
		// Keep the rest in order: quiescence delivers first in, first out.
		s.queue[0] = envelope{}
		s.queue = s.queue[1:]
	} else {
		last := len(s.queue) - 1
		s.queue[i] = s.queue[last]
		s.queue[last] = envelope{}
		s.queue = s.queue[:last]
	}

	from, to := s.nodes[e.from], s.nodes[e.to]
	why := ""
	switch {
	case to.r == nil:
		why = "receiver down"
	case from.isRegion() && to.isRegion() && s.cut[e.from][e.to]:
		why = "partitioned"
	case from.isRegion() && !to.isRegion() && to.up != e.from:
		why = "device not connected"
	case !from.isRegion() && (from.up != e.to || from.r == nil):
		why = "device connection gone"
	}
	if why != "" {
		s.event(event{kind: evLost, a: e.from, b: e.to, msg: e.msg, text: why})
		return nil
	}
	m := e.msg
	if s.cfg.Wire > 0 && s.rng.Float64() < s.cfg.Wire {
		b, err := json.Marshal(m)
		if err != nil {
			return fmt.Errorf("encode %s from %s: %w", m.Type, from.name, err)
		}
		m = replica.Message{}
		if err := json.Unmarshal(b, &m); err != nil {
			return fmt.Errorf("decode %s from %s: %w", e.msg.Type, from.name, err)
		}
	}
	s.res.Delivered++
	s.res.Carried += len(m.Changes)
	err := to.r.Step(m)
	s.event(event{kind: evDeliver, a: e.from, b: e.to, msg: e.msg, err: err})
	switch {
	case err != nil && errors.Is(err, hlc.ErrClockSkew) && s.tooFarAhead(to, m):
		s.res.SkewRefusals++
	case err != nil:
		// Nothing else is ever refused: every sender is honest.
		return fmt.Errorf("%s refused %s from %s: %w", to.name, m.Type, from.name, err)
	}
	if s.rng.Float64() < flushChance {
		return s.flush(to)
	}
	return nil
}

// farSkew is how far ahead the far clock runs, in milliseconds.
const farSkew = 70_000

// tooFarAhead reports whether m carries a stamp n must refuse.
func (s *sim) tooFarAhead(n *node, m replica.Message) bool {
	limit := s.clock.Now() + n.skew + hlc.DefaultMaxSkew.Milliseconds()
	for i := range m.Changes {
		if m.Changes[i].HLC.WallMillis() > limit {
			return true
		}
	}
	return false
}

func (s *sim) connect(d *node, r *node) error {
	if r == nil || d.r == nil {
		return nil
	}
	d.up = r.idx
	d.r.Connect(r.id, d.colls)
	s.event(event{kind: evConnect, a: d.idx, b: r.idx, text: strings.Join(d.colls, ",")})
	if s.rng.IntN(2) == 0 {
		return s.flush(d)
	}
	return nil
}

func (s *sim) disconnect(d *node) {
	if d.up < 0 {
		return
	}
	s.event(event{kind: evDisconnect, a: d.idx, b: d.up})
	d.up = -1
	if d.r != nil {
		d.r.Disconnect()
	}
}

// moveDevice attaches a detached device, or detaches or fails over an
// attached one.
func (s *sim) moveDevice() error {
	if len(s.devices) == 0 {
		return nil
	}
	d := s.devices[s.rng.IntN(len(s.devices))]
	if d.r == nil {
		return nil
	}
	if s.cfg.Follow && d.colls != nil && s.rng.IntN(8) == 0 {
		return s.widen(d)
	}
	if d.up < 0 {
		return s.connect(d, s.randomRegion())
	}
	if s.rng.IntN(3) == 0 {
		s.disconnect(d)
		return nil
	}
	s.res.Failovers++
	s.disconnect(d)
	return s.connect(d, s.randomRegion())
}

// widen makes a device that follows one collection follow all, as
// clientsdk.Open does when Options.Collections widens: its vector goes
// back to empty with its data kept, and a replica is made anew from the
// store.
func (s *sim) widen(d *node) error {
	if err := s.flush(d); err != nil {
		return err
	}
	s.disconnect(d)
	// The old connection's queue dies with it: what is in flight to the
	// device is lost (live batches filtered for the old collections among
	// it). What it sent may still arrive, and the region's answer to such
	// a request then reaches the new connection, as the gateway hands a
	// device's messages to its newest session: a page filtered for the old
	// collections must not move the reset vector past what it left out.
	s.queue = slices.DeleteFunc(s.queue, func(e envelope) bool { return e.to == d.idx })
	d.colls = nil
	d.st.State.Vector = crdt.Vector{}
	s.start(d)
	s.res.Widened++
	s.event(event{kind: evWiden, a: d.idx})
	return s.connect(d, s.randomRegion())
}

func (s *sim) partitionOrHeal() {
	if len(s.regions) < 2 {
		return
	}
	if s.cutting {
		for i := range s.cut {
			clear(s.cut[i])
		}
		s.cutting = false
		s.event(event{kind: evHeal})
		return
	}
	// Split the regions in two random non-empty sides.
	side := make([]bool, len(s.regions))
	for {
		n := 0
		for i := range side {
			side[i] = s.rng.IntN(2) == 0
			if side[i] {
				n++
			}
		}
		if n > 0 && n < len(side) {
			break
		}
	}
	var a []string
	for i := range side {
		if side[i] {
			a = append(a, s.regions[i].name)
		}
		for j := range side {
			s.cut[i][j] = side[i] != side[j]
		}
	}
	s.cutting = true
	s.res.Partitions++
	s.event(event{kind: evPartition, text: strings.Join(a, ",")})
}

func (s *sim) crashOrRestart() error {
	var down []*node
	for _, n := range s.nodes {
		if n.r == nil {
			down = append(down, n)
		}
	}
	if len(down) > 0 && s.rng.IntN(2) == 0 {
		n := down[s.rng.IntN(len(down))]
		s.start(n)
		s.event(event{kind: evRestart, a: n.idx})
		return nil
	}
	n := s.randomUp()
	if n == nil {
		return nil
	}
	if n.isRegion() && s.regionsUp() == 1 {
		return nil // keep one region up, so devices always have somewhere to go
	}
	return s.crash(n)
}

// crash drops the Replica and keeps its MemStorage: whatever was not saved
// is lost. When the replica has a Ready to hand out, the crash may strike
// between Ready and Save (its writes are lost) or between Save and sending
// (they are durable, but nobody hears of them until retries and
// heartbeats repair it).
func (s *sim) crash(n *node) error {
	mode := crashIdle
	if n.r.HasReady() {
		mode = crashMode(s.rng.IntN(3))
	}
	switch mode {
	case crashBeforeSave:
		_ = n.r.Ready()
		s.res.MidReadyCrashes++
	case crashBeforeSend:
		rd := n.r.Ready()
		n.st.Save(&rd)
		if err := s.madeDurable(n, n.pending, &rd); err != nil {
			return err
		}
		n.pending = nil
		s.res.UnsentCrashes++
	}
	s.res.Crashes++
	s.res.Lost += len(n.pending)
	s.event(event{kind: evCrash, a: n.idx, n: len(n.pending), m: int(mode)})
	n.pending = nil
	n.r = nil
	if n.isRegion() {
		for _, d := range s.devices {
			if d.up == n.idx {
				s.disconnect(d)
			}
		}
	} else {
		n.up = -1
	}
	return nil
}

type crashMode int

const (
	crashIdle       crashMode = iota // nothing unsaved is handed out
	crashBeforeSave                  // between Ready and Save
	crashBeforeSend                  // between Save and sending the messages
)

// quiesce heals everything and runs rounds of ticks and deliveries until
// every replica holds the same vector, no device holds unacknowledged
// writes and nothing is left to save or deliver.
func (s *sim) quiesce() error {
	s.drop, s.dup = 0, 0
	s.quiet = true
	for i := range s.cut {
		clear(s.cut[i])
	}
	s.cutting = false
	s.event(event{kind: evQuiesce})
	for _, n := range s.nodes {
		if n.far {
			// Let real time catch up with the far clock, so that what it
			// stamped is acceptable everywhere (it writes nothing new).
			s.clock.Set(s.clock.Now() + 2*farSkew)
			break
		}
	}
	for _, n := range s.nodes {
		if n.r == nil {
			s.start(n)
			s.event(event{kind: evRestart, a: n.idx})
		}
	}
	// Regions first: devices are detached until the regions agree, so
	// that catching up, each device reads from a region that no longer
	// moves (a region still catching up fans out batches a lagging device
	// can only drop as gaps).
	for _, d := range s.devices {
		s.disconnect(d)
	}
	rounds, err := s.rounds(s.cfg.MaxRounds, s.regions)
	if err != nil {
		return fmt.Errorf("regions: %w", err)
	}
	s.res.RegionRounds = rounds
	for _, d := range s.devices {
		if err := s.connect(d, s.randomRegion()); err != nil {
			return err
		}
	}
	more, err := s.rounds(s.cfg.MaxRounds-rounds, s.nodes)
	if err != nil {
		return err
	}
	s.res.Rounds = rounds + more
	return nil
}

// rounds runs rounds of ticks and deliveries until the replicas in set
// settle, and says how many it took.
func (s *sim) rounds(maxRounds int, set []*node) (int, error) {
	for round := 1; round <= maxRounds; round++ {
		s.step++ // in the trace, quiescence rounds number on from the last step
		s.clock.Set(s.clock.Now() + 10)
		for _, n := range s.nodes {
			n.r.Tick()
			if err := s.flush(n); err != nil {
				return 0, err
			}
		}
		// Deliver until nothing is left to deliver or save. A receiver
		// saves now and then rather than after every message, as a loop
		// that batches its commits does.
		for steps := 0; ; steps++ {
			if steps > 1_000_000 {
				return 0, fmt.Errorf("round %d: messages keep coming", round)
			}
			if len(s.queue) == 0 {
				for _, n := range s.nodes {
					if err := s.flush(n); err != nil {
						return 0, err
					}
				}
				if len(s.queue) == 0 {
					break
				}
			}
			if err := s.deliver(s.rng.IntN(len(s.queue)), 0.1); err != nil {
				return 0, err
			}
		}
		if s.settled(set) == "" {
			s.event(event{kind: evSettled, n: round})
			return round, nil
		}
	}
	return 0, fmt.Errorf("not settled after %d rounds: %s", maxRounds, s.settled(set))
}

// settled says why the replicas in set are not yet quiet ("" if they are).
func (s *sim) settled(set []*node) string {
	want := s.regions[0].r.DurableVector()
	for _, n := range set {
		if n.r.HasReady() {
			return n.name + " has a Ready"
		}
		if v := n.r.DurableVector(); !v.CoversAll(want) || !want.CoversAll(v) {
			return fmt.Sprintf("%s holds %s, %s holds %s", n.name, s.fmtVector(v), s.regions[0].name, s.fmtVector(want))
		}
		if st := n.r.Status(); st.Outbox > 0 || len(n.st.Outbox) > 0 {
			return fmt.Sprintf("%s has %d unacknowledged writes", n.name, len(n.st.Outbox))
		}
	}
	return ""
}

func (s *sim) nameOf(id crdt.ReplicaID) string {
	if i, ok := s.byID[id]; ok {
		return s.nodes[i].name
	}
	if id == uuid.Nil {
		return "*"
	}
	return id.String()[:8]
}

func (s *sim) fmtVector(v crdt.Vector) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, r := range v.Regions() {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s:%d", s.nameOf(r), v[r])
	}
	b.WriteByte('}')
	return b.String()
}
