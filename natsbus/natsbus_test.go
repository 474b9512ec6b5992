package natsbus

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"pgregory.net/rapid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/replica"
)

var ids = []crdt.ReplicaID{
	uuid.MustParse("00000000-0000-4000-8000-000000000001"),
	uuid.MustParse("00000000-0000-4000-8000-000000000002"),
	uuid.MustParse("00000000-0000-4000-8000-000000000003"),
}

func genID(t *rapid.T, label string) crdt.ReplicaID {
	return rapid.SampledFrom(append([]crdt.ReplicaID{uuid.Nil}, ids...)).Draw(t, label)
}

func genVector(t *rapid.T, label string) crdt.Vector {
	n := rapid.IntRange(0, 3).Draw(t, label+"-n")
	if n == 0 {
		return nil
	}
	v := crdt.Vector{}
	for i := 0; i < n; i++ {
		v[ids[i]] = rapid.Uint64().Draw(t, label)
	}
	return v
}

func genDots(t *rapid.T, label string) []crdt.Dot {
	n := rapid.IntRange(0, 3).Draw(t, label+"-n")
	if n == 0 {
		return nil
	}
	ds := make([]crdt.Dot, n)
	for i := range ds {
		ds[i] = crdt.Dot{Replica: genID(t, label+"-r"), Seq: rapid.Uint64().Draw(t, label+"-s")}
	}
	return ds
}

func genChange(t *rapid.T, ns string) crdt.Change {
	c := crdt.Change{
		ID:     uuid.New(),
		Origin: genID(t, "origin"),
		Seq:    rapid.Uint64().Draw(t, "seq"),
		HLC:    hlc.Timestamp(rapid.Uint64().Draw(t, "hlc")),
		Region: genID(t, "region"),
		RSeq:   rapid.Uint64().Draw(t, "rseq"),
		NS:     rapid.SampledFrom([]string{ns, ns, "other", ""}).Draw(t, "ns"),
		Coll:   rapid.SampledFrom([]string{"c", "carts", ""}).Draw(t, "coll"),
		Doc:    rapid.SampledFrom([]string{"d1", "d2", "ü-doc", ""}).Draw(t, "doc"),
		Field:  rapid.SampledFrom([]string{"", "title", "items"}).Draw(t, "field"),
		Kind:   crdt.Kind(rapid.IntRange(0, 4).Draw(t, "kind")),
		Op:     crdt.Op(rapid.IntRange(1, 6).Draw(t, "op")),
		Total:  rapid.Int64().Draw(t, "total"),
	}
	if v := rapid.SampledFrom([]string{"", "1", `"x"`, `{"a":[1,2]}`}).Draw(t, "value"); v != "" {
		c.Value = json.RawMessage(v)
	}
	c.Context = genDots(t, "ctx")
	return c
}

func genMessage(t *rapid.T) replica.Message {
	m := replica.Message{
		Type:   replica.MsgType(rapid.IntRange(1, 7).Draw(t, "type")),
		NS:     rapid.SampledFrom([]string{"app", "shop"}).Draw(t, "msg-ns"),
		From:   genID(t, "from"),
		Node:   rapid.SampledFrom([]string{"", "nyc", "tōkyō"}).Draw(t, "node"),
		To:     genID(t, "to"),
		Vector: genVector(t, "vector"),
		Base:   genVector(t, "base"),
		Head:   genVector(t, "head"),
		Dots:   genDots(t, "dots"),
		Limit:  rapid.IntRange(0, 5000).Draw(t, "limit"),
		Sync:   rapid.Bool().Draw(t, "sync"),
		More:   rapid.Bool().Draw(t, "more"),
		Code:   rapid.SampledFrom([]string{"", replica.CodeClockSkew}).Draw(t, "code"),
		Text:   rapid.SampledFrom([]string{"", "some text"}).Draw(t, "text"),
		HLC:    hlc.Timestamp(rapid.Uint64().Draw(t, "msg-hlc")),
	}
	if n := rapid.IntRange(0, 2).Draw(t, "colls"); n > 0 {
		m.Colls = []string{"a", "b"}[:n]
	}
	if n := rapid.IntRange(0, 5).Draw(t, "changes"); n > 0 {
		for i := 0; i < n; i++ {
			m.Changes = append(m.Changes, genChange(t, m.NS))
		}
	}
	return m
}

// TestCodecRoundTrip: what Decode reads back from Encode is exactly what
// a JSON round trip gives (the encoding regions used before).
func TestCodecRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		m := genMessage(t)
		got, err := Decode(Encode(&m))
		if err != nil {
			t.Fatalf("decode: %v", err)
		}
		j, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		var want replica.Message
		if err := json.Unmarshal(j, &want); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, want)
		}
		// And JSON, as the nats CLI would publish it, is still read.
		fromJSON, err := Decode(j)
		if err != nil || !reflect.DeepEqual(fromJSON, want) {
			t.Fatalf("json: %v\n got %+v\nwant %+v", err, fromJSON, want)
		}
	})
}

func sampleBatch(n int) replica.Message {
	from := ids[0]
	m := replica.Message{Type: replica.MsgBatch, NS: "bench", From: from,
		Base: crdt.Vector{from: 0}, Head: crdt.Vector{from: uint64(n)}}
	clock := hlc.NewClock(func() int64 { return time.Now().UnixMilli() }, 0)
	for i := 1; i <= n; i++ {
		m.Changes = append(m.Changes, crdt.Change{ID: uuid.New(), Origin: from, Seq: uint64(i), HLC: clock.Now(),
			Region: from, RSeq: uint64(i), NS: "bench", Coll: "c", Doc: fmt.Sprintf("d%d", i), Field: "v",
			Kind: crdt.KindLWW, Op: crdt.OpSet, Value: json.RawMessage(fmt.Sprint(i))})
	}
	return m
}

// TestDecodeRefusesDamage cuts and flips a valid encoding everywhere:
// every result is an error or a message, never a panic.
func TestDecodeRefusesDamage(t *testing.T) {
	m := sampleBatch(3)
	m.Changes[1].Context = []crdt.Dot{{Replica: ids[1], Seq: 7}}
	b := Encode(&m)
	for i := 0; i < len(b); i++ {
		if _, err := Decode(b[:i]); err == nil {
			t.Fatalf("a message cut at %d of %d bytes decoded", i, len(b))
		}
		flipped := bytes.Clone(b)
		flipped[i] ^= 0xff
		Decode(flipped)
	}
	if _, err := Decode(append(bytes.Clone(b), 0)); err == nil {
		t.Fatal("trailing bytes accepted")
	}
	if _, err := Decode([]byte{9, 1, 2}); err == nil || !strings.Contains(err.Error(), "unknown encoding") {
		t.Fatalf("a newer version: %v", err)
	}
	if _, err := Decode([]byte(`{"type":"nope"}`)); err == nil {
		t.Fatal("bad JSON accepted")
	}
}

func FuzzDecode(f *testing.F) {
	m := sampleBatch(2)
	f.Add(Encode(&m))
	hb := replica.Message{Type: replica.MsgHeartbeat, NS: "a", From: ids[0], Vector: crdt.Vector{ids[0]: 3, ids[1]: 9}, Node: "nyc"}
	f.Add(Encode(&hb))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			return
		}
		// Whatever decodes re-encodes to something that decodes the same.
		again, err := Decode(Encode(&m))
		if err != nil || !reflect.DeepEqual(again, m) {
			t.Fatalf("unstable: %v\n%+v\n%+v", err, m, again)
		}
	})
}

// BenchmarkCodec compares the wire form with JSON on a 1,000-change batch.
func BenchmarkCodec(b *testing.B) {
	m := sampleBatch(1000)
	bin, _ := json.Marshal(m)
	b.Run("json", func(b *testing.B) {
		b.SetBytes(int64(len(bin)))
		for b.Loop() {
			data, _ := json.Marshal(m)
			var out replica.Message
			if err := json.Unmarshal(data, &out); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N*1000)/b.Elapsed().Seconds(), "changes/s")
	})
	wire := Encode(&m)
	b.Run("wire", func(b *testing.B) {
		b.SetBytes(int64(len(wire)))
		for b.Loop() {
			if _, err := Decode(Encode(&m)); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N*1000)/b.Elapsed().Seconds(), "changes/s")
	})
}

// TestSplit halves an oversized batch until each part fits: the parts
// cover the same ranges contiguously, in order, and only the last keeps
// More.
func TestSplit(t *testing.T) {
	m := sampleBatch(10)
	other := ids[1]
	// A sync page with a second region's range too.
	m.Sync, m.More = true, true
	m.Base[other], m.Head[other] = 4, 7
	for i := 5; i <= 7; i++ {
		c := m.Changes[0]
		c.ID, c.Origin, c.Region, c.Seq, c.RSeq, c.Doc = uuid.New(), other, other, uint64(i), uint64(i), fmt.Sprintf("o%d", i)
		m.Changes = append(m.Changes, c)
	}
	parts := []replica.Message{m}
	for round := 0; round < 3; round++ {
		var next []replica.Message
		for _, p := range parts {
			if len(p.Changes) < 2 {
				next = append(next, p)
				continue
			}
			s, err := Split(p)
			if err != nil {
				t.Fatal(err)
			}
			next = append(next, s...)
		}
		parts = next
	}
	have := crdt.Vector{ids[0]: 0, other: 4}
	var n int
	for i, p := range parts {
		if p.More != (i == len(parts)-1) {
			t.Fatalf("part %d: More=%v", i, p.More)
		}
		for r, h := range p.Head {
			if p.Base[r] != have[r] {
				t.Fatalf("part %d: region %s starts at %d, receiver holds %d", i, r, p.Base[r], have[r])
			}
			have[r] = h
		}
		for _, c := range p.Changes {
			if c.RSeq <= p.Base[c.Region] || c.RSeq > p.Head[c.Region] {
				t.Fatalf("part %d: change %d outside [%d,%d]", i, c.RSeq, p.Base[c.Region], p.Head[c.Region])
			}
		}
		n += len(p.Changes)
	}
	if n != len(m.Changes) || have[ids[0]] != 10 || have[other] != 7 {
		t.Fatalf("parts hold %d changes and reach %v", n, have)
	}
	if _, err := Split(replica.Message{Type: replica.MsgHeartbeat}); err == nil {
		t.Fatal("a heartbeat cannot be split")
	}
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// inbox collects what a bus delivers.
type inbox struct {
	mu   sync.Mutex
	msgs []replica.Message
}

func (in *inbox) deliver(m replica.Message) {
	in.mu.Lock()
	in.msgs = append(in.msgs, m)
	in.mu.Unlock()
}

func (in *inbox) wait(t *testing.T, what string, ok func([]replica.Message) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		in.mu.Lock()
		done := ok(in.msgs)
		in.mu.Unlock()
		if done {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("never received %s", what)
}

func (in *inbox) count() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return len(in.msgs)
}

func start(t *testing.T, id crdt.ReplicaID, o Options) *Bus {
	t.Helper()
	o.Logger = quiet()
	b, err := Start(context.Background(), id, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

// TestRoutedBuses runs two embedded servers joined by a route, as two
// regions do: each gets the other's batches, heartbeats and the messages
// addressed to it, never its own, and a batch whose subject does not name
// its sender is dropped.
func TestRoutedBuses(t *testing.T) {
	pa, pb := freePort(t), freePort(t)
	a := start(t, ids[0], Options{Name: "a", ClusterPort: pa, Routes: []string{fmt.Sprintf("nats-route://127.0.0.1:%d", pb)}})
	b := start(t, ids[1], Options{Name: "b", ClusterPort: pb, Routes: []string{fmt.Sprintf("nats-route://127.0.0.1:%d", pa)}})
	if a.ClusterAddr() != fmt.Sprintf("127.0.0.1:%d", pa) {
		t.Fatalf("cluster addr %q", a.ClusterAddr())
	}
	var inA, inB inbox
	if err := a.Subscribe(inA.deliver); err != nil {
		t.Fatal(err)
	}
	if err := b.Subscribe(inB.deliver); err != nil {
		t.Fatal(err)
	}
	// Interest crosses the route asynchronously: heartbeat until heard.
	hb := replica.Message{Type: replica.MsgHeartbeat, NS: "app", From: ids[0], Vector: crdt.Vector{ids[0]: 1}, Node: "a"}
	deadline := time.Now().Add(10 * time.Second)
	for inB.count() == 0 && time.Now().Before(deadline) {
		if err := a.Send(hb); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	batch := sampleBatch(3)
	batch.NS = "app"
	for i := range batch.Changes {
		batch.Changes[i].NS = "app"
	}
	if err := a.Send(batch); err != nil {
		t.Fatal(err)
	}
	req := replica.Message{Type: replica.MsgSyncReq, NS: "app", From: ids[1], To: ids[0], Vector: crdt.Vector{}}
	if err := b.Send(req); err != nil {
		t.Fatal(err)
	}
	// Addressed to a third region: neither a nor b gets it.
	if err := b.Send(replica.Message{Type: replica.MsgAck, NS: "app", From: ids[1], To: ids[2]}); err != nil {
		t.Fatal(err)
	}
	inB.wait(t, "a's batch at b", func(ms []replica.Message) bool {
		for _, m := range ms {
			if m.Type == replica.MsgBatch && reflect.DeepEqual(m.Changes, batch.Changes) {
				return true
			}
		}
		return false
	})
	inA.wait(t, "b's sync request at a", func(ms []replica.Message) bool {
		return len(ms) > 0 && ms[len(ms)-1].Type == replica.MsgSyncReq
	})
	// A forged batch: sender b on a's subject.
	forged := batch
	forged.From = ids[1]
	data := Encode(&forged)
	b.nc.Publish("syncd.app.changes."+ids[0].String(), data)
	b.nc.Publish("syncd.app.changes."+ids[1].String(), []byte("garbage"))
	b.nc.Flush()
	a.nc.Flush()
	time.Sleep(100 * time.Millisecond)
	inA.mu.Lock()
	defer inA.mu.Unlock()
	for _, m := range inA.msgs {
		if m.From == ids[0] {
			t.Fatalf("a received its own %s", m.Type)
		}
		if m.Type == replica.MsgBatch || m.Type == replica.MsgAck {
			t.Fatalf("a received %s it should not have: %+v", m.Type, m)
		}
	}
}

// TestChunksToMaxPayload sends a batch far over a small max_payload set in
// a config file: it arrives in parts that together are the batch.
func TestChunksToMaxPayload(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(conf, []byte("listen: 127.0.0.1:-1\nmax_payload: 4KB\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	a := start(t, ids[0], Options{Name: "a", ConfigFile: conf})
	if a.ClientURL() == "" {
		t.Fatal("config file's listener not used")
	}
	b := start(t, ids[1], Options{Name: "b", URL: a.ClientURL()})
	if b.ClientURL() != "" {
		t.Fatal("an external deployment embeds no server")
	}
	var in inbox
	if err := b.Subscribe(in.deliver); err != nil {
		t.Fatal(err)
	}
	m := sampleBatch(1000)
	if n := len(Encode(&m)); n < 3*4096 {
		t.Fatalf("batch of %d bytes is not over the max payload", n)
	}
	if err := a.Send(m); err != nil {
		t.Fatal(err)
	}
	in.wait(t, "every part", func(ms []replica.Message) bool {
		n := 0
		for _, p := range ms {
			n += len(p.Changes)
		}
		return n == 1000
	})
	in.mu.Lock()
	defer in.mu.Unlock()
	if len(in.msgs) < 4 {
		t.Fatalf("%d parts", len(in.msgs))
	}
	var got []crdt.Change
	for _, p := range in.msgs {
		got = append(got, p.Changes...)
	}
	if !reflect.DeepEqual(got, m.Changes) {
		t.Fatal("parts do not add up to the batch")
	}
	// One change over the limit cannot be sent.
	big := sampleBatch(1)
	big.Changes[0].Value = json.RawMessage(`"` + strings.Repeat("x", 10000) + `"`)
	if err := a.Send(big); err == nil {
		t.Fatal("a change over the max payload was sent")
	}
}

// TestConfigWithoutPort starts two buses from config files that name no
// client port, as two regions on one host would: neither claims 4222.
func TestConfigWithoutPort(t *testing.T) {
	dir := t.TempDir()
	pa, pb := freePort(t), freePort(t)
	var buses []*Bus
	for i, p := range []int{pa, pb} {
		conf := filepath.Join(dir, fmt.Sprintf("r%d.conf", i))
		text := fmt.Sprintf("cluster {\n  name: syncd\n  listen: 127.0.0.1:%d\n  routes: [nats-route://127.0.0.1:%d]\n}\n", p, pa+pb-p)
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		buses = append(buses, start(t, ids[i], Options{Name: fmt.Sprintf("r%d", i), ConfigFile: conf}))
	}
	for _, b := range buses {
		if u := b.ClientURL(); u == "" || strings.HasSuffix(u, ":4222") {
			t.Fatalf("client URL %q", u)
		}
	}
	if buses[1].ClusterAddr() != fmt.Sprintf("127.0.0.1:%d", pb) {
		t.Fatalf("cluster listener %q", buses[1].ClusterAddr())
	}
}

// TestPortInUse: a cluster port another program holds is refused at
// once (on the server's own fatal error, not after the readiness wait
// runs out), and the error says which port and why.
func TestPortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	_, err = Start(context.Background(), ids[0], Options{Name: "a", ClusterPort: port})
	if err == nil {
		t.Fatal("started on a cluster port in use")
	}
	msg := err.Error()
	if !strings.Contains(msg, fmt.Sprint(port)) || !strings.Contains(msg, "in use") {
		t.Fatalf("error %q does not say the port %d is in use", msg, port)
	}
	if strings.Contains(msg, "not ready") {
		t.Fatalf("error %q: the start waited out its timeout instead of ending on the server's error", msg)
	}
}
