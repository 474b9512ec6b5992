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

// TestPushRetriesWaitForProgress: a device back online with a long outbox
// pushes it all at once, and a busy region works through the pushes one
// at a time, acknowledging each in turn. While acknowledgements keep
// coming, what is not yet acknowledged is still queued, not lost: pushing
// it again only queues it a second time (and a third, at the next retry),
// which slows the region down further.
func TestPushRetriesWaitForProgress(t *testing.T) {
	const writes, page, retry = 2000, 100, 3
	clock := hlc.NewManualClock(1_700_000_000_000)
	mk := func(id byte, role replica.Role) *node {
		st := replica.NewMemStorage()
		r := replica.New(replica.Config{ID: uuid.UUID{id}, NS: "shop", Role: role, Clock: hlc.NewClock(clock.Now, 0),
			Storage: st, PageSize: page, RetryTicks: retry})
		return &node{r, st}
	}
	region, phone := mk(1, replica.RoleRegion), mk(0x10, replica.RoleDevice)
	for i := range writes {
		if _, err := phone.r.Write([]resolver.Op{{Coll: "notes", Doc: fmt.Sprintf("n%d", i), Field: "text", Op: crdt.OpSet, Value: []byte(`"x"`)}}); err != nil {
			t.Fatal(err)
		}
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
		for region.r.HasReady() {
			rd := region.r.Ready()
			region.st.Save(&rd)
			region.r.Advance()
			for _, a := range rd.Messages {
				if a.To == phone.r.ID() {
					_ = phone.r.Step(a)
				}
			}
		}
		flushPhone()
	}
	t.Logf("%d changes pushed for an outbox of %d", pushed, writes)
	if pushed > writes*3/2 {
		t.Fatalf("%d changes pushed for an outbox of %d: retries while the region was acknowledging", pushed, writes)
	}
}
