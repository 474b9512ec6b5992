package sqlitestore

import (
	"fmt"
	"strings"

	"github.com/syncd/syncd/crdt"
)

// Keys. Both hot tables have one-column keys, because BenchmarkApply
// showed SQLite's multi-column record comparisons to cost more than the
// rest of a row's write:
//
//   - fields.k is "ns coll doc field". Names never hold a space (crdt's
//     name rules) and every allowed character sorts above it, so the text
//     order of keys is the order of (ns, coll, doc, field), and a
//     document's fields are the range ["ns coll doc ", "ns coll doc!").
//   - log.k is sid<<41 | rseq, sid naming the stream (namespace, region).
//     An integer key makes appends to a stream cheap (rowid b-tree, no
//     record comparison), which is most of what the log does.

const (
	rseqBits = 41
	// maxRSeq bounds a region's sequence numbers within one namespace:
	// 2.2e12, seventy years at a thousand writes a second.
	maxRSeq = 1<<rseqBits - 1
	// maxSID bounds the number of (namespace, region) streams: 4 million.
	maxSID = 1<<(63-rseqBits) - 1
)

func logKey(sid int64, rseq uint64) int64 { return sid<<rseqBits | int64(rseq) }

type streamKey struct {
	ns     string
	region crdt.ReplicaID
}

// keyPartOK reports whether s can be part of a fields key: stored names
// were validated by crdt's rules, so a part with a space or a control
// character names nothing (and must not be allowed to alias a real key).
func keyPartOK(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' {
			return false
		}
	}
	return true
}

// fieldKey appends k's fields key to b.
func fieldKey(b []byte, k crdt.FieldKey) []byte {
	b = append(b, k.NS...)
	b = append(b, ' ')
	b = append(b, k.Coll...)
	b = append(b, ' ')
	b = append(b, k.Doc...)
	b = append(b, ' ')
	return append(b, k.Field...)
}

// docRange returns the key range [lo, hi) of a document's fields; ok is
// false if the key cannot exist.
func docRange(k crdt.DocKey) (lo, hi string, ok bool) {
	if !keyPartOK(k.NS) || !keyPartOK(k.Coll) || !keyPartOK(k.Doc) {
		return "", "", false
	}
	p := k.NS + " " + k.Coll + " " + k.Doc
	return p + " ", p + "!", true
}

// checkFieldKey refuses a key Save must not store: one that would break
// the key order or alias another.
func checkFieldKey(k crdt.FieldKey) error {
	if err := crdt.ValidateName(k.Coll); err != nil {
		return fmt.Errorf("collection: %w", err)
	}
	if err := crdt.ValidateDocID(k.Doc); err != nil {
		return err
	}
	if k.Field != "" {
		return crdt.ValidateField(k.Field)
	}
	return nil
}

// splitFieldKey parses "ns coll doc field" (the namespace already
// stripped: "coll doc field").
func splitFieldKey(rest string) (coll, doc, field string, ok bool) {
	coll, rest, ok1 := strings.Cut(rest, " ")
	doc, field, ok2 := strings.Cut(rest, " ")
	return coll, doc, field, ok1 && ok2
}
