package clientsdk

import (
	"testing"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/replica"
)

// TestLinkCountsOnlyItsOwnAnswers: Sync waits for the caught-up marker
// answering its probe. A marker answering a request of an earlier
// connection (the region hands a device's messages to its newest one),
// an earlier request of this one, or a page with more to come must not
// end the wait.
func TestLinkCountsOnlyItsOwnAnswers(t *testing.T) {
	stopped := false
	l := newLink(1000, func() { stopped = true }, crdt.Vector{}, replica.Message{Type: replica.MsgSyncReq})
	probe, err := l.probe(crdt.Vector{})
	if err != nil || probe != 1001 {
		t.Fatalf("probe = %d, %v; want request 1001 (the hello is 1000)", probe, err)
	}
	if m := <-l.out; m.Req != probe {
		t.Fatalf("the probe went out numbered %d, want %d", m.Req, probe)
	}
	marker := func(req uint64) replica.Message { return replica.Message{Type: replica.MsgBatch, Sync: true, Req: req} }
	for _, m := range []replica.Message{
		marker(7),    // an earlier connection's
		marker(0),    // unnumbered
		marker(1000), // the hello's
		marker(5000), // never asked
		{Type: replica.MsgBatch, Sync: true, More: true, Req: 1001}, // the probe's, more to come
		{Type: replica.MsgBatch, Req: 1001},                         // not a sync page
	} {
		l.answered(m)
		if got := l.caughtUp(); got >= probe {
			t.Fatalf("after %+v: caughtUp = %d, Sync would return before its probe is answered", m, got)
		}
	}
	// The replica asks for the next page; its answer without more ends it.
	if n, ok := l.send(replica.Message{Type: replica.MsgSyncReq}); !ok || n != 1002 {
		t.Fatalf("next request numbered %d, %v; want 1002", n, ok)
	}
	if n, ok := l.send(replica.Message{Type: replica.MsgPush}); !ok || n != 0 {
		t.Fatalf("a push was numbered %d, %v", n, ok)
	}
	l.answered(marker(1002))
	if got := l.caughtUp(); got != 1002 {
		t.Fatalf("caughtUp = %d after the marker answering 1002", got)
	}
	if stopped {
		t.Fatal("link stopped")
	}
}
