package tests

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// Regions bridged through NATS under faults: partitions made by restarts,
// downtime, crashes after a write concern was met, a route cut in the
// middle of a stream, replayed batches and a clock running ahead.

// statusDoc is the part of GET /v1/status these tests read.
type statusDoc struct {
	Node       string `json:"node"`
	Replica    string `json:"replica"`
	HLC        string `json:"hlc"`
	Namespaces map[string]struct {
		Vector map[string]uint64 `json:"vector"`
		Seq    uint64            `json:"seq"`
	} `json:"namespaces"`
	Peers []peerDoc `json:"peers"`
}

type peerDoc struct {
	Node          string            `json:"node"`
	Replica       string            `json:"replica"`
	NS            string            `json:"ns"`
	LastHeartbeat float64           `json:"last_heartbeat_s"`
	LagChanges    uint64            `json:"lag_changes"`
	LagSeconds    float64           `json:"lag_seconds"`
	Vector        map[string]uint64 `json:"vector"`
}

func (p *proc) status() statusDoc {
	p.t.Helper()
	r := p.do("GET", "/v1/status", nil)
	var s statusDoc
	if r.Status != 200 || json.Unmarshal(r.Body, &s) != nil {
		p.t.Fatalf("%s status: %d %s", p.name, r.Status, r.Body)
	}
	return s
}

// vector is a namespace's durable vector at p, without zero entries.
func (p *proc) vector(ns string) map[string]uint64 {
	out := map[string]uint64{}
	for id, n := range p.status().Namespaces[ns].Vector {
		if n > 0 {
			out[id] = n
		}
	}
	return out
}

// sameVectors reports why the regions' vectors of ns differ, or nil.
func sameVectors(ns string, ps ...*proc) error {
	first := ps[0].vector(ns)
	if len(first) == 0 {
		return fmt.Errorf("%s holds nothing of %s", ps[0].name, ns)
	}
	for _, p := range ps[1:] {
		if v := p.vector(ns); !maps.Equal(first, v) {
			return fmt.Errorf("vectors of %s differ: %s %v, %s %v", ns, ps[0].name, first, p.name, v)
		}
	}
	return nil
}

// countDocs lists a collection page by page.
func (p *proc) countDocs(ns, coll string) int {
	p.t.Helper()
	n, after := 0, ""
	for {
		r := p.do("GET", fmt.Sprintf("/v1/docs/%s/%s?limit=1000&after=%s", ns, coll, after), nil)
		if r.Status != 200 {
			p.t.Fatalf("list at %s: %d %s", p.name, r.Status, r.Body)
		}
		docs, _ := r.JSON["docs"].([]any)
		n += len(docs)
		next, _ := r.JSON["next"].(string)
		if next == "" {
			return n
		}
		after = next
	}
}

// restartWith stops p cleanly and starts it again on the same data with
// other flags.
func (p *proc) restartWith(extra ...string) {
	p.t.Helper()
	p.stop()
	p.args = append([]string{"serve", "--node", p.name, "--data", p.dir, "--http", "127.0.0.1:0"}, extra...)
	p.mu.Lock()
	p.logs.Reset()
	p.mu.Unlock()
	p.start()
}

// clusterArgs are the route flags region i of c started with.
func (c *cluster) clusterArgs(i int) []string {
	return []string{"--cluster-port", fmt.Sprint(c.ports[i]), "--routes", c.routes(i)}
}

// writeDocs PATCHes ns/coll/prefix-0..n-1 with conns concurrent writers;
// every write must be acknowledged.
func writeDocs(t *testing.T, p *proc, ns, coll, prefix string, n, conns int) {
	t.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for w := 0; w < conns; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				r, err := p.try("PATCH", fmt.Sprintf("/v1/docs/%s/%s/%s-%d", ns, coll, prefix, i), fmt.Sprintf(`{"v":%d}`, i))
				if err == nil && r.Status != 200 {
					err = fmt.Errorf("%d %s", r.Status, r.Body)
				}
				if err != nil {
					errs <- fmt.Errorf("write %s-%d at %s: %w", prefix, i, p.name, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestPartitionByRestartWithoutRoutes cuts a region off by restarting it
// with no NATS cluster at all; both sides take writes, including to the
// same fields; restarted with its routes it converges with the others.
func TestPartitionByRestartWithoutRoutes(t *testing.T) {
	c := startCluster(t, 3)
	nyc, london, tokyo := c.procs[0], c.procs[1], c.procs[2]
	nyc.do("PUT", "/v1/schema/part/docs", `{"fields":{"n":"counter","tags":"orset"}}`)
	c.converged("/v1/schema/part/docs", 10*time.Second)

	tokyo.restartWith() // no --cluster-port, no --routes: alone
	for i := 0; i < 20; i++ {
		nyc.do("PATCH", fmt.Sprintf("/v1/docs/part/docs/nyc-%d", i), `{"v":1}`)
		tokyo.do("PATCH", fmt.Sprintf("/v1/docs/part/docs/tokyo-%d", i), `{"v":2}`)
	}
	for _, p := range c.procs {
		p.do("POST", "/v1/docs/part/docs/shared/ops", fmt.Sprintf(`{"ops":[{"field":"n","op":"incr","value":1},{"field":"tags","op":"add","value":%q}]}`, p.name))
		p.do("PATCH", "/v1/docs/part/docs/shared", fmt.Sprintf(`{"title":%q}`, p.name))
	}
	// The majority side still replicates; tokyo really is cut off.
	eventually(t, 10*time.Second, func() error { return sameVectors("part", nyc, london) })
	if r := tokyo.do("GET", "/v1/docs/part/docs/nyc-0", nil); r.Status != 404 {
		t.Fatalf("tokyo is partitioned but has nyc's write: %d %s", r.Status, r.Body)
	}
	if r := london.do("GET", "/v1/docs/part/docs/tokyo-0", nil); r.Status != 404 {
		t.Fatalf("london has the partitioned tokyo's write: %d %s", r.Status, r.Body)
	}

	tokyo.restartWith(c.clusterArgs(2)...)
	eventually(t, 30*time.Second, func() error { return sameVectors("part", c.procs...) })
	r := c.converged("/v1/docs/part/docs/shared", 10*time.Second)
	if got := field(r, "n"); got != "3" {
		t.Fatalf("counter after heal: %s", r.Body)
	}
	if got := field(r, "tags"); got != `["london","nyc","tokyo"]` {
		t.Fatalf("set after heal: %s", r.Body)
	}
	for _, p := range c.procs {
		if n := p.countDocs("part", "docs"); n != 41 {
			t.Fatalf("%s holds %d documents, want 41", p.name, n)
		}
	}
}

// TestCatchUpAfterDowntime stops a region while the other two take 10,000
// writes; restarted, it catches up on every one of them.
func TestCatchUpAfterDowntime(t *testing.T) {
	c := startCluster(t, 3)
	nyc, london, tokyo := c.procs[0], c.procs[1], c.procs[2]
	tokyo.stop()
	var wg sync.WaitGroup
	for _, p := range []*proc{nyc, london} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			writeDocs(t, p, "down", "docs", p.name, 5000, 16)
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	eventually(t, 30*time.Second, func() error { return sameVectors("down", nyc, london) })
	tokyo.start()
	eventually(t, 45*time.Second, func() error { return sameVectors("down", c.procs...) })
	for _, p := range c.procs {
		if n := p.countDocs("down", "docs"); n != 10000 {
			t.Fatalf("%s holds %d documents, want 10000", p.name, n)
		}
	}
	if r := tokyo.do("GET", "/v1/docs/down/docs/london-4999", nil); field(r, "v") != "4999" {
		t.Fatalf("tokyo: %d %s", r.Status, r.Body)
	}
}

// TestAckSurvivesKill9 streams ack=2 writes into a region and kills it
// with SIGKILL mid-stream: every write it answered as replicated is on the
// survivors.
func TestAckSurvivesKill9(t *testing.T) {
	c := startCluster(t, 3)
	nyc, london, tokyo := c.procs[0], c.procs[1], c.procs[2]
	var acked sync.Map // doc id -> value
	var nAcked, nLocal atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				id := fmt.Sprintf("w%d-%d", w, i)
				r, err := nyc.try("PATCH", "/v1/docs/ack/docs/"+id+"?ack=2&timeout=10s", fmt.Sprintf(`{"v":%d}`, i))
				if err != nil {
					return // killed under us: not acknowledged
				}
				switch {
				case r.Status == 200 && r.JSON["replicated"] == true:
					acked.Store(id, i)
					nAcked.Add(1)
				case r.Status == 202:
					nLocal.Add(1)
				default:
					t.Errorf("write %s: %d %s", id, r.Status, r.Body)
					return
				}
			}
		}()
	}
	eventually(t, 30*time.Second, func() error {
		if n := nAcked.Load(); n < 300 {
			return fmt.Errorf("%d writes acknowledged by two regions so far", n)
		}
		return nil
	})
	nyc.kill9()
	wg.Wait()
	t.Logf("%d writes acknowledged with ack=2 before the kill (%d only locally)", nAcked.Load(), nLocal.Load())
	for _, p := range []*proc{london, tokyo} {
		eventually(t, 20*time.Second, func() error {
			var missing []string
			acked.Range(func(k, v any) bool {
				// The survivors sync with each other, so each ends up with
				// everything either of them acknowledged.
				if r := p.do("GET", "/v1/docs/ack/docs/"+k.(string), nil); r.Status != 200 || field(r, "v") != fmt.Sprint(v) {
					missing = append(missing, k.(string))
				}
				return len(missing) < 5
			})
			if len(missing) > 0 {
				return fmt.Errorf("%s lacks acknowledged writes %v", p.name, missing)
			}
			return nil
		})
	}
}

// proxy is a TCP forwarder that can be cut (every connection closed, no
// new ones accepted) and restored on the same port.
type proxy struct {
	t      *testing.T
	addr   string
	target string
	mu     sync.Mutex
	ln     net.Listener
	conns  map[net.Conn]bool
	copied atomic.Int64
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, addr: ln.Addr().String(), target: target, ln: ln, conns: map[net.Conn]bool{}}
	go p.serve(ln)
	t.Cleanup(p.cut)
	return p
}

func (p *proxy) serve(ln net.Listener) {
	for {
		in, err := ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", p.target)
		if err != nil {
			in.Close()
			continue
		}
		p.mu.Lock()
		p.conns[in], p.conns[out] = true, true
		p.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			n, _ := io.Copy(dst, src)
			p.copied.Add(n)
			dst.Close()
			src.Close()
		}
		go pipe(out, in)
		go pipe(in, out)
	}
}

// cut closes the listener and every connection through the proxy.
func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

// restore listens again on the same address.
func (p *proxy) restore() {
	p.t.Helper()
	var ln net.Listener
	eventually(p.t, 10*time.Second, func() (err error) {
		ln, err = net.Listen("tcp", p.addr)
		return err
	})
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go p.serve(ln)
}

// TestRouteCutThroughProxy runs two regions whose only route goes through
// a TCP proxy, cuts it and restores it while both take a stream of writes:
// they converge on every acknowledged write after the restore.
func TestRouteCutThroughProxy(t *testing.T) {
	dir := t.TempDir()
	pa := freePort(t)
	px := startProxy(t, fmt.Sprintf("127.0.0.1:%d", pa))
	a := startRegion(t, "nyc", filepath.Join(dir, "nyc"), "--cluster-port", fmt.Sprint(pa))
	b := startRegion(t, "london", filepath.Join(dir, "london"), "--cluster-port", fmt.Sprint(freePort(t)),
		"--routes", "nats-route://"+px.addr)
	c := &cluster{t: t, procs: []*proc{a, b}}
	c.waitMesh()

	var written atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, p := range c.procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				r, err := p.try("PATCH", fmt.Sprintf("/v1/docs/proxy/docs/%s-%d", p.name, i), fmt.Sprintf(`{"v":%d}`, i))
				if err != nil || r.Status != 200 {
					t.Errorf("write at %s: %v %d %s", p.name, err, r.Status, r.Body)
					return
				}
				written.Add(1)
				time.Sleep(time.Millisecond)
			}
		}()
	}
	waitWritten := func(n int64) {
		eventually(t, 20*time.Second, func() error {
			if w := written.Load(); w < n {
				return fmt.Errorf("%d writes so far", w)
			}
			return nil
		})
	}
	waitWritten(200)
	px.cut()
	// While cut nothing crosses: a write at nyc stays at nyc.
	a.do("PATCH", "/v1/docs/proxy/marks/cut", `{"v":true}`)
	waitWritten(written.Load() + 300)
	if r := b.do("GET", "/v1/docs/proxy/marks/cut", nil); r.Status != 404 {
		t.Fatalf("london got a write across a cut route: %d %s", r.Status, r.Body)
	}
	px.restore()
	waitWritten(written.Load() + 300)
	close(stop)
	wg.Wait()
	eventually(t, 30*time.Second, func() error { return sameVectors("proxy", a, b) })
	na, nb := a.countDocs("proxy", "docs"), b.countDocs("proxy", "docs")
	if na != int(written.Load()) || nb != na {
		t.Fatalf("documents: nyc %d, london %d, written %d", na, nb, written.Load())
	}
	if r := b.do("GET", "/v1/docs/proxy/marks/cut", nil); r.Status != 200 {
		t.Fatalf("the write made during the cut did not arrive: %d %s", r.Status, r.Body)
	}
	if px.copied.Load() == 0 {
		t.Fatal("nothing went through the proxy")
	}
}

var natsURLRE = regexp.MustCompile(`nats=(nats://[0-9.:]+)`)

// natsURL is the client URL of p's embedded NATS server, from its log.
func (p *proc) natsURL() string {
	p.t.Helper()
	m := natsURLRE.FindStringSubmatch(p.Logs())
	if m == nil {
		p.t.Fatalf("%s logs no NATS client URL:\n%s", p.name, p.Logs())
	}
	return m[1]
}

// metric reads one sample from p's /metrics (0 when absent).
func (p *proc) metric(name string) float64 {
	p.t.Helper()
	r := p.do("GET", "/metrics", nil)
	sc := bufio.NewScanner(strings.NewReader(string(r.Body)))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

// TestReplayedBatchesChangeNothing captures the live batches regions
// publish, then publishes them again, twice, the second time in reverse:
// documents, vectors and sequences stay exactly as they were.
func TestReplayedBatchesChangeNothing(t *testing.T) {
	c := startCluster(t, 3, "--nats-port", "-1")
	nc, err := nats.Connect(c.procs[0].natsURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	type captured struct {
		subj string
		data []byte
		from string
	}
	var mu sync.Mutex
	var got []captured
	sub, err := nc.Subscribe("syncd.*.changes.*", func(m *nats.Msg) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, captured{m.Subject, m.Data, m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]})
	})
	if err != nil {
		t.Fatal(err)
	}
	nc.Flush()

	nyc := c.procs[0]
	nyc.do("PUT", "/v1/schema/replay/docs", `{"fields":{"n":"counter","tags":"orset","title":"manual"}}`)
	c.converged("/v1/schema/replay/docs", 10*time.Second)
	docs := []string{"a", "b", "c"}
	for round := 0; round < 3; round++ {
		for _, p := range c.procs {
			for _, d := range docs {
				path := "/v1/docs/replay/docs/" + d
				p.do("PATCH", path, fmt.Sprintf(`{"v":%q,"title":%q}`, p.name, p.name))
				p.do("POST", path+"/ops", fmt.Sprintf(`{"ops":[{"field":"n","op":"incr","value":%d},{"field":"tags","op":"add","value":%q},{"field":"tags","op":"remove","value":"x"}]}`, round+1, p.name))
			}
		}
	}
	c.procs[1].do("DELETE", "/v1/docs/replay/docs/c", nil)
	eventually(t, 20*time.Second, func() error { return sameVectors("replay", c.procs...) })
	for _, d := range docs {
		c.converged("/v1/docs/replay/docs/"+d, 10*time.Second)
	}
	sub.Unsubscribe()
	mu.Lock()
	batches := slices.Clone(got)
	mu.Unlock()
	if len(batches) < 10 {
		t.Fatalf("captured only %d batches", len(batches))
	}

	type snapshot struct {
		docs   map[string]string
		vector map[string]uint64
		seq    uint64
		hist   string
	}
	snap := func(p *proc) snapshot {
		s := snapshot{docs: map[string]string{}, vector: p.vector("replay"), seq: p.status().Namespaces["replay"].Seq}
		for _, d := range docs {
			s.docs[d] = string(p.do("GET", "/v1/docs/replay/docs/"+d, nil).Body)
		}
		s.hist = string(p.do("GET", "/v1/conflicts/replay", nil).Body)
		return s
	}
	const batchMetric = `syncd_messages_received_total{type="batch"}`
	before := map[string]snapshot{}
	seen := map[string]float64{}
	for _, p := range c.procs {
		before[p.name] = snap(p)
		seen[p.name] = p.metric(batchMetric)
	}

	replay := slices.Clone(batches)
	for i, j := 0, len(batches)-1; j >= 0; i, j = i+1, j-1 {
		replay = append(replay, batches[j])
	}
	for _, b := range replay {
		if err := nc.Publish(b.subj, b.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// Wait until every region has stepped every replayed batch not its
	// own, so the comparison below is not made too early.
	for _, p := range c.procs {
		id := p.status().Replica
		want := 0
		for _, b := range replay {
			if b.from != id {
				want++
			}
		}
		eventually(t, 20*time.Second, func() error {
			if n := p.metric(batchMetric) - seen[p.name]; n < float64(want) {
				return fmt.Errorf("%s stepped %v of %d replayed batches", p.name, n, want)
			}
			return nil
		})
	}
	for _, p := range c.procs {
		after := snap(p)
		b := before[p.name]
		if !maps.Equal(b.vector, after.vector) || b.seq != after.seq {
			t.Errorf("%s: vector/seq moved: %v/%d -> %v/%d", p.name, b.vector, b.seq, after.vector, after.seq)
		}
		for _, d := range docs {
			if b.docs[d] != after.docs[d] {
				t.Errorf("%s: doc %s changed:\n%s\n%s", p.name, d, b.docs[d], after.docs[d])
			}
		}
		if b.hist != after.hist {
			t.Errorf("%s: conflict inbox changed:\n%s\n%s", p.name, b.hist, after.hist)
		}
	}
	t.Logf("replayed %d batches (%d captured)", len(replay), len(batches))
}

// hlcMillis is the wall part of an HLC in its 16-hex-digit form.
func hlcMillis(t *testing.T, s string) int64 {
	t.Helper()
	v, err := strconv.ParseUint(s, 16, 64)
	if err != nil || len(s) != 16 {
		t.Fatalf("hlc %q: %v", s, err)
	}
	return int64(v >> 16)
}

// TestClockAheadRefused restarts a region with its clock ten minutes
// ahead: the others refuse its new writes with a clear log line, their own
// clocks are not dragged forward, they show it lagging, and writes among
// the healthy regions (and to the fast one) keep converging.
func TestClockAheadRefused(t *testing.T) {
	c := startCluster(t, 3)
	nyc, london, tokyo := c.procs[0], c.procs[1], c.procs[2]
	tokyo.do("PATCH", "/v1/docs/clock/docs/before", `{"v":1}`)
	c.converged("/v1/docs/clock/docs/before", 10*time.Second)
	// Names travel on heartbeats: wait for one, so the refusal below can
	// name tokyo.
	for _, p := range []*proc{nyc, london} {
		eventually(t, 10*time.Second, func() error {
			for _, pr := range p.status().Peers {
				if pr.NS == "clock" && pr.Node == "tokyo" {
					return nil
				}
			}
			return fmt.Errorf("%s has not heard tokyo's heartbeat", p.name)
		})
	}

	tokyo.restartWith(append(c.clusterArgs(2), "--test-clock-offset", "10m")...)
	tokyo.do("PATCH", "/v1/docs/clock/docs/ahead", `{"v":1}`)
	for _, p := range []*proc{nyc, london} {
		eventually(t, 15*time.Second, func() error {
			if !strings.Contains(p.Logs(), "remote clock too far ahead") {
				return fmt.Errorf("%s has not logged the refusal", p.name)
			}
			return nil
		})
		if r := p.do("GET", "/v1/docs/clock/docs/ahead", nil); r.Status != 404 {
			t.Fatalf("%s applied a change stamped ten minutes ahead: %d %s", p.name, r.Status, r.Body)
		}
		line := ""
		for _, l := range strings.Split(p.Logs(), "\n") {
			if strings.Contains(l, "remote clock too far ahead") {
				line = l
				break
			}
		}
		if !strings.Contains(line, "tokyo") || !strings.Contains(line, "max skew") {
			t.Errorf("%s: the refusal should name the region and the bound: %s", p.name, line)
		}
		// Not dragged forward: the clock stays near real time.
		if ahead := time.Duration(hlcMillis(t, p.status().HLC)-time.Now().UnixMilli()) * time.Millisecond; ahead > time.Minute {
			t.Fatalf("%s's clock was dragged %v ahead", p.name, ahead)
		}
	}

	// Healthy regions keep replicating among themselves and to tokyo.
	for i := 0; i < 20; i++ {
		nyc.do("PATCH", fmt.Sprintf("/v1/docs/clock/docs/n%d", i), `{"v":1}`)
		london.do("POST", "/v1/docs/clock/docs/shared/ops", `{"ops":[{"field":"n","op":"set","value":1}]}`)
	}
	eventually(t, 15*time.Second, func() error {
		for _, p := range c.procs {
			if r := p.do("GET", "/v1/docs/clock/docs/n19", nil); r.Status != 200 {
				return fmt.Errorf("%s lacks nyc's write", p.name)
			}
			if r := p.do("GET", "/v1/docs/clock/docs/shared", nil); r.Status != 200 {
				return fmt.Errorf("%s lacks london's write", p.name)
			}
		}
		return sameVectors("clock", nyc, london)
	})

	// nyc sees tokyo ahead of what it applied: lag in changes, and in
	// seconds since the newest change it did apply from tokyo.
	eventually(t, 10*time.Second, func() error {
		for _, pr := range nyc.status().Peers {
			if pr.NS == "clock" && pr.Node == "tokyo" {
				if pr.LagChanges == 0 || pr.LagSeconds <= 0 {
					return fmt.Errorf("tokyo's lag at nyc: %+v", pr)
				}
				return nil
			}
		}
		return fmt.Errorf("nyc lists no peer tokyo in clock")
	})
	// The same lag as Prometheus gauges.
	eventually(t, 10*time.Second, func() error {
		m := string(nyc.do("GET", "/metrics", nil).Body)
		for _, name := range []string{"syncd_peer_lag_changes", "syncd_peer_lag_seconds"} {
			v, ok := gauge(m, name, `ns="clock"`, `peer="tokyo"`)
			if !ok || v <= 0 {
				return fmt.Errorf("%s for tokyo at nyc: %v (found %v)", name, v, ok)
			}
		}
		return nil
	})
}

// gauge finds the value of a metric in Prometheus text whose labels
// include all of labels.
func gauge(text, name string, labels ...string) (float64, bool) {
	for _, l := range strings.Split(text, "\n") {
		rest, ok := strings.CutPrefix(l, name+"{")
		if !ok {
			continue
		}
		ls, val, ok := strings.Cut(rest, "} ")
		if !ok || !containsAll(ls, labels) {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		return v, err == nil
	}
	return 0, false
}

func containsAll(s string, subs []string) bool {
	for _, x := range subs {
		if !strings.Contains(s, x) {
			return false
		}
	}
	return true
}

// TestStatusPeers checks that /v1/status lists every peer with its name,
// replica, last heartbeat and lag, and that `syncd status` prints them.
func TestStatusPeers(t *testing.T) {
	c := startCluster(t, 3)
	ids := map[string]string{}
	for _, p := range c.procs {
		ids[p.name] = p.status().Replica
	}
	nyc := c.procs[0]
	writeDocs(t, nyc, "stat", "docs", "d", 50, 4)
	eventually(t, 10*time.Second, func() error { return sameVectors("stat", c.procs...) })
	eventually(t, 10*time.Second, func() error {
		var peers []string
		for _, pr := range nyc.status().Peers {
			if pr.NS != "stat" {
				continue
			}
			if pr.Replica != ids[pr.Node] {
				return fmt.Errorf("peer %s listed with replica %s, it is %s", pr.Node, pr.Replica, ids[pr.Node])
			}
			if pr.LastHeartbeat < 0 || pr.LastHeartbeat > 5 {
				return fmt.Errorf("peer %s last heard %vs ago", pr.Node, pr.LastHeartbeat)
			}
			if pr.LagChanges != 0 || pr.Vector[ids["nyc"]] != 50 {
				return fmt.Errorf("peer %s: %+v", pr.Node, pr)
			}
			peers = append(peers, pr.Node)
		}
		if !slices.Equal(peers, []string{"london", "tokyo"}) {
			return fmt.Errorf("peers of stat at nyc: %v", peers)
		}
		return nil
	})
	m := string(nyc.do("GET", "/metrics", nil).Body)
	for _, peer := range []string{"london", "tokyo"} {
		if v, ok := gauge(m, "syncd_peer_lag_changes", `ns="stat"`, `peer="`+peer+`"`, `replica="`+ids[peer]+`"`); !ok || v != 0 {
			t.Fatalf("syncd_peer_lag_changes for %s: %v (found %v)\n%s", peer, v, ok, m)
		}
		if _, ok := gauge(m, "syncd_peer_last_heartbeat_seconds", `ns="stat"`, `peer="`+peer+`"`); !ok {
			t.Fatalf("no syncd_peer_last_heartbeat_seconds for %s:\n%s", peer, m)
		}
	}
	out, err := exec.Command(binary, "status", "--http", nyc.addr).CombinedOutput()
	if err != nil {
		t.Fatalf("syncd status: %v\n%s", err, out)
	}
	text := string(out)
	for _, want := range []string{"region nyc", "PEER", "LAG (CHANGES)", "LAG (SECONDS)"} {
		if !strings.Contains(text, want) {
			t.Fatalf("syncd status lacks %q:\n%s", want, text)
		}
	}
	rows := 0
	for _, l := range strings.Split(text, "\n") {
		if f := strings.Fields(l); len(f) >= 6 && (f[0] == "london" || f[0] == "tokyo") && f[1] == "stat" {
			rows++
		}
	}
	if rows != 2 {
		t.Fatalf("syncd status should show london and tokyo for stat:\n%s", text)
	}
}

// writeConfig writes a nats-server config file.
func writeConfig(t *testing.T, dir, name, text string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// checkReplicates writes at every region and waits until each holds
// every write.
func checkReplicates(t *testing.T, ns string, ps ...*proc) {
	t.Helper()
	for _, p := range ps {
		p.do("PATCH", fmt.Sprintf("/v1/docs/%s/docs/%s", ns, p.name), fmt.Sprintf(`{"from":%q}`, p.name))
	}
	c := &cluster{t: t, procs: ps}
	for _, p := range ps {
		if r := c.converged(fmt.Sprintf("/v1/docs/%s/docs/%s", ns, p.name), 20*time.Second); field(r, "from") != fmt.Sprintf("%q", p.name) {
			t.Fatalf("%s", r.Body)
		}
	}
}

// TestNATSConfigFile bridges three regions with routes declared in
// standard nats-server config files (--nats-config) instead of flags.
func TestNATSConfigFile(t *testing.T) {
	dir := t.TempDir()
	names := []string{"nyc", "london", "tokyo"}
	ports := []int{freePort(t), freePort(t), freePort(t)}
	var ps []*proc
	for i, n := range names {
		var routes []string
		for j, p := range ports {
			if j != i {
				routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", p))
			}
		}
		conf := writeConfig(t, dir, n+".conf", fmt.Sprintf(`
# %s: a standard nats-server config (no client port: syncd picks one)
max_payload: 1MB
cluster {
  name: syncd
  listen: 127.0.0.1:%d
  routes: [
    %s
  ]
}
`, n, ports[i], strings.Join(routes, "\n    ")))
		ps = append(ps, startRegion(t, n, filepath.Join(dir, n), "--nats-config", conf))
	}
	checkReplicates(t, "conf", ps...)
}

// TestNATSGatewayAndLeafnodeConfigs bridges regions the other two ways a
// nats-server config offers: two regions as gateways of two NATS
// clusters, and a third as a leafnode of one of them.
func TestNATSGatewayAndLeafnodeConfigs(t *testing.T) {
	dir := t.TempDir()
	gwUS, gwEU, leaf := freePort(t), freePort(t), freePort(t)
	// A server with both gateways and leafnodes needs a system account.
	us := writeConfig(t, dir, "us.conf", fmt.Sprintf(`
listen: 127.0.0.1:-1
accounts { SYS: {} }
system_account: SYS
gateway {
  name: us
  listen: 127.0.0.1:%d
  gateways: [ { name: eu, url: "nats://127.0.0.1:%d" } ]
}
leafnodes { listen: 127.0.0.1:%d }
`, gwUS, gwEU, leaf))
	eu := writeConfig(t, dir, "eu.conf", fmt.Sprintf(`
listen: 127.0.0.1:-1
gateway {
  name: eu
  listen: 127.0.0.1:%d
  gateways: [ { name: us, url: "nats://127.0.0.1:%d" } ]
}
`, gwEU, gwUS))
	edge := writeConfig(t, dir, "edge.conf", fmt.Sprintf(`
listen: 127.0.0.1:-1
leafnodes { remotes: [ { url: "nats-leaf://127.0.0.1:%d" } ] }
`, leaf))
	ps := []*proc{
		startRegion(t, "nyc", filepath.Join(dir, "nyc"), "--nats-config", us),
		startRegion(t, "london", filepath.Join(dir, "london"), "--nats-config", eu),
		startRegion(t, "store42", filepath.Join(dir, "store42"), "--nats-config", edge),
	}
	checkReplicates(t, "gw", ps...)
}

// TestNATSURL runs one region against another region's embedded NATS
// server (--nats-url), as it would against any NATS deployment.
func TestNATSURL(t *testing.T) {
	dir := t.TempDir()
	port := freePort(t)
	a := startRegion(t, "nyc", filepath.Join(dir, "nyc"), "--nats-port", fmt.Sprint(port))
	b := startRegion(t, "london", filepath.Join(dir, "london"), "--nats-url", fmt.Sprintf("nats://127.0.0.1:%d", port))
	checkReplicates(t, "url", a, b)
	// The deployment restarts: london reconnects by itself, says so, and
	// replication goes on.
	a.restart()
	eventually(t, 20*time.Second, func() error {
		if l := b.Logs(); !strings.Contains(l, "nats disconnected") || !strings.Contains(l, "nats reconnected") {
			return fmt.Errorf("london has not logged a disconnect and a reconnect")
		}
		return nil
	})
	b.do("PATCH", "/v1/docs/url/docs/again", `{"v":1}`)
	(&cluster{t: t, procs: []*proc{a, b}}).converged("/v1/docs/url/docs/again", 20*time.Second)
}

// TestAckAllOnNewNamespace writes with ack=all to a namespace no region
// has heard of yet: the write still waits for every known region.
func TestAckAllOnNewNamespace(t *testing.T) {
	c := startCluster(t, 3)
	london := c.procs[1]
	r := london.do("PATCH", "/v1/docs/fresh/docs/x?ack=all&timeout=10s", `{"v":1}`)
	if r.Status != 200 || r.JSON["replicated"] != true || r.JSON["regions"] != 3.0 {
		t.Fatalf("ack=all on a new namespace: %d %s", r.Status, r.Body)
	}
	for _, p := range c.procs {
		if g := p.do("GET", "/v1/docs/fresh/docs/x", nil); g.Status != 200 {
			t.Fatalf("%s does not hold a write acknowledged with ack=all: %d %s", p.name, g.Status, g.Body)
		}
	}
}
