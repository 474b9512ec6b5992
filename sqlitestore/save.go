package sqlitestore

import (
	"context"
	"fmt"
	"strings"

	"github.com/google/uuid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/replica"
)

const (
	qBegin    = "BEGIN IMMEDIATE"
	qCommit   = "COMMIT"
	qRollback = "ROLLBACK"

	// seq and hlc never go back, even if a stale State were saved: a
	// restart must not reuse a sequence number or a stamp.
	qState = `INSERT INTO ns_state (ns, vector, seq, hlc) VALUES (?, ?, ?, ?)
		ON CONFLICT (ns) DO UPDATE SET vector = excluded.vector,
			seq = max(seq, excluded.seq), hlc = max(hlc, excluded.hlc)`
	// A Ready without State still names its namespace, so Namespaces finds it.
	qStateSeen  = `INSERT OR IGNORE INTO ns_state (ns, vector, seq, hlc) VALUES (?, ?, 0, ?)`
	qOutboxAdd  = `INSERT OR REPLACE INTO outbox (ns, origin, seq, payload) VALUES (?, ?, ?, ?)`
	qOutboxDone = `DELETE FROM outbox WHERE ns = ? AND origin = ? AND seq = ?`
)

var zeroVector = appendVector(nil, nil)

// The per-row statements, batched (see rowBatch).
func newBatches() (log, dots, fields *rowBatch) {
	// Re-saving a log row (a redelivered batch) keeps the first copy.
	log = newRowBatch(`INSERT OR IGNORE INTO log (k, own, payload) VALUES `, `(?, ?, ?)`, ``)
	dots = newRowBatch(`INSERT OR IGNORE INTO dots (ns, origin, seq) VALUES `, `(?, ?, ?)`, ``)
	fields = newRowBatch(`INSERT INTO fields (k, conflict, state) VALUES `, `(?, ?, ?)`,
		` ON CONFLICT (k) DO UPDATE SET conflict = excluded.conflict, state = excluded.state`)
	return
}

// Save persists Readys, of one namespace or many, in one transaction:
// state, log, dots, field states and outbox of all of them, or nothing.
// A Ready with nothing to persist (only messages) costs nothing. If ctx is
// done before the commit, the transaction is rolled back and ctx's error
// returned.
func (s *Store) Save(ctx context.Context, rds []*replica.Ready) (err error) {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("sqlitestore: save: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	w, err := s.writer()
	if err != nil {
		return err
	}
	if err := s.beginWrite(w); err != nil {
		return fmt.Errorf("sqlitestore: save: begin: %w", err)
	}
	s.inTx = true
	defer func() {
		s.inTx = false
		clear(s.docs)
		s.endTx(err == nil)
		s.blog.reset()
		s.bdots.reset()
		s.bfields.reset()
		if err != nil {
			s.rollback(w, err)
		}
	}()
	for _, rd := range rds {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("sqlitestore: save: %w", err)
		}
		if err := s.saveReady(w, rd); err != nil {
			return fmt.Errorf("sqlitestore: save %s: %w", rd.NS, err)
		}
	}
	if err := s.step("commit"); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("sqlitestore: save: %w", err)
	}
	if err := w.exec(qCommit); err != nil {
		return fmt.Errorf("sqlitestore: save: commit: %w", err)
	}
	for _, rd := range rds {
		if persists(rd) {
			s.ckpt.committed()
			break
		}
	}
	return nil
}

// beginWrite starts a write transaction on the writer. If the loop's
// reads since the last write ran in a deferred transaction (see reading),
// that one becomes it at its first write: nothing else writes this file,
// so its snapshot is the newest and the upgrade cannot be refused. Caller
// holds mu.
func (s *Store) beginWrite(w *wconn) error {
	if s.rtx {
		s.rtx = false
		return nil
	}
	return w.exec(qBegin)
}

// rollback ends a write transaction that failed with cause. If it cannot,
// the connection may be inside a transaction no one can end, and nothing
// more may be written through it. Caller holds mu.
func (s *Store) rollback(w *wconn, cause error) {
	if rerr := w.exec(qRollback); rerr != nil && !strings.Contains(rerr.Error(), "no transaction is active") {
		s.broken = fmt.Errorf("%w: rollback after %v: %v", ErrBroken, cause, rerr)
	}
}

// reading opens a deferred transaction on the writer for the loop's
// reads, unless one is open: SQLite otherwise opens and closes a read
// transaction around every statement, which was half the cost of the
// point read a write does before it is saved. The next Save continues
// it. Caller holds mu.
func (s *Store) reading(w *wconn) error {
	if s.rtx || s.inTx {
		return nil
	}
	if err := w.exec("BEGIN"); err != nil {
		return fmt.Errorf("begin read: %w", err)
	}
	s.rtx = true
	return nil
}

func (s *Store) step(name string) error {
	if s.fail != nil {
		return s.fail(name)
	}
	return nil
}

// persists reports whether a Ready has anything to write (a Ready may
// carry only messages, a heartbeat).
func persists(rd *replica.Ready) bool {
	return rd.State != nil || len(rd.Log) > 0 || len(rd.Fields) > 0 || len(rd.Outbox) > 0 || len(rd.OutboxDone) > 0
}

func (s *Store) saveReady(w *wconn, rd *replica.Ready) error {
	if !persists(rd) {
		return nil
	}
	if err := crdt.ValidateName(rd.NS); err != nil {
		return fmt.Errorf("namespace: %w", err)
	}
	ns := rd.NS
	var cur *nsState
	if rd.State != nil {
		var err error
		if cur, err = s.loadState(w, ns); err != nil {
			return err
		}
	} else {
		if err := w.exec(qStateSeen, ns, zeroVector, "0000000000000000"); err != nil {
			return fmt.Errorf("state: %w", err)
		}
		if known, ok := s.states[ns]; !ok || !known.row {
			s.pendStates[ns] = nil // the row may be new: read it again
		}
	}
	for i := range rd.Log {
		c := &rd.Log[i]
		if c.NS != ns {
			return fmt.Errorf("log: change %s is of namespace %q", c.ID, c.NS)
		}
		seq, err := sqlInt(c.Seq, "sequence number")
		if err != nil {
			return err
		}
		own := c.Region != uuid.Nil && c.Region == c.Origin && c.RSeq == c.Seq
		if s.opts.KeepLog && c.RSeq != 0 {
			if c.RSeq > maxRSeq {
				return fmt.Errorf("log: region sequence number %d above the store's limit %d", c.RSeq, uint64(maxRSeq))
			}
			sid, _, err := s.sid(w, ns, c.Region, true)
			if err != nil {
				return err
			}
			s.buf = appendChange(s.buf[:0], c)
			if err := s.blog.add(w, logKey(sid, c.RSeq), own, s.blog.blob(s.buf)); err != nil {
				return fmt.Errorf("log: %w", err)
			}
		} else {
			own = false // no log row to imply the dot
		}
		if !own {
			if err := s.bdots.add(w, ns, s.bdots.blob(c.Origin[:]), seq); err != nil {
				return fmt.Errorf("dots: %w", err)
			}
		}
	}
	if err := s.blog.flush(w); err != nil {
		return fmt.Errorf("log: %w", err)
	}
	if err := s.bdots.flush(w); err != nil {
		return fmt.Errorf("dots: %w", err)
	}
	if err := s.step("log"); err != nil {
		return err
	}
	if rd.State != nil {
		if err := s.saveState(w, rd, cur); err != nil {
			return err
		}
	}
	if err := s.step("state"); err != nil {
		return err
	}
	for _, u := range rd.Fields {
		if u.Key.NS != ns {
			return fmt.Errorf("field %s: not of namespace %q", u.Key, ns)
		}
		if err := checkFieldKey(u.Key); err != nil {
			return fmt.Errorf("field %s: %w", u.Key, err)
		}
		if u.State == nil {
			return fmt.Errorf("field %s: no state", u.Key)
		}
		conflict := len(u.State.Reg().Sibs) > 1
		s.kbuf = fieldKey(s.kbuf[:0], u.Key)
		s.buf = appendField(s.buf[:0], u.State)
		if err := s.bfields.add(w, string(s.kbuf), conflict, s.bfields.blob(s.buf)); err != nil {
			return fmt.Errorf("fields: %w", err)
		}
		if err := s.step("field"); err != nil {
			return err
		}
	}
	if err := s.bfields.flush(w); err != nil {
		return fmt.Errorf("fields: %w", err)
	}
	for i := range rd.Outbox {
		c := &rd.Outbox[i]
		seq, err := sqlInt(c.Seq, "sequence number")
		if err != nil {
			return err
		}
		s.buf = appendChange(s.buf[:0], c)
		if err := w.exec(qOutboxAdd, ns, c.Origin[:], seq, s.buf); err != nil {
			return fmt.Errorf("outbox: %w", err)
		}
	}
	for _, d := range rd.OutboxDone {
		seq, err := sqlInt(d.Seq, "sequence number")
		if err != nil {
			return err
		}
		if err := w.exec(qOutboxDone, ns, d.Replica[:], seq); err != nil {
			return fmt.Errorf("outbox: %w", err)
		}
	}
	return s.step("outbox")
}
