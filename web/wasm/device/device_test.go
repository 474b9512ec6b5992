package device

import (
	"encoding/json"
	"testing"

	"github.com/google/uuid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/replica"
	"github.com/syncd/syncd/resolver"
)

// region is a region replica on a MemStorage, driven the way the node
// loop drives one, with its messages to devices delivered as the gateway
// would (JSON frames).
type region struct {
	r  *replica.Replica
	st *replica.MemStorage
}

func newRegion(t *testing.T, clock *hlc.ManualClock) *region {
	st := replica.NewMemStorage()
	r := replica.New(replica.Config{ID: uuid.New(), Name: "nyc", NS: "demo", Role: replica.RoleRegion,
		Clock: hlc.NewClock(clock.Now, 0), Storage: st, State: replica.State{Vector: crdt.Vector{}}})
	if _, err := r.PutSchema("drafts", resolver.Schema{Fields: map[string]crdt.Kind{"title": crdt.KindManual}}); err != nil {
		t.Fatal(err)
	}
	return &region{r, st}
}

// net connects devices to the region; online says which are connected.
type net struct {
	t      *testing.T
	reg    *region
	devs   []*Device
	online map[*Device]bool
	saved  map[*Device][]byte // what the page would hold in IndexedDB
}

func (n *net) connect(d *Device) {
	n.online[d] = true
	d.Connect(n.reg.r.ID(), nil)
}

func (n *net) disconnect(d *Device) {
	n.online[d] = false
	d.Disconnect()
}

// settle delivers until nobody has anything to say.
func (n *net) settle() {
	n.t.Helper()
	for round := 0; round < 50; round++ {
		busy := false
		for _, d := range n.devs {
			for {
				f, ok, err := d.Ready()
				if err != nil {
					n.t.Fatal(err)
				}
				if !ok {
					break
				}
				busy = true
				if f.Snapshot != nil {
					n.saved[d] = f.Snapshot
				}
				d.Advance()
				for _, m := range f.Messages {
					if !n.online[d] {
						continue
					}
					var msg replica.Message
					if err := json.Unmarshal([]byte(m), &msg); err != nil {
						n.t.Fatalf("device sent %s: %v", m, err)
					}
					if err := n.reg.r.Step(msg); err != nil {
						n.t.Fatalf("region refused %s: %v", m, err)
					}
				}
			}
		}
		for n.reg.r.HasReady() {
			busy = true
			rd := n.reg.r.Ready()
			n.reg.st.Save(&rd)
			n.reg.r.Advance()
			out := rd.Messages
			if rd.Fanout != nil {
				for _, d := range n.devs {
					m := *rd.Fanout
					m.To = d.ID()
					out = append(out, m)
				}
			}
			for _, m := range out {
				for _, d := range n.devs {
					if !n.online[d] || (m.To != d.ID() && !(m.To == uuid.Nil && m.Type == replica.MsgHeartbeat)) {
						continue
					}
					b, _ := json.Marshal(m)
					if err := d.Step(b); err != nil {
						n.t.Fatalf("device refused %s: %v", b, err)
					}
				}
			}
		}
		if !busy {
			return
		}
	}
	n.t.Fatal("no quiet after 50 rounds")
}

func write(t *testing.T, d *Device, coll, doc, field, op, value string) {
	t.Helper()
	if err := d.Write([]Op{{Coll: coll, Doc: doc, Field: field, Op: op, Value: json.RawMessage(value)}}); err != nil {
		t.Fatalf("write %s %s=%s: %v", op, field, value, err)
	}
}

func view(t *testing.T, d *Device, coll, doc string) resolver.View {
	t.Helper()
	v, ok, err := d.Doc(coll, doc)
	if err != nil || !ok {
		t.Fatalf("doc %s/%s: ok=%v err=%v", coll, doc, ok, err)
	}
	return v
}

func TestOfflineConflictReloadAndResolve(t *testing.T) {
	clock := hlc.NewManualClock(1_700_000_000_000)
	n := &net{t: t, reg: newRegion(t, clock), online: map[*Device]bool{}, saved: map[*Device][]byte{}}
	a, err := New("demo", nil, clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := New("demo", nil, clock.Now)
	n.devs = []*Device{a, b}
	n.connect(a)
	n.connect(b)
	n.settle() // both learn the schema

	write(t, a, "drafts", "d1", "title", "set", `"Engineer"`)
	n.settle()
	if got := string(view(t, b, "drafts", "d1").Fields["title"]); got != `"Engineer"` {
		t.Fatalf("b sees %s before going offline", got)
	}

	n.disconnect(a)
	n.disconnect(b)
	clock.Advance(5)
	write(t, a, "drafts", "d1", "title", "set", `"Senior Engineer"`)
	clock.Advance(5)
	write(t, b, "drafts", "d1", "title", "set", `"Staff Engineer"`)
	n.settle()

	// A reload while offline: the page makes the device again from what
	// it saved, and nothing written offline is lost.
	a2, err := New("demo", n.saved[a], clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	if a2.ID() != a.ID() || len(a2.Status().Outbox) != 1 {
		t.Fatalf("reloaded device: id %s (was %s), outbox %d (want 1)", a2.ID(), a.ID(), len(a2.Status().Outbox))
	}
	if got := string(view(t, a2, "drafts", "d1").Fields["title"]); got != `"Senior Engineer"` {
		t.Fatalf("reloaded device shows %s", got)
	}
	n.devs[0], a = a2, a2

	n.connect(a)
	n.connect(b)
	n.settle()
	for _, d := range n.devs {
		v := view(t, d, "drafts", "d1")
		if len(v.Conflicts["title"]) != 2 {
			t.Fatalf("device %s: conflicts %v, want both versions", d.ID(), v.Conflicts)
		}
		if st := d.Status(); len(st.Outbox) != 0 || !st.Synced {
			t.Fatalf("device %s: outbox %d synced %v after settling", d.ID(), len(st.Outbox), st.Synced)
		}
	}

	write(t, b, "drafts", "d1", "title", "resolve", `"Senior Engineer"`)
	n.settle()
	fs, _ := n.reg.r.Doc(crdt.DocKey{NS: "demo", Coll: "drafts", Doc: "d1"})
	want := resolver.Render("d1", fs, nil)
	wb, _ := json.Marshal(want)
	if len(want.Conflicts) != 0 || string(want.Fields["title"]) != `"Senior Engineer"` {
		t.Fatalf("region after resolve: %s", wb)
	}
	for _, d := range n.devs {
		got, _ := json.Marshal(view(t, d, "drafts", "d1"))
		if string(got) != string(wb) {
			t.Fatalf("device %s differs from the region:\n%s\n%s", d.ID(), got, wb)
		}
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	clock := hlc.NewManualClock(1_700_000_000_000)
	d, _ := New("demo", nil, clock.Now)
	write(t, d, "carts", "c1", "items", "set", `"x"`)
	f, ok, err := d.Ready()
	if err != nil || !ok || f.Snapshot == nil {
		t.Fatalf("ready: ok=%v err=%v snapshot=%d bytes", ok, err, len(f.Snapshot))
	}
	d.Advance()
	e, err := New("demo", f.Snapshot, clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	again, err := e.Export()
	if err != nil {
		t.Fatal(err)
	}
	if string(again) != string(f.Snapshot) {
		t.Fatalf("snapshot changed on a round trip:\n%s\n%s", f.Snapshot, again)
	}
	// Its clock continues past what it issued before the reload.
	write(t, e, "carts", "c1", "items", "set", `"y"`)
	if st := e.Status(); st.Seq != 2 {
		t.Fatalf("seq after reload and a write: %d, want 2", st.Seq)
	}
	for _, bad := range []string{`{`, `{"version":9,"ns":"demo","id":"` + uuid.NewString() + `"}`, `{"version":1,"ns":"other","id":"` + uuid.NewString() + `"}`} {
		if _, err := New("demo", []byte(bad), clock.Now); err == nil {
			t.Errorf("snapshot %s accepted", bad)
		}
	}
}

func TestClockSkewCorrects(t *testing.T) {
	clock := hlc.NewManualClock(1_700_000_000_000)
	d, _ := New("demo", nil, clock.Now)
	region := hlc.Make(1_700_000_000_000-90_000, 0)
	m, _ := json.Marshal(replica.Message{Type: replica.MsgError, NS: "demo", From: uuid.New(), To: d.ID(),
		Code: replica.CodeClockSkew, Text: "too far ahead", HLC: region})
	if err := d.Step(m); err != nil {
		t.Fatal(err)
	}
	if d.offset != -90_000 {
		t.Fatalf("offset %d ms, want -90000", d.offset)
	}
	if err := d.Step([]byte(`{"type":"nonsense"}`)); err == nil {
		t.Fatal("an unknown message type was accepted")
	}
}
