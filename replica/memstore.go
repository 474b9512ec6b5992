package replica

import (
	"slices"
	"strings"

	"github.com/syncd/syncd/crdt"
)

// MemStorage is an in-memory Storage that saves Readys: for tests, the
// simulator and the browser, where the durable store is elsewhere (or
// nowhere). A crash in the simulator is "keep the MemStorage, drop the
// Replica": whatever was saved survives, nothing else does.
type MemStorage struct {
	// docs holds, per collection and then per document id, the
	// document's fields sorted by name. The browser and the simulator
	// hold every document in memory: a slice of five named pointers takes
	// 128 bytes where a map of them took 256, and a map slot keyed by the
	// id alone is 32 bytes smaller than one keyed by the whole DocKey.
	docs map[collKey]map[string][]memField
	// last and lastDocs remember the collection looked up last: a batch
	// is mostly of one collection, and hashing its two names for every
	// change was a tenth of applying a change to a new field.
	last     collKey
	lastDocs map[string][]memField
	Dots     DotSet
	Logs     map[crdt.ReplicaID][]crdt.Change // per region, in RSeq order
	State    State
	Outbox   []crdt.Change
}

var _ Storage = (*MemStorage)(nil)

// NewMemStorage returns an empty store.
func NewMemStorage() *MemStorage {
	return &MemStorage{
		docs: map[collKey]map[string][]memField{},
		Dots: DotSet{},
		Logs: map[crdt.ReplicaID][]crdt.Change{},
	}
}

type collKey struct{ ns, coll string }

// coll returns the documents of a collection, made if create is set
// (nil if not and there are none).
func (m *MemStorage) coll(ns, coll string, create bool) map[string][]memField {
	ck := collKey{ns, coll}
	if m.lastDocs != nil && ck == m.last {
		return m.lastDocs
	}
	docs := m.docs[ck]
	if docs == nil {
		if !create {
			return nil
		}
		docs = map[string][]memField{}
		m.docs[ck] = docs
	}
	m.last, m.lastDocs = ck, docs
	return docs
}

// memField is one field of a stored document.
type memField struct {
	name  string
	state *crdt.Field
}

// find returns where the field called name is, or would go, in fs.
func find(fs []memField, name string) (int, bool) {
	return slices.BinarySearchFunc(fs, name, func(f memField, n string) int { return strings.Compare(f.name, n) })
}

func (m *MemStorage) Field(k crdt.FieldKey) (*crdt.Field, error) {
	fs := m.coll(k.NS, k.Coll, false)[k.Doc]
	if i, ok := find(fs, k.Field); ok {
		return fs[i].state, nil
	}
	return nil, nil
}

func (m *MemStorage) Doc(k crdt.DocKey) (map[string]*crdt.Field, error) { return m.DocFields(k), nil }

// DocFields returns a new map of the document's fields (nil if it has
// none).
func (m *MemStorage) DocFields(k crdt.DocKey) map[string]*crdt.Field {
	fs := m.coll(k.NS, k.Coll, false)[k.Doc]
	if fs == nil {
		return nil
	}
	out := make(map[string]*crdt.Field, len(fs))
	for _, f := range fs {
		out[f.name] = f.state
	}
	return out
}

// DocKeys lists the documents the store holds fields of, in no order.
func (m *MemStorage) DocKeys() []crdt.DocKey {
	var ks []crdt.DocKey
	for ck, docs := range m.docs {
		for id := range docs {
			ks = append(ks, crdt.DocKey{NS: ck.ns, Coll: ck.coll, Doc: id})
		}
	}
	return ks
}

// PutField stores a field state, as Save does for a Ready's fields: for
// restoring a store from a snapshot.
func (m *MemStorage) PutField(k crdt.FieldKey, f *crdt.Field) {
	m.putFields(k.DocKey(), []FieldUpdate{{Key: k, State: f}})
}

// putFields stores updates to the fields of one document. New names are
// merged in with one allocation of the exact size: most documents are
// written once, all fields together, and never grow again.
func (m *MemStorage) putFields(dk crdt.DocKey, us []FieldUpdate) {
	docs := m.coll(dk.NS, dk.Coll, true)
	fs := docs[dk.Doc]
	added := 0
	for _, u := range us {
		if i, ok := find(fs, u.Key.Field); ok {
			fs[i].state = u.State
		} else {
			added++
		}
	}
	if added == 0 {
		return
	}
	out := make([]memField, len(fs), len(fs)+added)
	copy(out, fs)
	for _, u := range us {
		if i, ok := find(out, u.Key.Field); ok {
			out[i].state = u.State
		} else {
			out = slices.Insert(out, i, memField{u.Key.Field, u.State})
		}
	}
	docs[dk.Doc] = out
}

func (m *MemStorage) HasDot(d crdt.Dot) (bool, error) {
	return m.Dots.Has(d), nil
}

// Log serves from the per-region slices; entries are appended in RSeq
// order, so a binary search finds the start.
func (m *MemStorage) Log(region crdt.ReplicaID, from uint64, limit int) ([]crdt.Change, error) {
	l := m.Logs[region]
	i, _ := slices.BinarySearchFunc(l, from, func(c crdt.Change, s uint64) int {
		switch {
		case c.RSeq < s:
			return -1
		case c.RSeq > s:
			return 1
		}
		return 0
	})
	end := min(len(l), i+limit)
	return slices.Clone(l[i:end]), nil
}

// Save applies a Ready as one transaction would. Field states are stored
// as given: the replica hands out states it no longer mutates.
func (m *MemStorage) Save(rd *Ready) {
	if rd.State != nil {
		m.State = State{Vector: rd.State.Vector.Clone(), Seq: rd.State.Seq, HLC: rd.State.HLC}
	}
	for _, c := range rd.Log {
		m.Dots.Add(c.Dot())
		if c.RSeq != 0 {
			l := m.Logs[c.Region]
			if n := len(l); n == 0 || l[n-1].RSeq < c.RSeq {
				if n == cap(l) {
					// Double rather than let append grow a long log by a
					// quarter at a time: each growth copies the whole log.
					l = append(make([]crdt.Change, 0, max(2*n, 64)), l...)
				}
				m.Logs[c.Region] = append(l, c)
			}
		}
	}
	// A Ready's fields are in the order they were changed, so a
	// document's are mostly together: each run is stored in one go.
	for us := rd.Fields; len(us) > 0; {
		dk := us[0].Key.DocKey()
		n := 1
		for n < len(us) && us[n].Key.DocKey() == dk {
			n++
		}
		m.putFields(dk, us[:n])
		us = us[n:]
	}
	m.Outbox = append(m.Outbox, rd.Outbox...)
	if len(rd.OutboxDone) > 0 {
		done := map[crdt.Dot]bool{}
		for _, d := range rd.OutboxDone {
			done[d] = true
		}
		m.Outbox = slices.DeleteFunc(m.Outbox, func(c crdt.Change) bool { return done[c.Dot()] })
	}
}
