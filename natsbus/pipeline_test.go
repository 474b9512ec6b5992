package natsbus

import (
	"testing"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/replica"
)

// page is the catch-up page a peer sends in answer to a request from v:
// the next n changes of region r.
func page(from crdt.ReplicaID, v crdt.Vector, r crdt.ReplicaID, n uint64, more bool) replica.Message {
	return replica.Message{Type: replica.MsgBatch, NS: "ns", From: from, Sync: true, More: more,
		Base: crdt.Vector{r: v[r]}, Head: crdt.Vector{r: v[r] + n}}
}

func request(to crdt.ReplicaID, v crdt.Vector) replica.Message {
	return replica.Message{Type: replica.MsgSyncReq, NS: "ns", To: to, Vector: v.Clone(), Limit: 10}
}

// TestPipelineAsksAhead follows a catch-up: each page that says more
// follow asks for the next at once, up to pipelineDepth pages ahead of
// what the replica has stored; the replica's own requests for pages
// already asked are dropped, and one it makes that was not anticipated
// goes out.
func TestPipelineAsksAhead(t *testing.T) {
	peer, r := ids[0], ids[1]
	var p pipeline
	v := crdt.Vector{r: 0}
	if send, also := p.forward(request(peer, v)); !send || also != nil {
		t.Fatalf("first request: send %v, also %v; want it sent alone", send, also)
	}
	// Pages arrive faster than the replica stores them.
	var asked []crdt.Vector
	for i := 0; i < pipelineDepth; i++ {
		req, ok := p.next(page(peer, v, r, 10, true))
		if !ok {
			t.Fatalf("page %d: no request ahead", i+1)
		}
		v = crdt.Vector{r: v[r] + 10}
		if !sameVector(req.Vector, v) || req.To != peer || req.Limit != 10 || req.Type != replica.MsgSyncReq {
			t.Fatalf("page %d: asked %+v, want a request from %v", i+1, req, v)
		}
		asked = append(asked, v)
	}
	if req, ok := p.next(page(peer, v, r, 10, true)); ok {
		t.Fatalf("asked %v beyond the depth", req.Vector)
	}
	// The replica stores the first page and asks for the second: already
	// asked, so dropped, and the held-back request goes out instead.
	send, also := p.forward(request(peer, asked[0]))
	if send || also == nil || !sameVector(also.Vector, crdt.Vector{r: v[r] + 10}) {
		t.Fatalf("replica's request after its first page: send %v, also %v", send, also)
	}
	// The last page says nothing more follows: no request.
	if req, ok := p.next(page(peer, crdt.Vector{r: v[r] + 10}, r, 5, false)); ok {
		t.Fatalf("asked %v after the last page", req.Vector)
	}
	// A page answering an older request asks for nothing.
	if req, ok := p.next(page(peer, crdt.Vector{r: 0}, r, 10, true)); ok {
		t.Fatalf("asked %v after a stale page", req.Vector)
	}
	// A request the pipeline did not anticipate goes out and starts over.
	odd := crdt.Vector{r: 3}
	if send, also := p.forward(request(peer, odd)); !send || also != nil {
		t.Fatalf("unanticipated request: send %v, also %v; want it sent alone", send, also)
	}
	if send, _ := p.forward(request(peer, asked[1])); !send {
		t.Fatal("a request anticipated before the restart was dropped")
	}
}
