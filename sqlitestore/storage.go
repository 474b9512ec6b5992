package sqlitestore

import (
	"context"
	"database/sql"
	"fmt"
	"math"
	"strings"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/replica"
)

const (
	qField1  = `SELECT state FROM fields WHERE k = ?`
	qDocRows = `SELECT k, state FROM fields WHERE k >= ? AND k < ?`
	qOwnDot  = `SELECT 1 FROM log WHERE k = ? AND own = 1`
	qHasDot  = `SELECT 1 FROM dots WHERE ns = ? AND origin = ? AND seq = ?`
	qLogPage = `SELECT k, payload FROM log WHERE k >= ? AND k <= ? ORDER BY k LIMIT ?`
	// ListDocs reads keys in order and skips a document's other fields
	// itself; SQL would need to parse the key to do it.
	qList = `SELECT k FROM fields WHERE k >= ? AND k < ? ORDER BY k`
	// The conflict = 1 term matches the partial index's, so SQLite reads
	// only conflicted rows (TestConflictDocsUsesIndex checks the plan).
	qConflicts = `SELECT k FROM fields INDEXED BY fields_conflicts
		WHERE conflict = 1 AND k >= ? AND k < ? ORDER BY k`
)

// view is a namespace's replica.Storage. It reads through the writer
// connection: the node loop that reads is the one that writes, so the
// connection is idle when it reads, and its cache holds what was just
// written.
type view struct {
	s  *Store
	ns string
}

var _ replica.Storage = (*view)(nil)

// Storage returns the read-only view of one namespace that its replica
// reads through.
func (s *Store) Storage(ns string) replica.Storage { return &view{s, ns} }

func (v *view) Field(k crdt.FieldKey) (*crdt.Field, error) {
	if !keyPartOK(k.NS) || !keyPartOK(k.Coll) || !keyPartOK(k.Doc) || !keyPartOK(k.Field) {
		return nil, nil
	}
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	w, err := v.s.writer()
	if err != nil {
		return nil, err
	}
	if fs, ok := v.s.docs[k.DocKey()]; ok {
		return fs[k.Field], nil
	}
	if err := v.s.reading(w); err != nil {
		return nil, fmt.Errorf("sqlitestore: read field %s: %w", k, err)
	}
	v.s.kbuf = fieldKey(v.s.kbuf[:0], k)
	var f *crdt.Field
	err = w.query(qField1, func(row []driverValue) error {
		b, _ := row[0].([]byte)
		var err error
		f, err = decodeField(b)
		return err
	}, string(v.s.kbuf))
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: read field %s: %w", k, err)
	}
	return f, nil
}

func (v *view) Doc(k crdt.DocKey) (map[string]*crdt.Field, error) {
	lo, hi, ok := docRange(k)
	if !ok {
		return nil, nil
	}
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	w, err := v.s.writer()
	if err != nil {
		return nil, err
	}
	if fs, ok := v.s.docs[k]; ok {
		return fs, nil
	}
	if err := v.s.reading(w); err != nil {
		return nil, fmt.Errorf("sqlitestore: read doc %s: %w", k, err)
	}
	var fs map[string]*crdt.Field
	err = w.query(qDocRows, func(row []driverValue) error {
		key, _ := row[0].(string)
		b, _ := row[1].([]byte)
		return addField(&fs, key[len(lo):], b)
	}, lo, hi)
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: read doc %s: %w", k, err)
	}
	if len(v.s.docs) >= maxCachedDocs {
		clear(v.s.docs)
	}
	v.s.docs[k] = fs
	return fs, nil
}

// maxCachedDocs bounds the documents Storage keeps between two Saves: a
// round of the node loop takes at most a few thousand inputs.
const maxCachedDocs = 4096

func addField(fs *map[string]*crdt.Field, name string, state []byte) error {
	f, err := decodeField(state)
	if err != nil {
		return fmt.Errorf("field %q: %w", name, err)
	}
	if *fs == nil {
		*fs = map[string]*crdt.Field{}
	}
	(*fs)[name] = f
	return nil
}

func (v *view) HasDot(d crdt.Dot) (bool, error) {
	if d.Seq > math.MaxInt64 {
		return false, nil // never stored: Save refuses it
	}
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	w, err := v.s.writer()
	if err != nil {
		return false, err
	}
	found := false
	hit := func([]driverValue) error { found = true; return nil }
	// A region's own change is recorded by its log row alone.
	if sid, ok, _ := v.s.sid(w, v.ns, d.Replica, false); ok && d.Seq <= maxRSeq {
		if err := w.query(qOwnDot, hit, logKey(sid, d.Seq)); err != nil {
			return false, fmt.Errorf("sqlitestore: look up dot: %w", err)
		}
		if found {
			return true, nil
		}
	}
	if err := w.query(qHasDot, hit, v.ns, d.Replica[:], int64(d.Seq)); err != nil {
		return false, fmt.Errorf("sqlitestore: look up dot: %w", err)
	}
	return found, nil
}

func (v *view) Log(region crdt.ReplicaID, from uint64, limit int) ([]crdt.Change, error) {
	if limit <= 0 || from > maxRSeq {
		return nil, nil
	}
	from = max(from, 1)
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	w, err := v.s.writer()
	if err != nil {
		return nil, err
	}
	sid, ok, _ := v.s.sid(w, v.ns, region, false)
	if !ok {
		return nil, nil
	}
	out := make([]crdt.Change, 0, min(limit, 1024))
	err = w.query(qLogPage, func(row []driverValue) error {
		k, _ := row[0].(int64)
		b, _ := row[1].([]byte)
		rseq := uint64(k & maxRSeq)
		c, err := decodeChange(b, v.ns)
		if err != nil {
			return fmt.Errorf("log %s/%d: %w", region, rseq, err)
		}
		c.Region, c.RSeq = region, rseq // the key is authoritative
		out = append(out, c)
		return nil
	}, logKey(sid, from), logKey(sid, maxRSeq), int64(limit))
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: read log: %w", err)
	}
	return out, nil
}

// Outbox returns the namespace's outbox, oldest first (as Load does).
func (v *view) Outbox() ([]crdt.Change, error) {
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	w, err := v.s.writer()
	if err != nil {
		return nil, err
	}
	return v.s.outbox(w, v.ns)
}

// --- reads for the HTTP API, on the read pool ---

func (s *Store) prepareReads(ctx context.Context) error {
	var err error
	if s.rdoc, err = s.r.PrepareContext(ctx, qDocRows); err != nil {
		return err
	}
	if s.rlist, err = s.r.PrepareContext(ctx, qList); err != nil {
		return err
	}
	s.rconf, err = s.r.PrepareContext(ctx, qConflicts)
	return err
}

// GetDoc returns every persisted field of a document (nil if it has
// none). It reads on the read pool and never waits for the writer.
func (s *Store) GetDoc(ctx context.Context, k crdt.DocKey) (map[string]*crdt.Field, error) {
	lo, hi, ok := docRange(k)
	if !ok {
		return nil, nil
	}
	rows, err := s.rdoc.QueryContext(ctx, lo, hi)
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: read doc %s: %w", k, err)
	}
	defer rows.Close()
	var fs map[string]*crdt.Field
	for rows.Next() {
		var key string
		var b []byte // a copy: decoded values alias it
		if err := rows.Scan(&key, &b); err != nil {
			return nil, fmt.Errorf("sqlitestore: read doc %s: %w", k, err)
		}
		if err := addField(&fs, key[len(lo):], b); err != nil {
			return nil, fmt.Errorf("sqlitestore: read doc %s: %w", k, err)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlitestore: read doc %s: %w", k, err)
	}
	return fs, nil
}

// ListDocs returns up to limit document ids of a collection after the id
// after, in id order. Deleted documents are listed too (their state says
// so); callers render and filter.
func (s *Store) ListDocs(ctx context.Context, ns, coll, after string, limit int) ([]string, error) {
	if limit <= 0 || !keyPartOK(ns) || !keyPartOK(coll) {
		return nil, nil
	}
	p := ns + " " + coll
	lo := p + " "
	if after != "" {
		lo = p + " " + after + "!" // past every field of after
	}
	var ids []string
	err := s.scanDocs(ctx, s.rlist, lo, p+"!", func(key string) bool {
		doc, _, _ := strings.Cut(key[len(p)+1:], " ")
		if n := len(ids); n == 0 || ids[n-1] != doc {
			ids = append(ids, doc)
		}
		return len(ids) < limit
	})
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: list %s/%s: %w", ns, coll, err)
	}
	return ids, nil
}

// ConflictDocs returns up to limit documents of a namespace that have a
// field with more than one register sibling, in (collection, id) order,
// after the cursor after ("coll/doc", as the last answer's last key; ""
// for the start).
func (s *Store) ConflictDocs(ctx context.Context, ns, after string, limit int) ([]crdt.DocKey, error) {
	if limit <= 0 || !keyPartOK(ns) {
		return nil, nil
	}
	lo := ns + " "
	if acoll, adoc, _ := strings.Cut(after, "/"); after != "" {
		lo = ns + " " + acoll + " "
		if adoc != "" {
			lo += adoc + "!"
		}
	}
	var out []crdt.DocKey
	err := s.scanDocs(ctx, s.rconf, lo, ns+"!", func(key string) bool {
		coll, doc, _, ok := splitFieldKey(key[len(ns)+1:])
		if !ok {
			return true
		}
		k := crdt.DocKey{NS: ns, Coll: coll, Doc: doc}
		if n := len(out); n == 0 || out[n-1] != k {
			out = append(out, k)
		}
		return len(out) < limit
	})
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: conflicts in %s: %w", ns, err)
	}
	return out, nil
}

// scanDocs calls fn with each key of [lo, hi) in order until fn says stop.
// One document's fields are adjacent, so callers dedupe by comparing with
// the last document they kept.
func (s *Store) scanDocs(ctx context.Context, q *sql.Stmt, lo, hi string, fn func(key string) bool) error {
	rows, err := q.QueryContext(ctx, lo, hi)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var key string
		if err := rows.Scan(&key); err != nil {
			return err
		}
		if !fn(key) {
			return nil
		}
	}
	return rows.Err()
}

// qFieldsJSON reads the fields whose keys are listed in a JSON array,
// bound as one text: binding a key costs the driver an allocation and a
// copy. Reading 1,000 absent keys from 300,000 rows took 1.85 ms bound 32
// to a statement (the last chunk padded), 0.86 ms as this join. CROSS
// JOIN keeps json_each the outer loop, so each key is one seek of the
// primary key.
const qFieldsJSON = `SELECT f.k, f.state FROM json_each(?) AS j CROSS JOIN fields AS f ON f.k = j.value`

var _ replica.FieldBatcher = (*view)(nil)

// Fields reads many fields with one statement: a batch of remote changes
// touches a thousand fields, and a statement's fixed cost is most of a
// point read's. A document the batch touches in many fields (a write of
// a whole document, replicated) is read as one range of keys instead:
// one seek for all its fields rather than one each, and when the
// document is new, as it is for most of a catch-up, that seek finds
// nothing. The range read stops after a few times as many rows as asked
// for, so a document with many more fields than the batch touches is
// read key by key instead.
func (v *view) Fields(keys []crdt.FieldKey) (map[crdt.FieldKey]*crdt.Field, error) {
	// Sized as things are found: in a catch-up most keys are not.
	out := map[crdt.FieldKey]*crdt.Field{}
	byKey := make(map[string]crdt.FieldKey, len(keys))
	list := []byte{'['} // the keys read one by one, as a JSON array
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	w, err := v.s.writer()
	if err != nil {
		return nil, err
	}
	found := func(row []driverValue) error {
		k, _ := row[0].(string)
		fk, ok := byKey[k]
		if !ok {
			return nil // a field of the document the batch does not touch
		}
		b, _ := row[1].([]byte)
		f, err := decodeField(b)
		if err != nil {
			return fmt.Errorf("field %q: %w", k, err)
		}
		out[fk] = f
		return nil
	}
	// A batch lists a document's changes together, so runs of keys of
	// one document are what a range read serves; a document that comes
	// back later in the batch starts a run of its own.
	var run []string
	var runDoc crdt.DocKey
	endRun := func() error {
		if len(run) >= docRangeMin {
			whole, err := v.docFields(w, runDoc, len(run), found)
			if err != nil || whole {
				run = run[:0]
				return err
			}
		}
		for _, ks := range run {
			if len(list) > 1 {
				list = append(list, ',')
			}
			list = appendJSONString(list, ks)
		}
		run = run[:0]
		return nil
	}
	for _, k := range keys {
		if !keyPartOK(k.NS) || !keyPartOK(k.Coll) || !keyPartOK(k.Doc) || !keyPartOK(k.Field) {
			continue
		}
		ks := string(fieldKey(nil, k))
		if _, dup := byKey[ks]; dup {
			continue
		}
		byKey[ks] = k
		if dk := k.DocKey(); len(run) == 0 || dk != runDoc {
			if err := endRun(); err != nil {
				return nil, fmt.Errorf("sqlitestore: read fields: %w", err)
			}
			runDoc = dk
		}
		run = append(run, ks)
	}
	if err := endRun(); err != nil {
		return nil, fmt.Errorf("sqlitestore: read fields: %w", err)
	}
	if len(list) > 1 {
		if err := w.query(qFieldsJSON, found, string(append(list, ']'))); err != nil {
			return nil, fmt.Errorf("sqlitestore: read fields: %w", err)
		}
	}
	return out, nil
}

// appendJSONString appends s as a JSON string. A key part holds no space
// or control character (keyPartOK), so a quote and a backslash are all
// that need escaping; other bytes, UTF-8 or not, pass through as the
// bytes json_each hands back.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '"' || c == '\\' {
			b = append(b, '\\', c)
		} else {
			b = append(b, c)
		}
	}
	return append(b, '"')
}

// docRangeMin is how many of a document's fields a batch must touch for
// Fields to read the document's key range rather than each key.
const docRangeMin = 8

const qDocFieldsRange = `SELECT k, state FROM fields WHERE k >= ? AND k < ? ORDER BY k LIMIT ?`

// docFields reads the fields of a document in one range, handing each
// row to found; whole is false, and nothing is handed over, if the
// document has more than a few times as many fields as the asked ones.
func (v *view) docFields(w *wconn, doc crdt.DocKey, asked int, found func([]driverValue) error) (whole bool, err error) {
	lo, hi, ok := docRange(doc)
	if !ok {
		return true, nil
	}
	limit := 4 * asked
	var rows [][]driverValue
	err = w.query(qDocFieldsRange, func(row []driverValue) error {
		rows = append(rows, []driverValue{row[0], row[1]})
		return nil
	}, lo, hi, int64(limit))
	if err != nil || len(rows) >= limit {
		return false, err
	}
	for _, row := range rows {
		if err := found(row); err != nil {
			return false, err
		}
	}
	return true, nil
}
