package natsbus

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/google/uuid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/replica"
)

// Messages between regions travel in a compact binary form rather than
// JSON: with JSON, decoding a 1,000-change batch cost a receiving region
// more CPU than applying it (a fifth of a replicating region's profile),
// which capped catch-up and sustained replication. BenchmarkCodec measures
// both. The devices' websocket keeps JSON (docs/protocol.md); this form is
// private to regions, and Decode still reads JSON (first byte '{') so a
// message published by hand with the nats CLI is understood.
//
// Layout, version 1 (integers are uvarints unless noted):
//
//	0x01 version
//	type (byte), flags (byte: 1 sync, 2 more)
//	ns, node, code, text (strings: length + bytes)
//	from, to (16 bytes each)
//	limit, hlc
//	ids: count, then 16 bytes each: every replica id the vectors, dots
//	     and changes below refer to, by index
//	vector, base, head: count, then (id index, seq) each
//	dots: count, then (id index, seq) each
//	colls: count, then strings
//	changes: count, then each:
//	  id (16 bytes), origin (index), seq, hlc, region (index+1; 0 none), rseq,
//	  ns (length+1; 0: the message's), coll, field (length+1; 0: the
//	  previous change's), doc (string), kind (byte), op (byte),
//	  value (bytes), total (varint), context (count, then (index, seq))

const codecV1 = 1

// ErrMalformed wraps every error decoding a message.
var ErrMalformed = errors.New("natsbus: malformed message")

// Encode returns the wire form of m.
func Encode(m *replica.Message) []byte {
	e := encoder{idx: map[crdt.ReplicaID]uint64{}}
	// Collect ids first so the table precedes their uses.
	for _, v := range []crdt.Vector{m.Vector, m.Base, m.Head} {
		for _, r := range v.Regions() {
			e.collect(r)
		}
	}
	for _, d := range m.Dots {
		e.collect(d.Replica)
	}
	for i := range m.Changes {
		c := &m.Changes[i]
		e.collect(c.Origin)
		if c.Region != uuid.Nil {
			e.collect(c.Region)
		}
		for _, d := range c.Context {
			e.collect(d.Replica)
		}
	}
	size := 64 + len(m.NS) + len(m.Node) + len(m.Code) + len(m.Text) + 17*len(e.ids) + 80*len(m.Changes)
	for i := range m.Changes {
		size += len(m.Changes[i].Doc) + len(m.Changes[i].Value)
	}
	e.b = make([]byte, 0, size)
	e.b = append(e.b, codecV1, byte(m.Type))
	var flags byte
	if m.Sync {
		flags |= 1
	}
	if m.More {
		flags |= 2
	}
	e.b = append(e.b, flags)
	e.str(m.NS)
	e.str(m.Node)
	e.str(m.Code)
	e.str(m.Text)
	e.b = append(e.b, m.From[:]...)
	e.b = append(e.b, m.To[:]...)
	e.uvarint(uint64(max(m.Limit, 0)))
	e.uvarint(uint64(m.HLC))
	e.uvarint(uint64(len(e.ids)))
	for _, r := range e.ids {
		e.b = append(e.b, r[:]...)
	}
	for _, v := range []crdt.Vector{m.Vector, m.Base, m.Head} {
		rs := v.Regions()
		e.uvarint(uint64(len(rs)))
		for _, r := range rs {
			e.uvarint(e.idx[r])
			e.uvarint(v[r])
		}
	}
	e.uvarint(uint64(len(m.Dots)))
	for _, d := range m.Dots {
		e.uvarint(e.idx[d.Replica])
		e.uvarint(d.Seq)
	}
	e.uvarint(uint64(len(m.Colls)))
	for _, c := range m.Colls {
		e.str(c)
	}
	e.uvarint(uint64(len(m.Changes)))
	var prevColl, prevField string
	for i := range m.Changes {
		c := &m.Changes[i]
		e.b = append(e.b, c.ID[:]...)
		e.uvarint(e.idx[c.Origin])
		e.uvarint(c.Seq)
		e.uvarint(uint64(c.HLC))
		if c.Region == uuid.Nil {
			e.uvarint(0)
		} else {
			e.uvarint(e.idx[c.Region] + 1)
		}
		e.uvarint(c.RSeq)
		if c.NS == m.NS {
			e.uvarint(0)
		} else {
			e.uvarint(uint64(len(c.NS)) + 1)
			e.b = append(e.b, c.NS...)
		}
		e.repeat(c.Coll, &prevColl, i)
		e.repeat(c.Field, &prevField, i)
		e.str(c.Doc)
		e.b = append(e.b, byte(c.Kind), byte(c.Op))
		e.uvarint(uint64(len(c.Value)))
		e.b = append(e.b, c.Value...)
		e.b = binary.AppendVarint(e.b, c.Total)
		e.uvarint(uint64(len(c.Context)))
		for _, d := range c.Context {
			e.uvarint(e.idx[d.Replica])
			e.uvarint(d.Seq)
		}
	}
	return e.b
}

type encoder struct {
	b   []byte
	ids []crdt.ReplicaID
	idx map[crdt.ReplicaID]uint64
}

func (e *encoder) collect(r crdt.ReplicaID) {
	if _, ok := e.idx[r]; !ok {
		e.idx[r] = uint64(len(e.ids))
		e.ids = append(e.ids, r)
	}
}

func (e *encoder) uvarint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }

func (e *encoder) str(s string) {
	e.uvarint(uint64(len(s)))
	e.b = append(e.b, s...)
}

// repeat writes s, or 0 when it equals the previous change's (batches are
// mostly one collection and a few field names).
func (e *encoder) repeat(s string, prev *string, i int) {
	if i > 0 && s == *prev {
		e.uvarint(0)
		return
	}
	e.uvarint(uint64(len(s)) + 1)
	e.b = append(e.b, s...)
	*prev = s
}

// Decode reads a message in the wire form, or in JSON. It never panics
// and never allocates more than the input can justify; what it returns is
// checked again by the replica (checkBatch, Validate).
func Decode(data []byte) (replica.Message, error) {
	if len(data) > 0 && data[0] == '{' {
		var m replica.Message
		if err := json.Unmarshal(data, &m); err != nil {
			return replica.Message{}, fmt.Errorf("%w: %v", ErrMalformed, err)
		}
		return m, nil
	}
	if len(data) == 0 || data[0] != codecV1 {
		return replica.Message{}, fmt.Errorf("%w: unknown encoding (a newer release?)", ErrMalformed)
	}
	d := decoder{b: data[1:]}
	var m replica.Message
	m.Type = replica.MsgType(d.byte1())
	flags := d.byte1()
	m.Sync, m.More = flags&1 != 0, flags&2 != 0
	m.NS = d.str()
	m.Node = d.str()
	m.Code = d.str()
	m.Text = d.str()
	m.From = d.id()
	m.To = d.id()
	m.Limit = int(min(d.uvarint(), 1<<31-1))
	m.HLC = hlc.Timestamp(d.uvarint())
	n := d.count(16)
	d.ids = make([]crdt.ReplicaID, n)
	for i := range d.ids {
		d.ids[i] = d.id()
	}
	m.Vector, m.Base, m.Head = d.vector(), d.vector(), d.vector()
	if n := d.count(2); n > 0 {
		m.Dots = make([]crdt.Dot, n)
		for i := range m.Dots {
			m.Dots[i] = crdt.Dot{Replica: d.ref(), Seq: d.uvarint()}
		}
	}
	if n := d.count(1); n > 0 {
		m.Colls = make([]string, n)
		for i := range m.Colls {
			m.Colls[i] = d.str()
		}
	}
	// A change takes at least 16+12 bytes.
	if n := d.count(28); n > 0 {
		m.Changes = make([]crdt.Change, n)
		var prevColl, prevField string
		for i := range m.Changes {
			c := &m.Changes[i]
			c.ID = d.id()
			c.Origin = d.ref()
			c.Seq = d.uvarint()
			c.HLC = hlc.Timestamp(d.uvarint())
			if r := d.uvarint(); r > 0 {
				c.Region = d.refAt(r - 1)
			}
			c.RSeq = d.uvarint()
			c.NS = m.NS
			if n := d.uvarint(); n > 0 {
				c.NS = d.fixed(n - 1)
			}
			c.Coll = d.repeat(&prevColl, i)
			c.Field = d.repeat(&prevField, i)
			c.Doc = d.str()
			c.Kind = crdt.Kind(d.byte1())
			c.Op = crdt.Op(d.byte1())
			if v := d.bytes(); len(v) > 0 {
				// A copy: the value outlives the message in field states.
				c.Value = append(json.RawMessage(nil), v...)
			}
			c.Total = d.varint()
			if n := d.count(2); n > 0 {
				c.Context = make([]crdt.Dot, n)
				for j := range c.Context {
					c.Context[j] = crdt.Dot{Replica: d.ref(), Seq: d.uvarint()}
				}
			}
			if d.err != nil {
				break
			}
		}
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes")
	}
	if d.err != nil {
		return replica.Message{}, d.err
	}
	return m, nil
}

// decoder reads what Encode wrote; every read is bounds-checked, and the
// first failure sticks.
type decoder struct {
	b   []byte
	err error
	ids []crdt.ReplicaID
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: bad %s", ErrMalformed, what)
	}
	d.b = nil
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("integer")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("integer")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) byte1() byte {
	if len(d.b) < 1 {
		d.fail("byte")
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) id() crdt.ReplicaID {
	var r crdt.ReplicaID
	if len(d.b) < len(r) {
		d.fail("id")
		return r
	}
	copy(r[:], d.b)
	d.b = d.b[len(r):]
	return r
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.fail("length")
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) str() string { return string(d.bytes()) }

// fixed reads a string of n bytes.
func (d *decoder) fixed(n uint64) string {
	if n > uint64(len(d.b)) {
		d.fail("length")
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

func (d *decoder) repeat(prev *string, i int) string {
	n := d.uvarint()
	if n == 0 {
		if i == 0 {
			d.fail("repeated string in the first change")
		}
		return *prev
	}
	*prev = d.fixed(n - 1)
	return *prev
}

// count reads a length the rest of the input can hold, every item taking
// at least min bytes, so a bad count cannot make us allocate.
func (d *decoder) count(min int) int {
	n := d.uvarint()
	if d.err != nil || n > uint64(len(d.b)/min) {
		d.fail("count")
		return 0
	}
	return int(n)
}

func (d *decoder) refAt(i uint64) crdt.ReplicaID {
	if i >= uint64(len(d.ids)) {
		d.fail("id reference")
		return crdt.ReplicaID{}
	}
	return d.ids[i]
}

func (d *decoder) ref() crdt.ReplicaID { return d.refAt(d.uvarint()) }

func (d *decoder) vector() crdt.Vector {
	n := d.count(2)
	if n == 0 {
		return nil
	}
	v := make(crdt.Vector, n)
	for range n {
		r := d.ref()
		v[r] = d.uvarint()
	}
	return v
}
