package replica_test

import (
	"testing"

	"github.com/google/uuid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/replica"
	"github.com/syncd/syncd/resolver"
)

// TestAnswerToARequestMadeOnItsBehalf: the Go SDK's Sync asks a region
// from the device's vector on the device's behalf, outside its replica.
// A page answering it starts where the device stands, so the device
// follows it with the next request, though it did not make the first.
func TestAnswerToARequestMadeOnItsBehalf(t *testing.T) {
	clock := hlc.NewManualClock(1_700_000_000_000)
	mk := func(id byte, role replica.Role) *node {
		st := replica.NewMemStorage()
		r := replica.New(replica.Config{ID: uuid.UUID{id}, NS: "shop", Role: role, Clock: hlc.NewClock(clock.Now, 0),
			Storage: st, PageSize: 1})
		return &node{r, st}
	}
	region, phone := mk(1, replica.RoleRegion), mk(0x10, replica.RoleDevice)
	note := func(doc string) {
		t.Helper()
		if _, err := region.r.Write([]resolver.Op{{Coll: "notes", Doc: doc, Field: "text", Op: crdt.OpSet, Value: []byte(`"x"`)}}); err != nil {
			t.Fatal(err)
		}
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
