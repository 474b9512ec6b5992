package replica_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/replica"
	"github.com/syncd/syncd/resolver"
)

// The interaction harness: real replica.Replica instances over
// replica.MemStorage, one manual physical clock, and a network that is a
// queue the scenario moves by hand. Every command returns the text a reader
// of the scenario should see; interaction_test.go compares it with the file.

const (
	harnessNS = "app"
	// t0 is the physical time every scenario starts at; stamps are shown
	// relative to it ("5ms", "10m0.003s+1") so the files stay readable.
	t0 = 1_700_000_000_000
	// maxHops bounds how many delivery hops one stabilize may take, so a
	// replica that never goes quiet fails the scenario instead of hanging.
	maxHops = 2000
)

type hnode struct {
	name   string
	id     uuid.UUID
	role   replica.Role
	page   int                 // sync page size (0: the default)
	st     *replica.MemStorage // survives a crash
	r      *replica.Replica    // nil while down
	offset time.Duration       // how far this node's physical clock runs ahead
	clock  *hlc.Clock          // the running process's clock; a restart makes a new one
}

// envelope is one message on the wire to one receiver. A publish is one
// envelope per receiver, all with the same seq, so output can group them.
type envelope struct {
	seq    int
	from   string
	to     string
	fanout bool
	m      replica.Message
}

type env struct {
	clock  *hlc.ManualClock
	nodes  []*hnode
	byName map[string]*hnode
	names  map[uuid.UUID]string // node ids and change ids -> readable names
	order  map[uuid.UUID]int    // node id -> creation order, for printing vectors
	nextID int
	net    []envelope
	msgSeq int
	// groups: a partition; nodes in different groups do not hear each
	// other. Nodes not named in the partition are unaffected.
	groups map[string]int
	link   map[string]string // device -> the region it is connected to
	retry  int
}

func newEnv() *env {
	return &env{
		clock: hlc.NewManualClock(t0), byName: map[string]*hnode{}, names: map[uuid.UUID]string{},
		order: map[uuid.UUID]int{}, groups: map[string]int{}, link: map[string]string{}, retry: 10,
	}
}

func (e *env) newID() uuid.UUID {
	e.nextID++
	var id uuid.UUID
	id[0] = 0xcc
	for i, n := 15, e.nextID; i > 8 && n > 0; i, n = i-1, n>>8 {
		id[i] = byte(n)
	}
	e.names[id] = "c" + strconv.Itoa(e.nextID)
	return id
}

func (e *env) addNode(name string, role replica.Role, page int) (*hnode, error) {
	if _, ok := e.byName[name]; ok {
		return nil, fmt.Errorf("%s already exists", name)
	}
	if err := crdt.ValidateName(name); err != nil {
		return nil, err
	}
	var id uuid.UUID
	// Regions get small ids and devices larger ones: ties between equal
	// stamps break by id, so the order of creation is the tie order.
	if role == replica.RoleRegion {
		id[0] = byte(1 + len(e.nodes))
	} else {
		id[0] = byte(0x10 + len(e.nodes))
	}
	n := &hnode{name: name, id: id, role: role, page: page, st: replica.NewMemStorage()}
	e.names[id], e.order[id] = name, len(e.nodes)
	e.nodes = append(e.nodes, n)
	e.byName[name] = n
	e.start(n)
	return n, nil
}

// start makes the node's replica from whatever its storage holds, as a
// process does on boot: a fresh clock, restored from the saved mark.
func (e *env) start(n *hnode) {
	n.clock = hlc.NewClock(func() int64 { return e.clock.Now() + n.offset.Milliseconds() }, 0)
	st := n.st.State
	st.Vector = st.Vector.Clone()
	n.r = replica.New(replica.Config{
		ID: n.id, Name: n.name, NS: harnessNS, Role: n.role, Clock: n.clock, Storage: n.st,
		State: st, Outbox: slices.Clone(n.st.Outbox), RetryTicks: e.retry, PageSize: n.page, NewID: e.newID,
	})
}

func (e *env) node(name string) (*hnode, error) {
	n, ok := e.byName[name]
	if !ok {
		return nil, fmt.Errorf("no node %q", name)
	}
	return n, nil
}

func (e *env) live(name string) (*hnode, error) {
	n, err := e.node(name)
	if err != nil {
		return nil, err
	}
	if n.r == nil {
		return nil, fmt.Errorf("%s is down", name)
	}
	return n, nil
}

// --- commands -------------------------------------------------------------

type kv struct{ k, v string }

type command struct {
	name string
	pos  []string
	kvs  []kv
}

func (c *command) get(k string) (string, bool) {
	for _, p := range c.kvs {
		if p.k == k {
			return p.v, true
		}
	}
	return "", false
}

func (c *command) flag(w string) bool { return slices.Contains(c.pos, w) }

func parseCommand(line string) (command, error) {
	toks, err := tokenize(line)
	if err != nil {
		return command{}, err
	}
	if len(toks) == 0 {
		return command{}, errors.New("empty command")
	}
	c := command{name: toks[0]}
	for _, t := range toks[1:] {
		if i := strings.IndexByte(t, '='); i > 0 && !strings.ContainsRune(t[:i], '"') {
			c.kvs = append(c.kvs, kv{t[:i], t[i+1:]})
		} else {
			c.pos = append(c.pos, t)
		}
	}
	return c, nil
}

// tokenize splits on blanks outside double quotes and keeps the quotes, so
// title="Senior Engineer" reaches the value parser as JSON.
func tokenize(s string) ([]string, error) {
	var toks []string
	var cur strings.Builder
	inQ, esc, has := false, false, false
	for _, r := range s {
		switch {
		case esc:
			cur.WriteRune(r)
			esc = false
		case inQ && r == '\\':
			cur.WriteRune(r)
			esc = true
		case r == '"':
			inQ = !inQ
			cur.WriteRune(r)
			has = true
		case !inQ && (r == ' ' || r == '\t'):
			if has {
				toks = append(toks, cur.String())
				cur.Reset()
				has = false
			}
		default:
			cur.WriteRune(r)
			has = true
		}
	}
	if inQ {
		return nil, errors.New("unterminated quote")
	}
	if has {
		toks = append(toks, cur.String())
	}
	return toks, nil
}

// value reads a command value: JSON if it is JSON, else a bare string.
func value(s string) json.RawMessage {
	if json.Valid([]byte(s)) {
		return json.RawMessage(s)
	}
	b, _ := json.Marshal(s)
	return b
}

func (e *env) run(line string) (string, error) {
	c, err := parseCommand(line)
	if err != nil {
		return "", err
	}
	var w strings.Builder
	switch c.name {
	case "add-regions":
		err = e.addRegions(c)
	case "add-device":
		err = e.addDevice(&w, c)
	case "schema":
		err = e.schema(&w, c)
	case "write", "add", "remove", "incr", "resolve", "delete":
		err = e.write(&w, c)
	case "forge-push":
		err = e.forgePush(&w, c)
	case "clock-advance":
		err = e.clockAdvance(&w, c)
	case "clock-skew":
		err = e.clockSkew(&w, c)
	case "tick":
		err = e.tick(c)
	case "ready":
		err = e.readyCmd(&w, c)
	case "deliver":
		err = e.deliverCmd(&w, c)
	case "stabilize":
		err = e.stabilize(&w)
	case "partition":
		err = e.partition(c)
	case "heal":
		clear(e.groups)
	case "crash":
		err = e.crash(&w, c)
	case "restart":
		err = e.restart(&w, c)
	case "reset-vector":
		err = e.resetVector(&w, c)
	case "connect":
		err = e.connect(&w, c)
	case "disconnect":
		err = e.disconnect(&w, c)
	case "state":
		err = e.state(&w, c)
	case "vector":
		err = e.vectorCmd(&w, c)
	case "status":
		err = e.status(&w, c)
	default:
		return "", fmt.Errorf("unknown command %q", c.name)
	}
	if err != nil {
		fmt.Fprintf(&w, "error: %s\n", e.readable(err.Error()))
	}
	return w.String(), nil
}

// addRegions: add-regions NAME... [page=N] (N: the sync page size).
func (e *env) addRegions(c command) error {
	page := 0
	if v, ok := c.get("page"); ok {
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("page: %w", err)
		}
		page = n
	}
	for _, name := range c.pos {
		if _, err := e.addNode(name, replica.RoleRegion, page); err != nil {
			return err
		}
	}
	return nil
}

func (e *env) addDevice(w *strings.Builder, c command) error {
	if len(c.pos) != 1 {
		return errors.New("usage: add-device NAME [region=R [colls=C,...]]")
	}
	n, err := e.addNode(c.pos[0], replica.RoleDevice, 0)
	if err != nil {
		return err
	}
	if reg, ok := c.get("region"); ok {
		return e.connectTo(w, n, reg, c)
	}
	return nil
}

func (e *env) schema(w *strings.Builder, c command) error {
	at := ""
	if v, ok := c.get("at"); ok {
		at = v
	} else if len(e.nodes) > 0 {
		at = e.nodes[0].name
	}
	n, err := e.live(at)
	if err != nil {
		return err
	}
	coll, _ := c.get("coll")
	s := resolver.Schema{Fields: map[string]crdt.Kind{}}
	for _, p := range c.kvs {
		if p.k == "coll" || p.k == "at" {
			continue
		}
		k, err := crdt.ParseKind(p.v)
		if err != nil {
			return err
		}
		s.Fields[p.k] = k
	}
	cs, err := n.r.PutSchema(coll, s)
	if err != nil {
		return err
	}
	for _, ch := range cs {
		fmt.Fprintf(w, "%s: %s\n", n.name, e.fmtChange(&ch))
	}
	return nil
}

var opOf = map[string]crdt.Op{
	"write": crdt.OpSet, "add": crdt.OpAdd, "remove": crdt.OpRemove, "incr": crdt.OpIncr,
	"resolve": crdt.OpResolve, "delete": crdt.OpDelete,
}

func splitDoc(s string) (coll, doc string, err error) {
	coll, doc, ok := strings.Cut(s, "/")
	if !ok {
		return "", "", fmt.Errorf("want COLL/DOC, got %q", s)
	}
	return coll, doc, nil
}

// write runs one Write with one op per field=value, all or nothing.
func (e *env) write(w *strings.Builder, c command) error {
	if len(c.pos) != 2 {
		return fmt.Errorf("usage: %s NODE COLL/DOC [field=value ...]", c.name)
	}
	n, err := e.live(c.pos[0])
	if err != nil {
		return err
	}
	coll, doc, err := splitDoc(c.pos[1])
	if err != nil {
		return err
	}
	op := opOf[c.name]
	var ops []resolver.Op
	if op == crdt.OpDelete {
		ops = append(ops, resolver.Op{Coll: coll, Doc: doc, Op: op})
	}
	for _, p := range c.kvs {
		ops = append(ops, resolver.Op{Coll: coll, Doc: doc, Field: p.k, Op: op, Value: value(p.v)})
	}
	cs, err := n.r.Write(ops)
	if err != nil {
		return err
	}
	for _, ch := range cs {
		fmt.Fprintln(w, e.fmtChange(&ch))
	}
	return nil
}

// forgePush puts on the wire a push from one device carrying a change under
// another replica's id, as a hostile or buggy client would.
func (e *env) forgePush(w *strings.Builder, c command) error {
	if len(c.pos) != 2 || len(c.kvs) < 3 {
		return errors.New("usage: forge-push DEVICE COLL/DOC to=REGION origin=NAME field=value")
	}
	from, err := e.live(c.pos[0])
	if err != nil {
		return err
	}
	to, _ := c.get("to")
	origin, _ := c.get("origin")
	oid, ok := uuid.UUID{}, false
	for id, name := range e.names {
		if name == origin {
			oid, ok = id, true
		}
	}
	if !ok {
		oid = uuid.UUID{0xee, byte(len(e.names))}
		e.names[oid] = origin
	}
	coll, doc, err := splitDoc(c.pos[1])
	if err != nil {
		return err
	}
	var field kv
	for _, p := range c.kvs {
		if p.k != "to" && p.k != "origin" {
			field = p
		}
	}
	ch := crdt.Change{
		ID: e.newID(), Origin: oid, Seq: 1, HLC: hlc.Make(e.clock.Now()+from.offset.Milliseconds(), 0),
		NS: harnessNS, Coll: coll, Doc: doc, Field: field.k, Kind: crdt.KindLWW, Op: crdt.OpSet, Value: value(field.v),
	}
	m := replica.Message{Type: replica.MsgPush, NS: harnessNS, From: from.id, To: e.byName[to].id, Changes: []crdt.Change{ch}}
	e.msgSeq++
	e.net = append(e.net, envelope{seq: e.msgSeq, from: from.name, to: to, m: m})
	fmt.Fprintf(w, "on the wire: %s\n", e.fmtChange(&ch))
	return nil
}

func (e *env) clockAdvance(w *strings.Builder, c command) error {
	if len(c.pos) != 1 {
		return errors.New("usage: clock-advance DURATION")
	}
	d, err := time.ParseDuration(c.pos[0])
	if err != nil {
		return err
	}
	e.clock.Advance(d)
	fmt.Fprintf(w, "now %s\n", time.Duration(e.clock.Now()-t0)*time.Millisecond)
	return nil
}

func (e *env) clockSkew(w *strings.Builder, c command) error {
	if len(c.pos) != 2 {
		return errors.New("usage: clock-skew NODE DURATION")
	}
	n, err := e.node(c.pos[0])
	if err != nil {
		return err
	}
	d, err := time.ParseDuration(c.pos[1])
	if err != nil {
		return err
	}
	n.offset = d
	fmt.Fprintf(w, "%s's physical clock is %v off\n", n.name, d)
	return nil
}

// tick [NODE...] [N]: tick the named live nodes (all if none) N times.
func (e *env) tick(c command) error {
	times := 1
	var ns []*hnode
	for _, p := range c.pos {
		if k, err := strconv.Atoi(p); err == nil {
			times = k
			continue
		}
		n, err := e.live(p)
		if err != nil {
			return err
		}
		ns = append(ns, n)
	}
	if len(ns) == 0 {
		ns = e.liveNodes()
	}
	for range times {
		for _, n := range ns {
			n.r.Tick()
		}
	}
	return nil
}

func (e *env) liveNodes() []*hnode {
	var out []*hnode
	for _, n := range e.nodes {
		if n.r != nil {
			out = append(out, n)
		}
	}
	return out
}

// readyCmd persists and sends each named node's Ready (every node's if
// none is named), saying what became durable.
func (e *env) readyCmd(w *strings.Builder, c command) error {
	ns := e.liveNodes()
	if len(c.pos) > 0 {
		ns = nil
		for _, p := range c.pos {
			n, err := e.live(p)
			if err != nil {
				return err
			}
			ns = append(ns, n)
		}
	}
	for _, n := range ns {
		for n.r.HasReady() {
			rd := n.r.Ready()
			n.st.Save(&rd)
			n.r.Advance()
			fmt.Fprintf(w, "%s: saved %s\n", n.name, e.fmtReady(&rd))
			e.enqueue(n, &rd)
		}
	}
	return nil
}

// readyAll persists and sends every live node's Ready and reports whether
// any durable state changed.
func (e *env) readyAll() bool {
	changed := false
	for _, n := range e.liveNodes() {
		for n.r.HasReady() {
			rd := n.r.Ready()
			n.st.Save(&rd)
			n.r.Advance()
			changed = changed || persists(&rd)
			e.enqueue(n, &rd)
		}
	}
	return changed
}

func persists(rd *replica.Ready) bool {
	return rd.State != nil || len(rd.Log) > 0 || len(rd.Fields) > 0 || len(rd.Outbox) > 0 || len(rd.OutboxDone) > 0
}

// enqueue puts a saved Ready's messages on the wire as the node loop
// would: a publish reaches every other region (heartbeats also reach the
// region's devices), a message with a receiver reaches it, and the fan-out
// reaches the region's devices.
func (e *env) enqueue(n *hnode, rd *replica.Ready) {
	put := func(m replica.Message, to string, fanout bool) {
		e.net = append(e.net, envelope{seq: e.msgSeq, from: n.name, to: to, fanout: fanout, m: m})
	}
	for _, m := range rd.Messages {
		e.msgSeq++
		if m.To != uuid.Nil {
			put(m, e.nameOf(m.To), false)
			continue
		}
		for _, p := range e.nodes {
			if p != n && p.role == replica.RoleRegion {
				put(m, p.name, false)
			}
		}
		if m.Type == replica.MsgHeartbeat {
			for _, d := range e.devicesOf(n.name) {
				put(m, d, false)
			}
		}
	}
	if rd.Fanout != nil {
		e.msgSeq++
		for _, d := range e.devicesOf(n.name) {
			put(*rd.Fanout, d, true)
		}
	}
}

func (e *env) devicesOf(region string) []string {
	var out []string
	for _, n := range e.nodes {
		if e.link[n.name] == region && n.r != nil {
			out = append(out, n.name)
		}
	}
	return out
}

// deliverCmd: deliver [from=X] [to=Y] [type=T] [drop] [dup]. Everything
// ready is first persisted and sent; then each matching message on the
// wire is delivered once (twice with dup) or dropped. Replies go out on
// the next deliver.
func (e *env) deliverCmd(w *strings.Builder, c command) error {
	from, _ := c.get("from")
	to, _ := c.get("to")
	typ, _ := c.get("type")
	for _, name := range []string{from, to} {
		if name != "" {
			if _, err := e.node(name); err != nil {
				return err
			}
		}
	}
	e.readyAll()
	match := func(v envelope) bool {
		return (from == "" || v.from == from) && (to == "" || v.to == to) && (typ == "" || v.m.Type.String() == typ)
	}
	e.hop(w, match, c.flag("drop"), c.flag("dup"), true)
	return nil
}

// outcome is what happened to one envelope, for grouping output lines.
type outcome struct {
	seq     int
	head    string // "batch nyc→"
	to      string
	tail    string // details and drop reason
	errs    []string
	isHeart bool
}

// hop moves every matching message currently on the wire once and writes
// one line per message (publishes grouped by receiver).
func (e *env) hop(w *strings.Builder, match func(envelope) bool, drop, dup, heartbeats bool) {
	now := e.net
	e.net = nil
	var outs []outcome
	for _, v := range now {
		if !match(v) {
			e.net = append(e.net, v)
			continue
		}
		o := outcome{seq: v.seq, to: v.to, isHeart: v.m.Type == replica.MsgHeartbeat}
		kind := v.m.Type.String()
		if v.fanout {
			kind = "fanout"
		}
		o.head = fmt.Sprintf("%s %s→", kind, v.from)
		o.tail = e.fmtMsg(&v.m)
		switch reason := e.blocked(v); {
		case drop:
			o.tail += " dropped"
		case reason != "":
			o.tail += " dropped (" + reason + ")"
		default:
			times := 1
			if dup {
				times = 2
				o.tail += " (delivered twice)"
			}
			for range times {
				if err := e.byName[v.to].r.Step(v.m); err != nil {
					o.errs = append(o.errs, fmt.Sprintf("  %s: %s", v.to, e.readable(err.Error())))
				}
			}
		}
		outs = append(outs, o)
	}
	for i := 0; i < len(outs); {
		o := outs[i]
		tos := []string{o.to}
		j := i + 1
		for len(o.errs) == 0 && j < len(outs) && outs[j].seq == o.seq && outs[j].tail == o.tail && len(outs[j].errs) == 0 {
			tos = append(tos, outs[j].to)
			j++
		}
		if heartbeats || !o.isHeart || len(o.errs) > 0 {
			fmt.Fprintf(w, "%s%s %s\n", o.head, strings.Join(tos, ","), o.tail)
			for _, l := range o.errs {
				fmt.Fprintln(w, l)
			}
		}
		i = j
	}
}

// blocked says why a message cannot arrive, or "".
func (e *env) blocked(v envelope) string {
	to, ok := e.byName[v.to]
	switch {
	case !ok:
		return "no such node"
	case to.r == nil:
		return v.to + " is down"
	}
	if g1, ok1 := e.groups[v.from]; ok1 {
		if g2, ok2 := e.groups[v.to]; ok2 && g1 != g2 {
			return "partition"
		}
	}
	from := e.byName[v.from]
	if from.role == replica.RoleDevice && e.link[v.from] != v.to {
		return v.from + " not connected to " + v.to
	}
	if to.role == replica.RoleDevice && e.link[v.to] != v.from {
		return v.to + " not connected to " + v.from
	}
	return ""
}

// stabilize persists, delivers and ticks until nothing durable changes for
// longer than a retry period: every pending retry has then had its chance.
// Heartbeats are left out of the output unless they fail.
func (e *env) stabilize(w *strings.Builder) error {
	all := func(envelope) bool { return true }
	hops := 0
	drain := func(w *strings.Builder) (bool, error) {
		changed := false
		for {
			changed = e.readyAll() || changed
			if len(e.net) == 0 {
				return changed, nil
			}
			if hops++; hops > maxHops {
				return changed, fmt.Errorf("not stable after %d hops", maxHops)
			}
			e.hop(w, all, false, false, false)
		}
	}
	if _, err := drain(w); err != nil {
		return err
	}
	for quiet := 0; quiet <= e.retry; {
		for _, n := range e.liveNodes() {
			n.r.Tick()
		}
		var round strings.Builder
		changed, err := drain(&round)
		if round.Len() > 0 {
			fmt.Fprintf(w, "tick\n%s", round.String())
		}
		if err != nil {
			return err
		}
		if changed {
			quiet = 0
		} else {
			quiet++
		}
	}
	return nil
}

func (e *env) partition(c command) error {
	clear(e.groups)
	g := 0
	for _, p := range c.pos {
		if p == "|" {
			g++
			continue
		}
		if _, err := e.node(p); err != nil {
			return err
		}
		e.groups[p] = g
	}
	return nil
}

// crash drops a node's replica and keeps its storage. Whatever it had not
// saved is lost: its pending Ready is taken and thrown away, as a process
// dying between Ready and Save would. With after=save the Ready is saved
// but the process dies before sending it.
func (e *env) crash(w *strings.Builder, c command) error {
	if len(c.pos) != 1 {
		return errors.New("usage: crash NODE [after=save]")
	}
	n, err := e.live(c.pos[0])
	if err != nil {
		return err
	}
	after, _ := c.get("after")
	if n.r.HasReady() {
		rd := n.r.Ready()
		switch after {
		case "save":
			n.st.Save(&rd)
			fmt.Fprintf(w, "%s: saved %s, then crashed before sending\n", n.name, e.fmtReady(&rd))
		case "":
			fmt.Fprintf(w, "%s: lost unsaved %s\n", n.name, e.fmtReady(&rd))
		default:
			return fmt.Errorf("unknown crash point %q", after)
		}
	} else {
		fmt.Fprintf(w, "%s: crashed with nothing unsaved\n", n.name)
	}
	n.r = nil
	kept := e.net[:0]
	lost := 0
	for _, v := range e.net {
		if v.to == n.name {
			lost++
			continue
		}
		kept = append(kept, v)
	}
	e.net = kept
	if lost > 0 {
		fmt.Fprintf(w, "%s: %s to it lost\n", n.name, plural(lost, "message"))
	}
	for _, d := range e.devicesOf(n.name) {
		e.byName[d].r.Disconnect()
		delete(e.link, d)
		fmt.Fprintf(w, "%s: connection to %s closed\n", d, n.name)
	}
	delete(e.link, n.name)
	return nil
}

func (e *env) restart(w *strings.Builder, c command) error {
	if len(c.pos) != 1 {
		return errors.New("usage: restart NODE")
	}
	n, err := e.node(c.pos[0])
	if err != nil {
		return err
	}
	if n.r != nil {
		return fmt.Errorf("%s is running", n.name)
	}
	e.start(n)
	st := n.r.Status()
	fmt.Fprintf(w, "%s: restarted with vector %s, seq %d, hlc %s", n.name, e.fmtVector(st.Vector), st.Seq, fmtHLC(n.st.State.HLC))
	if st.Outbox > 0 {
		fmt.Fprintf(w, ", outbox %d", st.Outbox)
	}
	fmt.Fprintln(w)
	return nil
}

// resetVector: reset-vector DEVICE. The device's stored vector goes back
// to empty, its data and outbox kept, and its replica restarts from the
// store, as clientsdk.Open does when Options.Collections widens
// (sqlitestore.Follow). Messages in flight to it still arrive.
func (e *env) resetVector(w *strings.Builder, c command) error {
	if len(c.pos) != 1 {
		return errors.New("usage: reset-vector DEVICE")
	}
	n, err := e.live(c.pos[0])
	if err != nil {
		return err
	}
	if n.role != replica.RoleDevice {
		return fmt.Errorf("%s is not a device", n.name)
	}
	if n.r.HasReady() {
		return fmt.Errorf("%s has an unsaved Ready", n.name)
	}
	n.st.State.Vector = crdt.Vector{}
	delete(e.link, n.name)
	e.start(n)
	fmt.Fprintf(w, "%s: vector reset, restarted (outbox %d)\n", n.name, n.r.Status().Outbox)
	return nil
}

func (e *env) connect(w *strings.Builder, c command) error {
	if len(c.pos) != 2 {
		return errors.New("usage: connect DEVICE REGION [colls=C,...]")
	}
	n, err := e.live(c.pos[0])
	if err != nil {
		return err
	}
	return e.connectTo(w, n, c.pos[1], c)
}

// connectTo connects device n to region; colls=C,... in c makes it follow
// only those collections.
func (e *env) connectTo(w *strings.Builder, n *hnode, region string, c command) error {
	if n.role != replica.RoleDevice {
		return fmt.Errorf("%s is not a device", n.name)
	}
	reg, err := e.live(region)
	if err != nil {
		return err
	}
	if reg.role != replica.RoleRegion {
		return fmt.Errorf("%s is not a region", region)
	}
	e.link[n.name] = reg.name
	var colls []string
	if v, ok := c.get("colls"); ok {
		colls = strings.Split(v, ",")
	}
	n.r.Connect(reg.id, colls)
	fmt.Fprintf(w, "%s: connected to %s (outbox %d)\n", n.name, reg.name, n.r.Status().Outbox)
	return nil
}

func (e *env) disconnect(w *strings.Builder, c command) error {
	if len(c.pos) != 1 {
		return errors.New("usage: disconnect DEVICE")
	}
	n, err := e.live(c.pos[0])
	if err != nil {
		return err
	}
	delete(e.link, n.name)
	n.r.Disconnect()
	return nil
}

// state [NODE] COLL/DOC: the rendered document; without a node, every
// live node, grouping nodes that show the same thing.
func (e *env) state(w *strings.Builder, c command) error {
	var ns []*hnode
	var doc string
	switch len(c.pos) {
	case 1:
		ns, doc = e.liveNodes(), c.pos[0]
	case 2:
		n, err := e.live(c.pos[0])
		if err != nil {
			return err
		}
		ns, doc = []*hnode{n}, c.pos[1]
	default:
		return errors.New("usage: state [NODE] COLL/DOC")
	}
	coll, id, err := splitDoc(doc)
	if err != nil {
		return err
	}
	var order []string
	who := map[string][]string{}
	for _, n := range ns {
		fs, err := n.r.Doc(crdt.DocKey{NS: harnessNS, Coll: coll, Doc: id})
		if err != nil {
			return err
		}
		s := e.fmtView(fs)
		if _, ok := who[s]; !ok {
			order = append(order, s)
		}
		who[s] = append(who[s], n.name)
	}
	for _, s := range order {
		if len(c.pos) == 1 {
			fmt.Fprintf(w, "%s:\n", strings.Join(who[s], " "))
			s = "  " + strings.ReplaceAll(strings.TrimSuffix(s, "\n"), "\n", "\n  ") + "\n"
		}
		w.WriteString(s)
	}
	return nil
}

func (e *env) fmtView(fs map[string]*crdt.Field) string {
	if len(fs) == 0 {
		return "(no document)\n"
	}
	v := resolver.Render("", fs, e.nameOf)
	var b strings.Builder
	if v.Deleted {
		fmt.Fprintf(&b, "deleted at %s\n", fmtHLC(fs[""].Last.HLC))
	}
	names := make([]string, 0, len(v.Fields))
	for f := range v.Fields {
		names = append(names, f)
	}
	slices.Sort(names)
	for _, f := range names {
		fmt.Fprintf(&b, "%s = %s\n", f, v.Fields[f])
		for _, c := range v.Conflicts[f] {
			fmt.Fprintf(&b, "  conflict %s by %s at %s\n", c.Value, c.Node, fmtHLC(c.HLC))
		}
	}
	if b.Len() == 0 {
		b.WriteString("(no fields)\n")
	}
	return b.String()
}

func (e *env) vectorCmd(w *strings.Builder, c command) error {
	ns := e.liveNodes()
	if len(c.pos) > 0 {
		ns = nil
		for _, p := range c.pos {
			n, err := e.live(p)
			if err != nil {
				return err
			}
			ns = append(ns, n)
		}
	}
	for _, n := range ns {
		d, v := n.r.DurableVector(), n.r.Vector()
		fmt.Fprintf(w, "%s: %s", n.name, e.fmtVector(d))
		if !sameVector(d, v) {
			fmt.Fprintf(w, " (in memory %s)", e.fmtVector(v))
		}
		fmt.Fprintln(w)
	}
	return nil
}

func sameVector(a, b crdt.Vector) bool { return a.CoversAll(b) && b.CoversAll(a) }

func (e *env) status(w *strings.Builder, c command) error {
	if len(c.pos) != 1 {
		return errors.New("usage: status NODE")
	}
	n, err := e.live(c.pos[0])
	if err != nil {
		return err
	}
	s := n.r.Status()
	role := "region"
	if n.role == replica.RoleDevice {
		role = "device"
	}
	fmt.Fprintf(w, "%s: %s, tick %d, seq %d, hlc %s, vector %s\n", n.name, role, s.Tick, s.Seq, fmtHLC(n.clock.Last()), e.fmtVector(s.Vector))
	if n.role == replica.RoleRegion {
		for _, p := range e.nodes {
			if peer, ok := s.Peers[p.id]; ok {
				fmt.Fprintf(w, "peer %s: holds %s, heard at tick %d\n", p.name, e.fmtVector(peer.Vector), peer.Heard)
			}
		}
		var newest []string
		for _, p := range e.nodes {
			if t, ok := s.Newest[p.id]; ok {
				newest = append(newest, p.name+" "+fmtHLC(t))
			}
		}
		if len(newest) > 0 {
			fmt.Fprintf(w, "newest applied: %s\n", strings.Join(newest, ", "))
		}
	} else {
		up := "none"
		if s.Upstream != uuid.Nil {
			up = e.nameOf(s.Upstream)
		}
		fmt.Fprintf(w, "upstream %s, outbox %d, synced %v\n", up, s.Outbox, s.Synced)
	}
	if s.LastErr != nil {
		fmt.Fprintf(w, "last error from %s: %s: %s\n", e.nameOf(s.LastErr.From), s.LastErr.Code, e.readable(s.LastErr.Text))
	}
	return nil
}

// --- formatting ---------------------------------------------------------

func (e *env) nameOf(id uuid.UUID) string {
	if n, ok := e.names[id]; ok {
		return n
	}
	return id.String()[:8]
}

var (
	uuidRE = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)
	hlcRE  = regexp.MustCompile(`\b[0-9a-f]{16}\b`)
)

// readable replaces ids and stamps in an error text by the names the
// scenario uses.
func (e *env) readable(s string) string {
	s = uuidRE.ReplaceAllStringFunc(s, func(u string) string {
		id, err := uuid.Parse(u)
		if err != nil {
			return u
		}
		return e.nameOf(id)
	})
	return hlcRE.ReplaceAllStringFunc(s, func(h string) string {
		t, err := hlc.Parse(h)
		if err != nil {
			return h
		}
		return fmtHLC(t)
	})
}

// fmtHLC shows a stamp as the time since t0, with the logical counter
// after a "+" when it is not zero.
func fmtHLC(t hlc.Timestamp) string {
	if t.IsZero() {
		return "0"
	}
	s := (time.Duration(t.WallMillis()-t0) * time.Millisecond).String()
	if l := t.Logical(); l > 0 {
		s += "+" + strconv.Itoa(int(l))
	}
	return s
}

func (e *env) fmtDot(d crdt.Dot) string { return fmt.Sprintf("%s/%d", e.nameOf(d.Replica), d.Seq) }

func (e *env) fmtDots(ds []crdt.Dot) string {
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = e.fmtDot(d)
	}
	return strings.Join(parts, " ")
}

func (e *env) fmtChange(c *crdt.Change) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s/%s", c.Op, c.Coll, c.Doc)
	if c.Field != "" {
		fmt.Fprintf(&b, ".%s %s", c.Field, c.Value)
	}
	fmt.Fprintf(&b, " dot %s hlc %s", e.fmtDot(c.Dot()), fmtHLC(c.HLC))
	if c.Op == crdt.OpIncr {
		fmt.Fprintf(&b, " total %d", c.Total)
	}
	if len(c.Context) > 0 {
		fmt.Fprintf(&b, " supersedes %s", e.fmtDots(c.Context))
	}
	return b.String()
}

// fmtVector lists entries in the order the nodes were created.
func (e *env) fmtVector(v crdt.Vector) string {
	ids := v.Regions()
	slices.SortStableFunc(ids, func(a, b uuid.UUID) int { return e.rank(a) - e.rank(b) })
	parts := make([]string, 0, len(ids))
	for _, id := range ids {
		parts = append(parts, fmt.Sprintf("%s:%d", e.nameOf(id), v[id]))
	}
	return "{" + strings.Join(parts, " ") + "}"
}

func (e *env) rank(id uuid.UUID) int {
	if i, ok := e.order[id]; ok {
		return i
	}
	return len(e.order)
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

func (e *env) fmtReady(rd *replica.Ready) string {
	var parts []string
	if rd.Writes > 0 {
		parts = append(parts, plural(rd.Writes, "write"))
	}
	if len(rd.Log) > 0 {
		parts = append(parts, plural(len(rd.Log), "change"))
	}
	if len(rd.Fields) > 0 {
		parts = append(parts, plural(len(rd.Fields), "field"))
	}
	if len(rd.Outbox) > 0 {
		parts = append(parts, fmt.Sprintf("outbox +%d", len(rd.Outbox)))
	}
	if len(rd.OutboxDone) > 0 {
		parts = append(parts, fmt.Sprintf("outbox -%d", len(rd.OutboxDone)))
	}
	if rd.State != nil {
		parts = append(parts, "vector "+e.fmtVector(rd.State.Vector))
	}
	if len(parts) == 0 {
		parts = append(parts, "nothing")
	}
	s := strings.Join(parts, ", ")
	if n := len(rd.Messages); n > 0 || rd.Fanout != nil {
		if rd.Fanout != nil {
			n++
		}
		s += "; " + plural(n, "message") + " out"
	}
	return s
}

// fmtRanges shows a batch's per-region stamp ranges: "nyc:1..3 london:2".
func (e *env) fmtRanges(base, head crdt.Vector) string {
	ids := head.Regions()
	slices.SortStableFunc(ids, func(a, b uuid.UUID) int { return e.rank(a) - e.rank(b) })
	var parts []string
	for _, id := range ids {
		lo, hi := base[id]+1, head[id]
		switch {
		case hi < lo:
			continue
		case hi == lo:
			parts = append(parts, fmt.Sprintf("%s:%d", e.nameOf(id), hi))
		default:
			parts = append(parts, fmt.Sprintf("%s:%d..%d", e.nameOf(id), lo, hi))
		}
	}
	if len(parts) == 0 {
		return "(empty)"
	}
	return strings.Join(parts, " ")
}

func (e *env) fmtMsg(m *replica.Message) string {
	switch m.Type {
	case replica.MsgBatch:
		s := e.fmtRanges(m.Base, m.Head) + " " + plural(len(m.Changes), "change")
		if m.Sync {
			s = "sync " + s
		}
		if m.More {
			s += " more"
		}
		if len(m.Colls) > 0 {
			s += " for " + strings.Join(m.Colls, ",")
		}
		return s
	case replica.MsgHeartbeat, replica.MsgAck:
		return e.fmtVector(m.Vector)
	case replica.MsgSyncReq:
		s := "have " + e.fmtVector(m.Vector)
		if len(m.Colls) > 0 {
			s += " colls " + strings.Join(m.Colls, ",")
		}
		return s
	case replica.MsgPush:
		ds := make([]crdt.Dot, len(m.Changes))
		for i := range m.Changes {
			ds[i] = m.Changes[i].Dot()
		}
		return plural(len(m.Changes), "change") + " " + e.fmtDots(ds)
	case replica.MsgPushAck:
		return e.fmtDots(m.Dots)
	case replica.MsgError:
		s := m.Code + ": " + e.readable(m.Text)
		if !m.HLC.IsZero() {
			s += " (clock " + fmtHLC(m.HLC) + ")"
		}
		return s
	}
	return "?"
}
