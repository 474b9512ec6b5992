package sqlitestore

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"

	"modernc.org/sqlite"
)

// wconn is one SQLite connection driven through the database/sql/driver
// interfaces directly, with its prepared statements cached by query text.
// The store's writer uses it: database/sql would re-prepare BEGIN and
// COMMIT on every transaction and allocate per call, which is a measurable
// share of a one-row transaction. It is not safe for concurrent use; the
// store serialises access.
type wconn struct {
	c     driver.Conn
	stmts map[string]driver.Stmt
	args  []driver.NamedValue // reused by exec and query
}

var sqliteDriver = &sqlite.Driver{}

type (
	driverValue = driver.Value
	execer      = driver.ExecerContext
)

func openConn(dsn string) (*wconn, error) {
	c, err := sqliteDriver.Open(dsn)
	if err != nil {
		return nil, err
	}
	return &wconn{c: c, stmts: map[string]driver.Stmt{}}, nil
}

func (w *wconn) stmt(q string) (driver.Stmt, error) {
	if s, ok := w.stmts[q]; ok {
		return s, nil
	}
	s, err := w.c.Prepare(q)
	if err != nil {
		return nil, fmt.Errorf("prepare %q: %w", q, err)
	}
	w.stmts[q] = s
	return s, nil
}

func (w *wconn) bind(args []any) []driver.NamedValue {
	w.args = w.args[:0]
	for i, a := range args {
		w.args = append(w.args, driver.NamedValue{Ordinal: i + 1, Value: a})
	}
	return w.args
}

// exec runs a cached statement. The context is the background one on
// purpose: a cancellable context makes the driver start a watcher
// goroutine per statement, and the store checks the caller's context
// between statements instead (statements here are short).
func (w *wconn) exec(q string, args ...any) error {
	s, err := w.stmt(q)
	if err != nil {
		return err
	}
	if _, err := s.(driver.StmtExecContext).ExecContext(context.Background(), w.bind(args)); err != nil {
		return err
	}
	return nil
}

// query runs a cached statement and calls fn for each row. The values
// handed to fn are the driver's: blobs are fresh copies fn may keep.
func (w *wconn) query(q string, fn func(row []driver.Value) error, args ...any) error {
	s, err := w.stmt(q)
	if err != nil {
		return err
	}
	rows, err := s.(driver.StmtQueryContext).QueryContext(context.Background(), w.bind(args))
	if err != nil {
		return err
	}
	dest := make([]driver.Value, len(rows.Columns()))
	for {
		if err := rows.Next(dest); err != nil {
			rows.Close()
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if err := fn(dest); err != nil {
			rows.Close()
			return err
		}
	}
}

func (w *wconn) close() error {
	var errs []error
	for _, s := range w.stmts {
		errs = append(errs, s.Close())
	}
	w.stmts = nil
	errs = append(errs, w.c.Close())
	return errors.Join(errs...)
}

// dsn builds a modernc.org/sqlite data source name. The path goes in a
// file: URI, escaped, so that a '?' or '#' in a directory name is a
// character of the path and not the start of the parameters.
func dsn(path string, pragmas []string, extra ...string) string {
	var q []string
	for _, p := range pragmas {
		q = append(q, "_pragma="+url.QueryEscape(p))
	}
	q = append(q, extra...)
	u := (&url.URL{Path: path}).EscapedPath()
	u = strings.ReplaceAll(u, "?", "%3F") // EscapedPath leaves these to the caller
	return "file:" + u + "?" + strings.Join(q, "&")
}

// execNamed runs a cached statement with arguments already in driver form.
func (w *wconn) execNamed(q string, args []driver.NamedValue) error {
	s, err := w.stmt(q)
	if err != nil {
		return err
	}
	_, err = s.(driver.StmtExecContext).ExecContext(context.Background(), args)
	return err
}

// batchRows is how many rows one multi-row INSERT carries. The driver's
// fixed cost per statement (about as much as binding three values) is
// then paid once per batch rather than once per row; BenchmarkApply
// measures the difference.
const batchRows = 32

// rowBatch gathers the rows of one INSERT into multi-row statements. Rows
// of one batch are inserted in the order added, so with an upsert the last
// row of a key wins, as with one statement per row.
type rowBatch struct {
	head, tuple, tail string // "INSERT ... VALUES ", "(?, ?)", " ON CONFLICT ..."
	cols              int
	queries           [batchRows + 1]string // statement text by row count
	args              []driver.NamedValue
	n                 int
	// arena holds the blobs the pending rows refer to; the driver copies
	// them when binding, so it is reused after each flush.
	arena []byte
}

func newRowBatch(head, tuple, tail string) *rowBatch {
	return &rowBatch{head: head, tuple: tuple, tail: tail, cols: strings.Count(tuple, "?")}
}

func (b *rowBatch) query(n int) string {
	if b.queries[n] == "" {
		var sb strings.Builder
		sb.WriteString(b.head)
		for i := range n {
			if i > 0 {
				sb.WriteString(", ")
			}
			sb.WriteString(b.tuple)
		}
		sb.WriteString(b.tail)
		b.queries[n] = sb.String()
	}
	return b.queries[n]
}

// blob copies v into the arena and returns the copy, valid until flush.
func (b *rowBatch) blob(v []byte) []byte {
	start := len(b.arena)
	b.arena = append(b.arena, v...)
	return b.arena[start:len(b.arena):len(b.arena)]
}

func (b *rowBatch) add(w *wconn, vals ...any) error {
	for _, v := range vals {
		b.args = append(b.args, driver.NamedValue{Ordinal: len(b.args) + 1, Value: v})
	}
	b.n++
	if b.n == batchRows {
		return b.flush(w)
	}
	return nil
}

func (b *rowBatch) flush(w *wconn) error {
	if b.n == 0 {
		return nil
	}
	err := w.execNamed(b.query(b.n), b.args)
	clear(b.args)
	b.args, b.n, b.arena = b.args[:0], 0, b.arena[:0]
	return err
}

// reset drops pending rows (after a failed transaction).
func (b *rowBatch) reset() {
	clear(b.args)
	b.args, b.n, b.arena = b.args[:0], 0, b.arena[:0]
}
