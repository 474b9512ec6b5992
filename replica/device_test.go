package replica_test

import (
	"fmt"
	"testing"

	"github.com/google/uuid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/replica"
	"github.com/syncd/syncd/resolver"
)

// regionAndDevice makes a region and a device on one manual clock, with
// the sync page size and retry period given (0: the default).
func regionAndDevice(page, retry int) (region, phone *node) {
	clock := hlc.NewManualClock(1_700_000_000_000)
	mk := func(id byte, role replica.Role) *node {
		st := replica.NewMemStorage()
		r := replica.New(replica.Config{ID: uuid.UUID{id}, NS: "shop", Role: role, Clock: hlc.NewClock(clock.Now, 0),
			Storage: st, PageSize: page, RetryTicks: retry})
		return &node{r, st}
	}
	return mk(1, replica.RoleRegion), mk(0x10, replica.RoleDevice)
}

// writeNote writes one note on n.
func writeNote(t *testing.T, n *node, doc string) {
	t.Helper()
	if _, err := n.r.Write([]resolver.Op{{Coll: "notes", Doc: doc, Field: "text", Op: crdt.OpSet, Value: []byte(`"x"`)}}); err != nil {
		t.Fatal(err)
	}
}

// TestAnswerToARequestMadeOnItsBehalf: the Go SDK's Sync asks a region
// from the device's vector on the device's behalf, outside its replica.
// A page answering it starts where the device stands, so the device
// follows it with the next request, though it did not make the first.
func TestAnswerToARequestMadeOnItsBehalf(t *testing.T) {
	region, phone := regionAndDevice(1, 0)
	note := func(doc string) {
		t.Helper()
		writeNote(t, region, doc)
		region.flush()
	}
	note("n1")
	phone.r.Connect(region.r.ID(), nil)
	for range 3 {
		phone.flush(region)
		region.flush(phone)
	}
	if v := phone.r.Vector(); v[region.r.ID()] != 1 {
		t.Fatalf("phone vector %v after its catch-up, want the region's one change", v)
	}
	note("n2")
	note("n3")
	probe := replica.Message{Type: replica.MsgSyncReq, NS: "shop", From: phone.r.ID(), To: region.r.ID(),
		Vector: phone.r.Vector(), Limit: 1}
	if err := region.r.Step(probe); err != nil {
		t.Fatal(err)
	}
	rd := region.r.Ready()
	region.st.Save(&rd)
	region.r.Advance()
	var page *replica.Message
	for i := range rd.Messages {
		if m := &rd.Messages[i]; m.Type == replica.MsgBatch && m.Sync && m.To == phone.r.ID() {
			page = m
		}
	}
	if page == nil || !page.More {
		t.Fatalf("the region's answer to the probe: %+v, want a page with more after it", page)
	}
	if err := phone.r.Step(*page); err != nil {
		t.Fatal(err)
	}
	rd = phone.r.Ready()
	var next *replica.Message
	for i := range rd.Messages {
		if m := &rd.Messages[i]; m.Type == replica.MsgSyncReq {
			next = m
		}
	}
	if next == nil || next.Vector[region.r.ID()] != 2 {
		t.Fatalf("after the probe's first page the phone asks %+v, want a request from the region's second change", next)
	}
}

// TestPushRetriesWaitForProgress: a device back online with a long outbox
// pushes it all at once, and a busy region works through the pushes one
// at a time, acknowledging each in turn. While acknowledgements keep
// coming, what is not yet acknowledged is still queued, not lost: pushing
// it again only queues it a second time (and a third, at the next retry),
// which slows the region down further.
func TestPushRetriesWaitForProgress(t *testing.T) {
	const writes, page, retry = 2000, 100, 3
	region, phone := regionAndDevice(page, retry)
	for i := range writes {
		writeNote(t, phone, fmt.Sprintf("n%d", i))
	}
	var toRegion []replica.Message
	pushed := 0
	flushPhone := func() {
		for phone.r.HasReady() {
			rd := phone.r.Ready()
			phone.st.Save(&rd)
			phone.r.Advance()
			for _, m := range rd.Messages {
				if m.Type == replica.MsgPush {
					pushed += len(m.Changes)
				}
				toRegion = append(toRegion, m)
			}
		}
	}
	flushPhone()
	phone.r.Connect(region.r.ID(), nil)
	flushPhone()
	// Each tick the region takes one message off its queue.
	for tick := 0; len(phone.st.Outbox) > 0; tick++ {
		if tick > 10*writes/page {
			t.Fatalf("outbox of %d changes not acknowledged after %d ticks", len(phone.st.Outbox), tick)
		}
		phone.r.Tick()
		flushPhone()
		if len(toRegion) == 0 {
			continue
		}
		m := toRegion[0]
		toRegion = toRegion[1:]
		if err := region.r.Step(m); err != nil {
			t.Fatal(err)
		}
		region.flush(phone)
		flushPhone()
	}
	t.Logf("%d changes pushed for an outbox of %d", pushed, writes)
	if pushed > writes*3/2 {
		t.Fatalf("%d changes pushed for an outbox of %d: retries while the region was acknowledging", pushed, writes)
	}
}
