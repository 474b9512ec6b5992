package sqlitestore

import (
	"context"
	"fmt"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/replica"
)

// A namespace's replica.State lives in its ns_state row, except for what
// the node's own log stream says more recently.
//
// A region's own write moves its State in a way the write's log row
// already records: Seq and Vector[self] become the row's region sequence
// number, HLC the row's stamp. Writing the ns_state row as well would put
// a third b-tree page into every one-write transaction (the state, the
// log tail and the field), which BenchmarkWrites measures at about a third
// of its cost. So Save skips the row when the State is exactly what the
// log row implies, and the State is derived on read:
//
//	Seq        = max(row.seq, tail rseq)
//	Vector     = row.vector, with Vector[self] = max(row.vector[self], tail rseq)
//	HLC        = max(row.hlc, tail change's HLC)
//
// where tail is the newest row of the node's own stream. That is sound
// because a log row is only ever committed with a State at or above it. A
// Save may only skip when it knows the derived State before it (the
// states cache: one Store per database file), and the State it saves
// differs from it in nothing else.

// nsState is a namespace's derived State, and whether its ns_state row
// exists (Namespaces lists the rows, so the first State is always
// written).
type nsState struct {
	replica.State
	row bool
}

// loadState returns the derived State of ns (zero, with an empty vector,
// if it has none). Caller holds mu.
func (s *Store) loadState(w *wconn, ns string) (*nsState, error) {
	if st, ok := s.pendStates[ns]; ok && st != nil {
		return st, nil
	}
	if st, ok := s.states[ns]; ok {
		return st, nil
	}
	st := &nsState{State: replica.State{Vector: crdt.Vector{}}}
	err := w.query("SELECT vector, seq, hlc FROM ns_state WHERE ns = ?", func(row []driverValue) error {
		b, _ := row[0].([]byte)
		v, err := decodeVector(b)
		if err != nil {
			return err
		}
		seq, _ := row[1].(int64)
		str, _ := row[2].(string)
		t, err := hlc.Parse(str)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrCorrupt, err)
		}
		*st = nsState{replica.State{Vector: v, Seq: uint64(seq), HLC: t}, true}
		return nil
	}, ns)
	if err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	if sid, ok, _ := s.sid(w, ns, s.id, false); ok {
		err := w.query("SELECT k, payload FROM log WHERE k >= ? AND k <= ? ORDER BY k DESC LIMIT 1", func(row []driverValue) error {
			k, _ := row[0].(int64)
			b, _ := row[1].([]byte)
			c, err := decodeChange(b, ns)
			if err != nil {
				return fmt.Errorf("log tail: %w", err)
			}
			t := uint64(k & maxRSeq)
			st.Seq = max(st.Seq, t)
			st.Vector[s.id] = max(st.Vector[s.id], t)
			st.HLC = max(st.HLC, c.HLC)
			return nil
		}, logKey(sid, 1), logKey(sid, maxRSeq))
		if err != nil {
			return nil, fmt.Errorf("state: %w", err)
		}
	}
	if s.inTx {
		s.pendStates[ns] = st // settled with the transaction
	} else {
		s.states[ns] = st
	}
	return st, nil
}

// saveState persists rd's State, or skips it if the Ready's own log rows
// imply it. cur is the derived State before rd (read before its log
// rows). Caller holds mu, in the transaction.
func (s *Store) saveState(w *wconn, rd *replica.Ready, cur *nsState) error {
	st := rd.State
	next := &nsState{replica.State{Vector: st.Vector.Clone(), Seq: st.Seq, HLC: st.HLC}, true}
	if s.implied(rd, cur) {
		s.pendStates[rd.NS] = next
		return nil
	}
	seq, err := sqlInt(st.Seq, "sequence number")
	if err != nil {
		return err
	}
	s.buf = appendVector(s.buf[:0], st.Vector)
	if err := w.exec(qState, rd.NS, s.buf, seq, st.HLC.String()); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	if st.Seq < cur.Seq || st.HLC < cur.HLC {
		// A stale State: the row keeps the larger seq and clock, and the
		// cache is read again rather than guessed.
		next = nil
	}
	s.pendStates[rd.NS] = next
	return nil
}

// implied reports whether the derived State after rd's log rows equals
// rd.State, so the state row need not be written.
func (s *Store) implied(rd *replica.Ready, cur *nsState) bool {
	if !s.opts.KeepLog || !cur.row {
		return false
	}
	var tail *crdt.Change
	for i := range rd.Log {
		if c := &rd.Log[i]; c.Region == s.id && c.RSeq != 0 && (tail == nil || c.RSeq > tail.RSeq) {
			tail = c
		}
	}
	st := rd.State
	if tail == nil || tail.RSeq <= cur.Seq || st.Seq != tail.RSeq || st.HLC != tail.HLC ||
		st.HLC < cur.HLC || st.Vector[s.id] != tail.RSeq {
		return false
	}
	for r, n := range st.Vector {
		if r != s.id && cur.Vector[r] != n {
			return false
		}
	}
	for r, n := range cur.Vector {
		if m, ok := st.Vector[r]; r != s.id && (!ok || m != n) {
			return false
		}
	}
	return true
}

// Load returns what a namespace's replica needs at start: its State (the
// zero State with an empty vector if it has none) and its outbox, oldest
// first.
func (s *Store) Load(ctx context.Context, ns string) (replica.State, []crdt.Change, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w, err := s.writer()
	if err != nil {
		return replica.State{}, nil, err
	}
	st, err := s.loadState(w, ns)
	if err != nil {
		return replica.State{}, nil, fmt.Errorf("sqlitestore: load %s: %w", ns, err)
	}
	outbox, err := s.outbox(w, ns)
	if err != nil {
		return replica.State{}, nil, err
	}
	return replica.State{Vector: st.Vector.Clone(), Seq: st.Seq, HLC: st.HLC}, outbox, nil
}

// NodeState returns the node-wide clock high-water mark: the largest HLC
// any namespace persisted. Restore the node's clock from it before any
// replica issues a stamp.
func (s *Store) NodeState(ctx context.Context) (hlc.Timestamp, error) {
	nss, err := s.Namespaces(ctx)
	if err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	w, err := s.writer()
	if err != nil {
		return 0, err
	}
	var hw hlc.Timestamp
	for _, ns := range nss {
		st, err := s.loadState(w, ns)
		if err != nil {
			return 0, fmt.Errorf("sqlitestore: read clock high-water mark of %s: %w", ns, err)
		}
		hw = max(hw, st.HLC)
	}
	return hw, nil
}
