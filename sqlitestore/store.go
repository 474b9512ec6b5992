// Package sqlitestore is the durable store of one node (a region, or a
// device running the Go SDK): the change log, the materialised field
// states, each namespace's vector, sequence and clock high-water mark, a
// device's outbox, and the node's replica id, in one SQLite file
// (modernc.org/sqlite, no cgo).
//
// The node loop saves every round of Readys with one Save, one transaction:
// a crash leaves either all of a round or none of it. Replicas read the
// few fields a step touches through Storage(ns); HTTP reads (GetDoc,
// ListDocs, ConflictDocs) go through a separate pool of read-only
// connections, so in WAL mode they never wait behind the writer. The WAL
// is checkpointed by a goroutine of the store's own, not inside a commit
// (checkpoint.go). One Store
// per database file: it caches what it wrote.
//
// Layout (schema version 2, PRAGMA user_version; keys.go and state.go say
// why it is shaped so):
//
//	replica  (id)                        the node's replica id, made once
//	ns_state (ns, vector, seq, hlc)      per namespace: replica.State, except
//	                                     what the node's own log stream implies
//	streams  (ns, region, sid)           one log stream per (namespace, region)
//	log      (k = sid<<41|rseq, own, payload)  stamped changes, in region order
//	dots     (ns, origin, seq)           dots held that the log does not imply
//	fields   (k = "ns coll doc field", conflict, state)  one row per field state
//	outbox   (ns, origin, seq, payload)  a device's unacknowledged changes
//	follows  (ns, colls)                 the collections a device follows (follow.go)
//
// A change a region stamped itself has dot == region stamp, so its log row
// ("own") is its dot record as well and no dots row is written for it:
// that is most changes. Any compaction of the log must keep those dots
// (move them to dots, or keep a per-origin floor).
//
// The conflict inbox is a partial index on fields (conflict = 1): SQLite
// maintains it in the statement that writes the field, so it costs a write
// only when a field enters or leaves conflict, and ConflictDocs reads only
// conflicted rows.
//
// Field states, changes and vectors are stored in a compact versioned
// binary encoding (codec.go).
package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/google/uuid"

	"github.com/syncd/syncd/crdt"
)

// Errors callers tell apart.
var (
	ErrClosed     = errors.New("sqlitestore: store is closed")
	ErrNewerStore = errors.New("sqlitestore: database was written by a newer syncd")
	// ErrBroken: a transaction could not be rolled back, so the writer
	// connection's state is unknown; reopen the store.
	ErrBroken = errors.New("sqlitestore: writer connection broken")
)

// Options configure a store.
type Options struct {
	// Durability is "normal" (the default: synchronous=NORMAL, a commit
	// survives a process crash, and power loss may lose the last commits)
	// or "full" (synchronous=FULL: a commit survives power loss; one fsync
	// per transaction).
	Durability string
	// KeepLog stores change payloads so the node can answer sync requests
	// (regions). A device may leave it off: it never serves its log, and
	// keeps only the dots that recognise changes it already holds.
	KeepLog bool
	// ReadConns bounds the read pool (default max(4, GOMAXPROCS)).
	ReadConns int
	// CacheMiB is SQLite's page cache of the writer, in MiB (default 32);
	// each reader gets a quarter of it.
	CacheMiB int
}

// Store is a node's SQLite store. Its methods are safe for concurrent use.
type Store struct {
	path string
	opts Options
	id   crdt.ReplicaID

	// mu serialises the writer connection: Save, Load and the replicas'
	// Storage reads. The node loop is its only regular user, so it is
	// uncontended; it exists so that a misuse is slow rather than corrupt.
	mu     sync.Mutex
	w      *wconn
	broken error
	buf    []byte // encoding scratch; the driver copies blobs when binding
	kbuf   []byte // key scratch

	blog, bdots, bfields *rowBatch

	// streams maps (namespace, region) to the sid of its log stream;
	// pending holds those the open transaction created, merged on commit
	// and dropped on rollback. Under mu.
	streams map[streamKey]int64
	pending map[streamKey]int64
	nextSID int64 // the next sid to give, counting pending ones

	// states caches each namespace's persisted State, as Load derives it;
	// pendStates holds what the open transaction will make it. Under mu.
	// (See state.go: the cache is what lets a write skip the state row.)
	states     map[string]*nsState
	pendStates map[string]*nsState
	inTx       bool
	rtx        bool // a deferred transaction for Storage reads is open (save.go: reading)

	// docs holds the documents read through Storage since the last Save,
	// by key: a node writing a document reads it whole once (to answer
	// with it) and the fields its write touches come from the same read.
	// Nothing but Save changes what a Storage read sees, so Save drops
	// them. Under mu.
	docs map[crdt.DocKey]map[string]*crdt.Field

	// fail, if set, is called at points inside Save; a test returns an
	// error from it to fail a transaction half way.
	fail func(step string) error

	ckpt *checkpointer // copies the WAL back in the background

	r     *sql.DB // read pool, query_only
	rdoc  *sql.Stmt
	rlist *sql.Stmt
	rconf *sql.Stmt
}

// schemaVersion is this release's PRAGMA user_version.
const schemaVersion = 2

// migrations[i] brings user_version i to i+1.
var migrations = []string{
	`CREATE TABLE replica (
		one INTEGER PRIMARY KEY CHECK (one = 1),
		id  BLOB NOT NULL CHECK (length(id) = 16)
	);
	CREATE TABLE ns_state (
		ns     TEXT PRIMARY KEY,
		vector BLOB NOT NULL,
		seq    INTEGER NOT NULL CHECK (seq >= 0),
		hlc    TEXT NOT NULL -- hlc.Timestamp.String(): 16 hex digits, text order is time order
	) WITHOUT ROWID;
	-- A stream is one region's log within one namespace.
	CREATE TABLE streams (
		ns     TEXT NOT NULL,
		region BLOB NOT NULL CHECK (length(region) = 16),
		sid    INTEGER NOT NULL UNIQUE CHECK (sid > 0),
		PRIMARY KEY (ns, region)
	) WITHOUT ROWID;
	CREATE TABLE log (
		k       INTEGER PRIMARY KEY, -- sid << 41 | rseq
		own     INTEGER NOT NULL,    -- 1: the change's dot is (region, rseq), no dots row
		payload BLOB NOT NULL
	);
	CREATE TABLE dots (
		ns     TEXT NOT NULL,
		origin BLOB NOT NULL CHECK (length(origin) = 16),
		seq    INTEGER NOT NULL CHECK (seq > 0),
		PRIMARY KEY (ns, origin, seq)
	) WITHOUT ROWID;
	CREATE TABLE fields (
		k        TEXT PRIMARY KEY,  -- 'ns coll doc field'; field is '' for the document record
		conflict INTEGER NOT NULL,  -- 1: more than one register sibling
		state    BLOB NOT NULL
	) WITHOUT ROWID;
	CREATE INDEX fields_conflicts ON fields (k) WHERE conflict = 1;
	CREATE TABLE outbox (
		ns      TEXT NOT NULL,
		origin  BLOB NOT NULL CHECK (length(origin) = 16),
		seq     INTEGER NOT NULL CHECK (seq > 0),
		payload BLOB NOT NULL,
		PRIMARY KEY (ns, origin, seq)
	) WITHOUT ROWID;`,
	`CREATE TABLE follows (
		ns    TEXT PRIMARY KEY,
		colls TEXT NOT NULL -- sorted names, comma-separated; '' is every collection
	) WITHOUT ROWID;`,
}

func (o *Options) pragmas() ([]string, []string, error) {
	sync := "NORMAL"
	switch strings.ToLower(o.Durability) {
	case "", "normal":
	case "full":
		sync = "FULL"
	default:
		return nil, nil, fmt.Errorf("sqlitestore: durability %q: want normal or full", o.Durability)
	}
	cache := o.CacheMiB
	if cache <= 0 {
		cache = 32
	}
	w := []string{
		"busy_timeout(10000)",
		"journal_mode(WAL)",
		"synchronous(" + sync + ")",
		fmt.Sprintf("cache_size(%d)", -cache*1024),
		"temp_store(MEMORY)",
		fmt.Sprintf("wal_autocheckpoint(%d)", walBackstop), // checkpoint.go
	}
	r := []string{
		"busy_timeout(10000)",
		fmt.Sprintf("cache_size(%d)", -max(cache/4, 2)*1024),
		"temp_store(MEMORY)",
	}
	return w, r, nil
}

// WriterPragmas returns the pragmas the store's writer connection runs
// with, as `_pragma` values of a modernc.org/sqlite DSN: baselines use
// them to measure plain SQLite under the same settings. All but the
// raised checkpoint threshold: that is a backstop behind the store's
// background checkpointer (checkpoint.go), and plain SQLite without one
// checkpoints at its own default; with the backstop alone its WAL would
// grow to 40 MB and slow it, flattering every ratio against it.
func WriterPragmas(durability string) ([]string, error) {
	w, _, err := (&Options{Durability: durability}).pragmas()
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(w, func(p string) bool { return strings.HasPrefix(p, "wal_autocheckpoint(") }), nil
}

// Open opens (creating it if need be) the store at path: WAL mode, the
// schema migrated to this release's version, and a replica id made on
// first open and kept for good.
func Open(ctx context.Context, path string, opts Options) (*Store, error) {
	wp, rp, err := opts.pragmas()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("sqlitestore: create directory: %w", err)
	}
	w, err := openConn(dsn(path, wp))
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: open %s: %w", path, err)
	}
	s := &Store{path: path, opts: opts, w: w, docs: map[crdt.DocKey]map[string]*crdt.Field{}}
	s.blog, s.bdots, s.bfields = newBatches()
	if err := s.init(ctx); err != nil {
		w.close()
		return nil, fmt.Errorf("sqlitestore: open %s: %w", path, err)
	}
	if s.ckpt, err = startCheckpointer(dsn(path, wp)); err != nil {
		w.close()
		return nil, fmt.Errorf("sqlitestore: open %s: %w", path, err)
	}
	n := opts.ReadConns
	if n <= 0 {
		n = max(4, runtime.GOMAXPROCS(0))
	}
	s.r, err = sql.Open("sqlite", dsn(path, rp, "_query_only=1"))
	if err == nil {
		s.r.SetMaxOpenConns(n)
		s.r.SetMaxIdleConns(n)
		err = s.prepareReads(ctx)
	}
	if err != nil {
		if s.r != nil {
			s.r.Close()
		}
		s.ckpt.close()
		w.close()
		return nil, fmt.Errorf("sqlitestore: open read pool on %s: %w", path, err)
	}
	return s, nil
}

// init checks WAL took, migrates and reads (or makes) the replica id, in
// one immediate transaction so two processes opening one new file cannot
// both make an id.
func (s *Store) init(ctx context.Context) error {
	var mode string
	if err := s.w.query("PRAGMA journal_mode", func(row []driverValue) error {
		mode, _ = row[0].(string)
		return nil
	}); err != nil {
		return fmt.Errorf("read journal mode: %w", err)
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("journal mode is %q, WAL did not take", mode)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := s.w.exec("BEGIN IMMEDIATE"); err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	err := s.migrate()
	if err == nil {
		err = s.w.exec("COMMIT")
	}
	if err != nil {
		_ = s.w.exec("ROLLBACK")
		return err
	}
	return nil
}

func (s *Store) migrate() error {
	var v int64
	if err := s.w.query("PRAGMA user_version", func(row []driverValue) error {
		v, _ = row[0].(int64)
		return nil
	}); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if v > schemaVersion {
		return fmt.Errorf("%w: schema version %d, this release knows up to %d", ErrNewerStore, v, schemaVersion)
	}
	for ; v < schemaVersion; v++ {
		// Migrations are several statements, so they go through Exec
		// without the statement cache.
		if _, err := s.w.c.(execer).ExecContext(context.Background(), migrations[v], nil); err != nil {
			return fmt.Errorf("migrate schema %d to %d: %w", v, v+1, err)
		}
		if _, err := s.w.c.(execer).ExecContext(context.Background(), fmt.Sprintf("PRAGMA user_version = %d", v+1), nil); err != nil {
			return fmt.Errorf("set schema version %d: %w", v+1, err)
		}
	}
	var id []byte
	if err := s.w.query("SELECT id FROM replica WHERE one = 1", func(row []driverValue) error {
		id, _ = row[0].([]byte)
		return nil
	}); err != nil {
		return fmt.Errorf("read replica id: %w", err)
	}
	if id == nil {
		u := uuid.New()
		if err := s.w.exec("INSERT INTO replica (one, id) VALUES (1, ?)", u[:]); err != nil {
			return fmt.Errorf("make replica id: %w", err)
		}
		id = u[:]
	}
	u, err := uuid.FromBytes(id)
	if err != nil {
		return fmt.Errorf("%w: replica id: %v", ErrCorrupt, err)
	}
	s.id = u
	s.streams, s.pending, s.nextSID = map[streamKey]int64{}, map[streamKey]int64{}, 1
	s.states, s.pendStates = map[string]*nsState{}, map[string]*nsState{}
	return s.w.query("SELECT ns, region, sid FROM streams", func(row []driverValue) error {
		ns, _ := row[0].(string)
		b, _ := row[1].([]byte)
		sid, _ := row[2].(int64)
		r, err := uuid.FromBytes(b)
		if err != nil || sid <= 0 || sid > maxSID {
			return fmt.Errorf("%w: stream %q/%x/%d", ErrCorrupt, ns, b, sid)
		}
		s.streams[streamKey{ns, r}] = sid
		s.nextSID = max(s.nextSID, sid+1)
		return nil
	})
}

// sid returns the stream id of (ns, region); with create, it makes one in
// the open transaction if there is none. Caller holds mu.
func (s *Store) sid(w *wconn, ns string, region crdt.ReplicaID, create bool) (int64, bool, error) {
	k := streamKey{ns, region}
	if sid, ok := s.streams[k]; ok {
		return sid, true, nil
	}
	if sid, ok := s.pending[k]; ok {
		return sid, true, nil
	}
	if !create {
		return 0, false, nil
	}
	if s.nextSID > maxSID {
		return 0, false, fmt.Errorf("sqlitestore: more than %d (namespace, region) log streams", maxSID)
	}
	sid := s.nextSID
	if err := w.exec("INSERT INTO streams (ns, region, sid) VALUES (?, ?, ?)", ns, region[:], sid); err != nil {
		return 0, false, fmt.Errorf("new log stream: %w", err)
	}
	s.nextSID++
	s.pending[k] = sid
	return sid, true, nil
}

// endTx settles the streams and states the transaction made.
func (s *Store) endTx(committed bool) {
	for k, sid := range s.pending {
		if committed {
			s.streams[k] = sid
		} else {
			s.nextSID = min(s.nextSID, sid)
		}
	}
	clear(s.pending)
	if committed {
		for ns, st := range s.pendStates {
			if st == nil {
				delete(s.states, ns)
			} else {
				s.states[ns] = st
			}
		}
	}
	clear(s.pendStates)
}

// ReplicaID returns the node's replica id, the same on every open.
func (s *Store) ReplicaID() crdt.ReplicaID { return s.id }

// Path returns the database file's path.
func (s *Store) Path() string { return s.path }

// Close closes the read pool, then the writer, whose close checkpoints the
// WAL into the database file.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.w == nil {
		return nil
	}
	var errs []error
	for _, st := range []*sql.Stmt{s.rdoc, s.rlist, s.rconf} {
		if st != nil {
			errs = append(errs, st.Close())
		}
	}
	errs = append(errs, s.r.Close(), s.ckpt.close())
	_ = s.w.exec("PRAGMA optimize") // advisory: refreshes planner statistics
	errs = append(errs, s.w.close())
	s.w = nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sqlitestore: close: %w", err)
	}
	return nil
}

// writer returns the writer connection; the caller holds s.mu.
func (s *Store) writer() (*wconn, error) {
	if s.w == nil {
		return nil, ErrClosed
	}
	if s.broken != nil {
		return nil, s.broken
	}
	return s.w, nil
}

// Namespaces lists the namespaces with persisted state, in name order.
func (s *Store) Namespaces(ctx context.Context) ([]string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w, err := s.writer()
	if err != nil {
		return nil, err
	}
	var out []string
	if err := w.query("SELECT ns FROM ns_state ORDER BY ns", func(row []driverValue) error {
		ns, _ := row[0].(string)
		out = append(out, ns)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("sqlitestore: list namespaces: %w", err)
	}
	return out, nil
}

func (s *Store) outbox(w *wconn, ns string) ([]crdt.Change, error) {
	var out []crdt.Change
	err := w.query("SELECT payload FROM outbox WHERE ns = ? ORDER BY origin, seq", func(row []driverValue) error {
		b, _ := row[0].([]byte)
		c, err := decodeChange(b, ns)
		if err != nil {
			return err
		}
		out = append(out, c)
		return nil
	}, ns)
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: load %s outbox: %w", ns, err)
	}
	return out, nil
}
