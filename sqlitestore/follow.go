package sqlitestore

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/syncd/syncd/crdt"
)

// A device may follow only some collections of a namespace. Its catch-up
// pages then leave the others out, yet their ranges move its vector past
// them: the vector says what the device holds of the collections it
// follows, and nothing of the rest. If it follows more later, what its
// vector covers of the new ones is not here, and no catch-up from that
// vector would bring it.

// Follow records the collections a device follows in namespace ns (none:
// all of them) and reports whether it reset the namespace's vector. It
// does when they widen (a collection not followed before, or all after
// some), and when the namespace has a vector but no record (a store from
// before the record was kept, where what the vector covers is unknown):
// the vector goes back to empty in the same transaction, so the next
// catch-up fetches the followed collections from the start, changes
// already held being recognised by their dots. Sequence numbers, the
// clock's high-water mark, the outbox and every stored change stay.
//
// Call it before a replica of ns is made from this store: a replica keeps
// its vector in memory.
func (s *Store) Follow(ctx context.Context, ns string, colls []string) (reset bool, err error) {
	if err := crdt.ValidateName(ns); err != nil {
		return false, fmt.Errorf("sqlitestore: follow: namespace: %w", err)
	}
	for _, c := range colls {
		if err := crdt.ValidateName(c); err != nil {
			return false, fmt.Errorf("sqlitestore: follow: collection: %w", err)
		}
	}
	want := slices.Compact(slices.Sorted(slices.Values(colls)))
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("sqlitestore: follow: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	w, err := s.writer()
	if err != nil {
		return false, err
	}
	if s.inTx {
		return false, fmt.Errorf("sqlitestore: follow: inside a save")
	}
	if err := s.beginWrite(w); err != nil {
		return false, fmt.Errorf("sqlitestore: follow: begin: %w", err)
	}
	defer func() {
		if err != nil {
			s.rollback(w, err)
		}
	}()
	var had *[]string
	if err := w.query("SELECT colls FROM follows WHERE ns = ?", func(row []driverValue) error {
		v, _ := row[0].(string)
		var old []string
		if v != "" {
			old = strings.Split(v, ",")
		}
		had = &old
		return nil
	}, ns); err != nil {
		return false, fmt.Errorf("sqlitestore: follow: %w", err)
	}
	st, err := s.loadState(w, ns)
	if err != nil {
		return false, fmt.Errorf("sqlitestore: follow: %w", err)
	}
	held := len(st.Vector) > 0
	switch {
	case !held:
	case had == nil:
		reset = true
	case len(*had) == 0: // followed every collection: nothing is missing
	case len(want) == 0:
		reset = true
	default:
		reset = slices.ContainsFunc(want, func(c string) bool { return !slices.Contains(*had, c) })
	}
	if reset {
		if err := w.exec("UPDATE ns_state SET vector = ? WHERE ns = ?", zeroVector, ns); err != nil {
			return false, fmt.Errorf("sqlitestore: follow: reset vector: %w", err)
		}
		delete(s.states, ns)
	}
	if err := w.exec(`INSERT INTO follows (ns, colls) VALUES (?, ?)
		ON CONFLICT (ns) DO UPDATE SET colls = excluded.colls`, ns, strings.Join(want, ",")); err != nil {
		return false, fmt.Errorf("sqlitestore: follow: %w", err)
	}
	if err := w.exec(qCommit); err != nil {
		return false, fmt.Errorf("sqlitestore: follow: commit: %w", err)
	}
	return reset, nil
}
