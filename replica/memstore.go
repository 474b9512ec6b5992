package replica

import (
	"slices"

	"github.com/syncd/syncd/crdt"
)

// MemStorage is an in-memory Storage that saves Readys: for tests, the
// simulator and the browser, where the durable store is elsewhere (or
// nowhere). A crash in the simulator is "keep the MemStorage, drop the
// Replica": whatever was saved survives, nothing else does.
type MemStorage struct {
	Docs   map[crdt.DocKey]map[string]*crdt.Field
	Dots   map[crdt.Dot]struct{}
	Logs   map[crdt.ReplicaID][]crdt.Change // per region, in RSeq order
	State  State
	Outbox []crdt.Change
}

var _ Storage = (*MemStorage)(nil)

// NewMemStorage returns an empty store.
func NewMemStorage() *MemStorage {
	return &MemStorage{
		Docs: map[crdt.DocKey]map[string]*crdt.Field{},
		Dots: map[crdt.Dot]struct{}{},
		Logs: map[crdt.ReplicaID][]crdt.Change{},
	}
}

func (m *MemStorage) Field(k crdt.FieldKey) (*crdt.Field, error) {
	return m.Docs[k.DocKey()][k.Field], nil
}

func (m *MemStorage) Doc(k crdt.DocKey) (map[string]*crdt.Field, error) { return m.Docs[k], nil }

func (m *MemStorage) HasDot(d crdt.Dot) (bool, error) {
	_, ok := m.Dots[d]
	return ok, nil
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
		m.Dots[c.Dot()] = struct{}{}
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
	for _, u := range rd.Fields {
		dk := u.Key.DocKey()
		d := m.Docs[dk]
		if d == nil {
			d = map[string]*crdt.Field{}
			m.Docs[dk] = d
		}
		d[u.Key.Field] = u.State
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
