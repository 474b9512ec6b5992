package server

import (
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/replica"
)

// TestSharedFrames: a fan-out handed to many sessions is encoded once per
// collection filter, each filter sees only its collections, and the next
// fan-out is never mistaken for the last one.
func TestSharedFrames(t *testing.T) {
	region := uuid.New()
	fan := func(colls ...string) replica.Message {
		m := replica.Message{Type: replica.MsgBatch, NS: "shop", From: region,
			Base: crdt.Vector{region: 0}, Head: crdt.Vector{region: uint64(len(colls))}}
		for i, c := range colls {
			m.Changes = append(m.Changes, crdt.Change{Region: region, RSeq: uint64(i + 1), NS: "shop", Coll: c, Doc: "d"})
		}
		return m
	}
	var c sharedCache
	m := fan("carts", "chat", "_schema")
	all, all2 := c.frame(m, "", nil), c.frame(m, "", nil)
	carts := c.frame(m, "carts", []string{"carts"})
	if all != all2 {
		t.Fatal("the same fan-out for the same filter must share one frame")
	}
	if carts == all {
		t.Fatal("a filtered session must not share the unfiltered frame")
	}
	b, err := carts.bytes()
	if err != nil {
		t.Fatal(err)
	}
	if s := string(b); strings.Contains(s, `"chat"`) || !strings.Contains(s, `"carts"`) || !strings.Contains(s, `"_schema"`) ||
		!strings.Contains(s, `"head":{"`+region.String()+`":3}`) {
		t.Fatalf("filtered frame: %s", s)
	}
	if b, _ := all.bytes(); !strings.Contains(string(b), `"chat"`) {
		t.Fatalf("unfiltered frame lost a change: %s", b)
	}

	// The next fan-out, even of the same shape, is a new frame.
	next := fan("carts", "chat", "_schema")
	if c.frame(next, "", nil) == all {
		t.Fatal("a new fan-out reused the previous one's frame")
	}
	// A heartbeat (a vector, no changes) is shared the same way.
	hb := replica.Message{Type: replica.MsgHeartbeat, NS: "shop", From: region, Vector: crdt.Vector{region: 3}}
	if c.frame(hb, "", nil) != c.frame(hb, "", nil) {
		t.Fatal("heartbeat frames not shared")
	}
	// A message with nothing to recognise it by is never shared.
	bare := replica.Message{Type: replica.MsgHeartbeat, NS: "shop", From: region}
	if c.frame(bare, "", nil) == c.frame(bare, "", nil) {
		t.Fatal("two messages without identity shared a frame")
	}
}
