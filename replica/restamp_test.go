package replica_test

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/replica"
	"github.com/syncd/syncd/resolver"
)

// peer is a replica with its store, a physical clock offset and an inbox.
type peer struct {
	r      *replica.Replica
	st     *replica.MemStorage
	offset time.Duration
	inbox  []replica.Message
}

// TestRestampAfterClockSkew: a device whose clock runs 20 minutes ahead
// writes every kind offline; the region refuses its push whole. The device
// corrects its clock from the region's, re-stamps, and its writes go
// through at once, with the same result a device with a good clock would
// have got: no value lost, none duplicated, no spurious conflict.
func TestRestampAfterClockSkew(t *testing.T) {
	phys := hlc.NewManualClock(1_700_000_000_000)
	mk := func(id byte, role replica.Role, offset time.Duration) *peer {
		p := &peer{st: replica.NewMemStorage(), offset: offset}
		clock := hlc.NewClock(func() int64 { return phys.Now() + p.offset.Milliseconds() }, time.Minute)
		p.r = replica.New(replica.Config{ID: uuid.UUID{id}, NS: "shop", Role: role, Clock: clock, Storage: p.st})
		return p
	}
	region := mk(1, replica.RoleRegion, 0)
	phone := mk(2, replica.RoleDevice, 20*time.Minute)
	peers := map[uuid.UUID]*peer{region.r.ID(): region, phone.r.ID(): phone}
	// flush persists and delivers until quiet; it returns the errors
	// devices were sent.
	flush := func() (errs []replica.Message) {
		for busy := true; busy; {
			busy = false
			for _, p := range []*peer{region, phone} {
				for _, m := range p.inbox {
					_ = p.r.Step(m)
				}
				p.inbox = nil
				for p.r.HasReady() {
					busy = true
					rd := p.r.Ready()
					p.st.Save(&rd)
					p.r.Advance()
					msgs := rd.Messages
					if rd.Fanout != nil {
						f := *rd.Fanout
						f.To = phone.r.ID()
						msgs = append(msgs, f)
					}
					for _, m := range msgs {
						if m.Type == replica.MsgError && m.To == phone.r.ID() {
							errs = append(errs, m)
						}
						if q := peers[m.To]; q != nil && q != p {
							q.inbox = append(q.inbox, m)
						}
					}
				}
			}
		}
		return errs
	}
	if _, err := region.r.PutSchema("carts", resolver.Schema{Fields: map[string]crdt.Kind{
		"title": crdt.KindManual, "items": crdt.KindORSet, "stock": crdt.KindCounter}}); err != nil {
		t.Fatal(err)
	}
	write := func(p *peer, doc, field string, op crdt.Op, v string) {
		t.Helper()
		o := resolver.Op{Coll: "carts", Doc: doc, Field: field, Op: op}
		if v != "" {
			o.Value = json.RawMessage(v)
		}
		if _, err := p.r.Write([]resolver.Op{o}); err != nil {
			t.Fatal(err)
		}
	}
	write(region, "c1", "items", crdt.OpAdd, `"pear"`)
	write(region, "c1", "stock", crdt.OpIncr, `10`)
	write(region, "c2", "title", crdt.OpSet, `"kept"`)
	phone.r.Connect(region.r.ID(), nil)
	flush()

	// Offline, the phone writes every kind, twice to some fields so that
	// its own earlier refused writes are in later contexts.
	phone.r.Disconnect()
	write(phone, "c1", "title", crdt.OpSet, `"draft"`)
	write(phone, "c1", "title", crdt.OpSet, `"final"`)
	write(phone, "c1", "items", crdt.OpAdd, `"apple"`)
	write(phone, "c1", "items", crdt.OpAdd, `"plum"`)
	write(phone, "c1", "items", crdt.OpRemove, `"plum"`)
	write(phone, "c1", "items", crdt.OpRemove, `"pear"`)
	write(phone, "c1", "stock", crdt.OpIncr, `-3`)
	write(phone, "c1", "stock", crdt.OpIncr, `-1`)
	write(phone, "c2", "", crdt.OpDelete, "")
	if n := phone.r.Status().Outbox; n != 9 {
		t.Fatalf("outbox %d, want 9", n)
	}
	phone.r.Connect(region.r.ID(), nil)
	errs := flush()
	if len(errs) == 0 || errs[0].Code != replica.CodeClockSkew || errs[0].HLC.IsZero() {
		t.Fatalf("the region must refuse the push with its clock: %+v", errs)
	}
	if fs, _ := region.r.Doc(crdt.DocKey{NS: "shop", Coll: "carts", Doc: "c1"}); fs["title"] != nil {
		t.Fatal("a refused push must apply nothing")
	}
	refused := slicesClone(phone.st.Outbox)

	// The phone corrects its clock from the region's and re-stamps.
	skew := errs[0]
	phone.offset = time.Duration(skew.HLC.WallMillis()-phys.Now()) * time.Millisecond
	fresh, err := phone.r.Restamp(skew.HLC)
	if err != nil {
		t.Fatal(err)
	}
	if len(fresh) != 9 {
		t.Fatalf("re-stamped %d changes, want 9", len(fresh))
	}
	for _, c := range fresh {
		if c.HLC.WallMillis() > phys.Now()+1 {
			t.Fatalf("re-stamped change still ahead: %v", c.HLC)
		}
	}
	if errs := flush(); len(errs) != 0 {
		t.Fatalf("the re-stamped push is refused again: %+v", errs[0])
	}
	if st := phone.r.Status(); st.Outbox != 0 || len(phone.st.Outbox) != 0 {
		t.Fatalf("outbox not drained: %d in memory, %d stored", st.Outbox, len(phone.st.Outbox))
	}
	want := map[string]string{
		"c1": `{"id":"c1","fields":{"items":["apple"],"stock":6,"title":"final"},"conflicts":{},"deleted":false}`,
		"c2": `{"id":"c2","fields":{},"conflicts":{},"deleted":true}`,
	}
	check := func(when string) {
		t.Helper()
		for doc, w := range want {
			for name, p := range map[string]*peer{"region": region, "phone": phone} {
				fs, err := p.r.Doc(crdt.DocKey{NS: "shop", Coll: "carts", Doc: doc})
				if err != nil {
					t.Fatal(err)
				}
				v := resolver.Render(doc, fs, nil)
				b, _ := json.Marshal(struct {
					ID        string                        `json:"id"`
					Fields    map[string]json.RawMessage    `json:"fields"`
					Conflicts map[string][]resolver.Version `json:"conflicts"`
					Deleted   bool                          `json:"deleted"`
				}{v.ID, v.Fields, v.Conflicts, v.Deleted})
				if got := string(b); got != w {
					t.Errorf("%s: %s on %s:\n got %s\nwant %s", when, doc, name, got, w)
				}
			}
		}
	}
	check("after the re-stamp")

	// The region writes to the deleted document right after: later than
	// the re-stamped delete, earlier than the discarded stamp. Both sides
	// must see it revived.
	phys.Advance(time.Millisecond)
	write(region, "c2", "title", crdt.OpSet, `"revived"`)
	flush()
	want["c2"] = `{"id":"c2","fields":{"title":"revived"},"conflicts":{},"deleted":false}`
	check("after a write that follows the re-stamped delete")

	// Should the old push still arrive once real time has passed its
	// stamps (it was in flight when refused elsewhere), the new changes
	// supersede it: nothing is counted twice or revived. (The delete is
	// left out: a discarded delete that lands anyway keeps its later
	// stamp there, the one effect Restamp cannot take back.)
	phys.Advance(21 * time.Minute)
	m := replica.Message{Type: replica.MsgPush, NS: "shop", From: phone.r.ID(), To: region.r.ID()}
	for _, c := range refused {
		if c.Op != crdt.OpDelete {
			m.Changes = append(m.Changes, c)
		}
	}
	region.inbox = append(region.inbox, m)
	flush()
	check("after the old push landed too")
}

func slicesClone(cs []crdt.Change) []crdt.Change { return append([]crdt.Change(nil), cs...) }

// TestRestampRegion: only devices re-stamp.
func TestRestampRegion(t *testing.T) {
	r := replica.New(replica.Config{ID: uuid.UUID{1}, NS: "shop", Role: replica.RoleRegion,
		Clock: hlc.NewClock(hlc.NewManualClock(1).Now, 0), Storage: replica.NewMemStorage()})
	if _, err := r.Restamp(1); !errors.Is(err, replica.ErrRole) {
		t.Fatalf("err = %v, want ErrRole", err)
	}
}
