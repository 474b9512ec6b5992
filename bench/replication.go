package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"
	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/daemon"
	"github.com/syncd/syncd/server"
)

// ReplicationOptions size `syncd bench replication`.
type ReplicationOptions struct {
	Dir string // scratch space (default a temp dir, removed after)
	// Exe is the syncd binary the regions run as (default this
	// executable). InProcess runs them inside this process instead, so
	// one CPU profile (--cpuprofile) covers both.
	Exe       string
	InProcess bool
	Rate      int           // writes/s of the propagation phase (default 1,000)
	Duration  time.Duration // length of the propagation and throughput phases (default 5s)
	Ops       int           // changes per write request in the throughput phases (default 100)
	Conns     int           // concurrent writers in the throughput phases (default 8)
	CatchUp   int           // changes written while B is down (default 200,000)
	Heal      int           // divergent changes per side of the partition (default 10,000)
	Progress  io.Writer
}

func (o *ReplicationOptions) defaults() {
	if o.Rate <= 0 {
		o.Rate = 1000
	}
	if o.Duration <= 0 {
		o.Duration = 5 * time.Second
	}
	if o.Ops <= 0 {
		o.Ops = 100
	}
	if o.Conns <= 0 {
		o.Conns = 8
	}
	if o.CatchUp <= 0 {
		o.CatchUp = 200_000
	}
	if o.Heal <= 0 {
		o.Heal = 10_000
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
}

const benchNS = "bench"

// Replication runs the figures of issue 4 on two regions bridged by a NATS
// route on loopback, each (by default) its own process.
func Replication(ctx context.Context, o ReplicationOptions) (*Report, error) {
	o.defaults()
	cleanup, err := scratch(&o.Dir, "syncd-bench-repl-")
	if err != nil {
		return nil, err
	}
	defer cleanup()
	if o.Exe == "" && !o.InProcess {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		o.Exe = exe
	}
	rep := &Report{Name: "replication"}
	say := func(f string, a ...any) { fmt.Fprintf(o.Progress, f+"\n", a...) }

	say("raw NATS: one-way publish and request over a route between two embedded servers...")
	raw, err := rawRoute(ctx, o.Rate, min(o.Duration, 3*time.Second))
	if err != nil {
		return nil, fmt.Errorf("raw nats: %w", err)
	}
	say("raw apply: 1,000-change batches through the replica and sqlitestore, in process...")
	apply, err := applyBatches(ctx, filepath.Join(o.Dir, "apply"), 50)
	if err != nil {
		return nil, err
	}

	pa, pb, err := freePorts()
	if err != nil {
		return nil, err
	}
	a := &benchRegion{o: &o, name: "a", dir: filepath.Join(o.Dir, "a"), clusterPort: pa, route: pb}
	b := &benchRegion{o: &o, name: "b", dir: filepath.Join(o.Dir, "b"), clusterPort: pb, route: pa}
	say("starting regions a and b (%s)...", map[bool]string{true: "in this process", false: "separate processes"}[o.InProcess])
	for _, r := range []*benchRegion{a, b} {
		if err := r.start(ctx); err != nil {
			return nil, err
		}
		defer r.stop()
	}
	c := httpClient(o.Conns * 2)
	if err := meet(ctx, c, a, b); err != nil {
		return nil, err
	}

	say("propagation: %d writes/s at a for %s, timed to their arrival at b's websocket...", o.Rate, o.Duration)
	prop, ack, err := propagation(ctx, c, a, b, o.Rate, o.Duration)
	if err != nil {
		return nil, fmt.Errorf("propagation: %w", err)
	}
	rep.add("raw_nats_route_p50_ms", "raw NATS publish over a route, one way, p50", raw.oneWay.pct(50), "ms")
	rep.add("raw_nats_route_p99_ms", "raw NATS publish over a route, one way, p99", raw.oneWay.pct(99), "ms")
	rep.add("raw_nats_request_p50_ms", "raw NATS request/reply over a route, p50", raw.rtt.pct(50), "ms")
	rep.add("write_ack_p50_ms", "HTTP write acknowledged at a, p50 (for context)", ack.pct(50), "ms")
	rep.add("write_ack_p99_ms", "HTTP write acknowledged at a, p99 (for context)", ack.pct(99), "ms")
	rep.add("propagation_p90_ms", "write acked at a -> applied at b, p90", prop.pct(90), "ms")
	rep.vs("propagation_p50_ms", fmt.Sprintf("write acked at a -> applied at b, %d/s, p50", o.Rate), prop.pct(50), "ms", "raw_nats_route_p50_ms", "<= 1 ms")
	rep.vs("propagation_p99_ms", fmt.Sprintf("write acked at a -> applied at b, %d/s, p99", o.Rate), prop.pct(99), "ms", "raw_nats_route_p99_ms", "<= 5 ms")

	say("write concern and session tokens: one writer, ack=2 at a, then a read at b after its token...")
	sc, err := sessionCosts(ctx, c, a, b, min(o.Rate, 1000))
	if err != nil {
		return nil, fmt.Errorf("session costs: %w", err)
	}
	rep.add("write_local_p50_ms", "one writer at a, ack=local, p50", sc.local.pct(50), "ms")
	rep.vs("ack2_write_p50_ms", "the same writer, ack=2 (b holds it durably), p50", sc.ack2.pct(50), "ms", "write_local_p50_ms", "")
	rep.add("read_p50_ms", "plain read at b, p50", sc.read.pct(50), "ms")
	rep.vs("after_read_p50_ms", "read at b with after= the token of a write just acked at a, p50", sc.after.pct(50), "ms", "read_p50_ms", "")

	say("sustained replication: %d writers of %d-change requests at a for %s...", o.Conns, o.Ops, o.Duration)
	th, err := sustained(ctx, c, a, b, o)
	if err != nil {
		return nil, fmt.Errorf("sustained: %w", err)
	}
	rep.add("source_changes_per_s", "changes committed at a under the same load", th.source, "change/s")
	rep.vs("replication_changes_per_s", "changes applied at b while a writes", th.applied, "change/s", "source_changes_per_s", ">= 50,000/s, b keeping up")
	rep.add("replication_lag_max_changes", "largest lag of b behind a during the load", float64(th.maxLag), "changes")
	rep.add("replication_drain_ms", "b caught up this long after a stopped writing", th.drain.Seconds()*1000, "ms")

	say("catch-up: b stopped, %d changes written at a, b restarted...", o.CatchUp)
	cu, err := catchUp(ctx, c, a, b, o)
	if err != nil {
		return nil, fmt.Errorf("catch-up: %w", err)
	}
	rep.add("apply_batch_per_s", "1,000-change batches applied in process (no transport)", apply, "change/s")
	rep.vs("catchup_changes_per_s", fmt.Sprintf("%d changes applied by b catching up after downtime", o.CatchUp), cu.rate, "change/s", "apply_batch_per_s", ">= 100,000/s")
	rep.add("catchup_detect_ms", "b serving -> first change applied (route up, heartbeat seen)", cu.detect.Seconds()*1000, "ms")
	rep.add("catchup_total_ms", "b serving -> caught up", cu.total.Seconds()*1000, "ms")

	say("heal: b isolated, %d changes on each side, then healed...", o.Heal)
	heal, err := healConverge(ctx, c, a, b, o)
	if err != nil {
		return nil, fmt.Errorf("heal: %w", err)
	}
	rep.vs("heal_converge_ms", fmt.Sprintf("%d divergent changes per side converged after a heal", o.Heal), heal.Seconds()*1000, "ms", "", "<= 2000 ms")
	rep.Note = append(rep.Note,
		"regions "+map[bool]string{true: "in this process", false: "as separate processes"}[o.InProcess]+", bridged by a NATS route on loopback",
		fmt.Sprintf("throughput phases write %d-change requests from %d connections", o.Ops, o.Conns))
	return rep, nil
}

func freePorts() (int, int, error) {
	var ps []int
	for range 2 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, 0, err
		}
		defer l.Close()
		ps = append(ps, l.Addr().(*net.TCPAddr).Port)
	}
	return ps[0], ps[1], nil
}

// benchRegion is one region under test: a `syncd serve` process, or a
// daemon.Region in this process.
type benchRegion struct {
	o           *ReplicationOptions
	name, dir   string
	clusterPort int
	route       int
	base        string // http://host:port
	id          string // replica id

	cmd    *exec.Cmd
	exited chan struct{}
	logMu  sync.Mutex
	logs   []string // the last lines of stderr, for errors

	cancel context.CancelFunc
	reg    *daemon.Region
}

func (r *benchRegion) start(ctx context.Context) error {
	routes := fmt.Sprintf("nats-route://127.0.0.1:%d", r.route)
	if r.o.InProcess {
		rctx, cancel := context.WithCancel(ctx)
		reg, err := daemon.Start(rctx, daemon.Config{Node: r.name, DataDir: r.dir, HTTPAddr: "127.0.0.1:0",
			ClusterPort: r.clusterPort, Routes: []string{routes}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			cancel()
			return fmt.Errorf("start %s: %w", r.name, err)
		}
		r.cancel, r.reg, r.base = cancel, reg, "http://"+reg.Addr
	} else {
		r.cmd = exec.Command(r.o.Exe, "serve", "--node", r.name, "--data", r.dir, "--http", "127.0.0.1:0",
			"--cluster-port", fmt.Sprint(r.clusterPort), "--routes", routes)
		stderr, err := r.cmd.StderrPipe()
		if err != nil {
			return err
		}
		if err := r.cmd.Start(); err != nil {
			return fmt.Errorf("start %s: %w", r.name, err)
		}
		r.exited = make(chan struct{})
		addr := make(chan string, 1)
		go func() {
			// Keep reading: a full pipe would block the region.
			sc := bufio.NewScanner(stderr)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				line := sc.Text()
				r.logMu.Lock()
				if r.logs = append(r.logs, line); len(r.logs) > 20 {
					r.logs = r.logs[1:]
				}
				r.logMu.Unlock()
				if m := servingRE.FindStringSubmatch(line); m != nil {
					select {
					case addr <- m[1]:
					default:
					}
				}
			}
			r.cmd.Wait()
			close(r.exited)
		}()
		select {
		case a := <-addr:
			r.base = "http://" + a
		case <-r.exited:
			return fmt.Errorf("region %s exited: %s", r.name, r.lastLogs())
		case <-time.After(60 * time.Second):
			r.cmd.Process.Kill()
			return fmt.Errorf("region %s did not start: %s", r.name, r.lastLogs())
		}
	}
	st, err := r.status(ctx, http.DefaultClient)
	if err != nil {
		return err
	}
	r.id = st.Replica.String()
	return nil
}

func (r *benchRegion) lastLogs() string {
	r.logMu.Lock()
	defer r.logMu.Unlock()
	return strings.Join(r.logs, "\n")
}

// stop shuts the region down cleanly; stopping a stopped region does
// nothing.
func (r *benchRegion) stop() error {
	if r.reg != nil {
		r.cancel()
		err := r.reg.Wait()
		r.reg = nil
		return err
	}
	if r.cmd == nil {
		return nil
	}
	defer func() { r.cmd = nil }()
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.exited:
		return nil
	case <-time.After(30 * time.Second):
		r.cmd.Process.Kill()
		<-r.exited
		return fmt.Errorf("region %s did not stop on SIGTERM", r.name)
	}
}

func (r *benchRegion) status(ctx context.Context, c *http.Client) (server.StatusResponse, error) {
	var st server.StatusResponse
	req, err := http.NewRequestWithContext(ctx, "GET", r.base+"/v1/status", nil)
	if err != nil {
		return st, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return st, fmt.Errorf("status of %s: %w", r.name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return st, fmt.Errorf("status of %s: %s", r.name, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("status of %s: %w", r.name, err)
	}
	return st, nil
}

// vector is the region's durable vector of the bench namespace.
func (r *benchRegion) vector(ctx context.Context, c *http.Client) (crdt.Vector, error) {
	st, err := r.status(ctx, c)
	if err != nil {
		return nil, err
	}
	v := st.Namespaces[benchNS].Vector
	if v == nil {
		v = crdt.Vector{}
	}
	return v, nil
}

// waitUntil polls f every interval until it returns true, an error, or
// the deadline.
func waitUntil(ctx context.Context, within, every time.Duration, f func() (bool, error)) error {
	deadline := time.Now().Add(within)
	for {
		ok, err := f()
		if err != nil || ok {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %s", within)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(every):
		}
	}
}

// meet writes at both regions and waits until each has the other's write
// and lists it as a peer, so the phases start on a live route.
func meet(ctx context.Context, c *http.Client, a, b *benchRegion) error {
	for _, r := range []*benchRegion{a, b} {
		if err := doReq(c, "PATCH", r.base+"/v1/docs/"+benchNS+"/meet/"+r.name, []byte(`{"up":true}`), 200); err != nil {
			return err
		}
	}
	return waitUntil(ctx, 30*time.Second, 20*time.Millisecond, func() (bool, error) {
		for _, r := range []*benchRegion{a, b} {
			st, err := r.status(ctx, c)
			if err != nil {
				return false, err
			}
			if len(st.Peers) == 0 || st.Namespaces[benchNS].Vector[st.Peers[0].Replica] == 0 {
				return false, nil
			}
		}
		return true, nil
	})
}

// opsBody is a write of n changes: fields f0..f(n-1) of one document.
func opsBody(n int, v int) []byte {
	var b bytes.Buffer
	b.WriteString(`{"ops":[`)
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"field":"f%d","op":"set","value":%d}`, i, v)
	}
	b.WriteString(`]}`)
	return b.Bytes()
}

type rawResult struct{ oneWay, rtt latencies }

// rawRoute is the floor under propagation: two embedded NATS servers with
// a route between them on loopback, a client connected in process to each
// as a region's is; timestamped publishes at rate, then request/reply.
func rawRoute(ctx context.Context, rate int, d time.Duration) (rawResult, error) {
	ports := [2]int{}
	var err error
	if ports[0], ports[1], err = freePorts(); err != nil {
		return rawResult{}, err
	}
	var conns [2]*nats.Conn
	for i := range 2 {
		so := &natsserver.Options{ServerName: fmt.Sprintf("raw%d", i), Host: "127.0.0.1", Port: natsserver.RANDOM_PORT,
			NoSigs: true, NoLog: true, Cluster: natsserver.ClusterOpts{Name: "raw", Host: "127.0.0.1", Port: ports[i]},
			Routes: natsserver.RoutesFromStr(fmt.Sprintf("nats-route://127.0.0.1:%d", ports[1-i]))}
		s, err := natsserver.NewServer(so)
		if err != nil {
			return rawResult{}, err
		}
		go s.Start()
		defer s.Shutdown()
		if !s.ReadyForConnections(10 * time.Second) {
			return rawResult{}, errors.New("server not ready")
		}
		nc, err := nats.Connect("", nats.InProcessServer(s))
		if err != nil {
			return rawResult{}, err
		}
		defer nc.Close()
		conns[i] = nc
	}
	var mu sync.Mutex
	var res rawResult
	got := make(chan struct{}, 1)
	sub, err := conns[1].Subscribe("raw.oneway", func(m *nats.Msg) {
		sent := int64(binary.BigEndian.Uint64(m.Data))
		mu.Lock()
		if sent > 0 {
			res.oneWay = append(res.oneWay, time.Duration(time.Now().UnixNano()-sent))
		}
		mu.Unlock()
		select {
		case got <- struct{}{}:
		default:
		}
	})
	if err != nil {
		return rawResult{}, err
	}
	defer sub.Unsubscribe()
	if _, err := conns[1].Subscribe("raw.rtt", func(m *nats.Msg) { m.Respond(m.Data) }); err != nil {
		return rawResult{}, err
	}
	conns[1].Flush()
	// A payload the size of a one-change batch.
	payload := make([]byte, 512)
	// Wait for the subscription to cross the route.
	if err := waitUntil(ctx, 10*time.Second, 10*time.Millisecond, func() (bool, error) {
		conns[0].Publish("raw.oneway", payload)
		select {
		case <-got:
			return true, nil
		case <-time.After(10 * time.Millisecond):
			return false, nil
		}
	}); err != nil {
		return rawResult{}, fmt.Errorf("route: %w", err)
	}
	pace(ctx, rate, d, func(int) {
		binary.BigEndian.PutUint64(payload, uint64(time.Now().UnixNano()))
		conns[0].Publish("raw.oneway", payload)
	})
	conns[0].Flush()
	time.Sleep(100 * time.Millisecond)
	for i := 0; i < rate && ctx.Err() == nil; i++ {
		t0 := time.Now()
		if _, err := conns[0].Request("raw.rtt", payload, 5*time.Second); err != nil {
			return rawResult{}, err
		}
		res.rtt = append(res.rtt, time.Since(t0))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(res.oneWay) == 0 {
		return rawResult{}, errors.New("no message crossed the route")
	}
	return res, nil
}

// pace calls f(i) rate times a second for d, on one goroutine; a call
// that runs late is not made up for with a burst beyond the schedule.
func pace(ctx context.Context, rate int, d time.Duration, f func(i int)) {
	start := time.Now()
	interval := time.Second / time.Duration(rate)
	for i := 0; ctx.Err() == nil; i++ {
		at := start.Add(time.Duration(i) * interval)
		if at.Sub(start) >= d {
			return
		}
		if w := time.Until(at); w > 0 {
			time.Sleep(w)
		}
		f(i)
	}
}

// wsFollower is a device connected to a region's websocket: it stamps the
// arrival time of every live change it is sent.
type wsFollower struct {
	c       *websocket.Conn
	mu      sync.Mutex
	arrived map[string]time.Time // doc id -> first arrival
	synced  chan struct{}
	err     error
	done    chan struct{}
}

func follow(ctx context.Context, r *benchRegion) (*wsFollower, error) {
	u := "ws" + strings.TrimPrefix(r.base, "http") + "/v1/ws"
	c, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{Subprotocols: []string{server.Subprotocol}})
	if err != nil {
		return nil, fmt.Errorf("websocket to %s: %w", r.name, err)
	}
	c.SetReadLimit(64 << 20)
	hello, _ := json.Marshal(server.Hello{Type: "hello", Version: server.ProtocolVersion, NS: benchNS,
		Replica: uuid.New(), Vector: crdt.Vector{}, Colls: []string{"lat"}})
	if err := c.Write(ctx, websocket.MessageText, hello); err != nil {
		c.CloseNow()
		return nil, err
	}
	f := &wsFollower{c: c, arrived: map[string]time.Time{}, synced: make(chan struct{}), done: make(chan struct{})}
	go f.read(ctx)
	select {
	case <-f.synced:
		return f, nil
	case <-f.done:
		return nil, fmt.Errorf("websocket to %s: %w", r.name, f.err)
	case <-time.After(30 * time.Second):
		c.CloseNow()
		return nil, errors.New("websocket: no initial sync within 30s")
	}
}

func (f *wsFollower) read(ctx context.Context) {
	defer close(f.done)
	var msg struct {
		Type    string `json:"type"`
		Sync    bool   `json:"sync"`
		More    bool   `json:"more"`
		Changes []struct {
			Doc string `json:"doc"`
		} `json:"changes"`
	}
	synced := false
	for {
		_, data, err := f.c.Read(ctx)
		now := time.Now()
		if err != nil {
			f.err = err
			return
		}
		msg.Changes = msg.Changes[:0]
		msg.Sync, msg.More = false, false
		if err := json.Unmarshal(data, &msg); err != nil {
			f.err = err
			return
		}
		if msg.Type != "batch" {
			continue
		}
		if msg.Sync {
			if !msg.More && !synced {
				synced = true
				close(f.synced)
			}
			continue
		}
		f.mu.Lock()
		for _, ch := range msg.Changes {
			if _, ok := f.arrived[ch.Doc]; !ok {
				f.arrived[ch.Doc] = now
			}
		}
		f.mu.Unlock()
	}
}

func (f *wsFollower) at(doc string) (time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.arrived[doc]
	return t, ok
}

func (f *wsFollower) close() {
	f.c.Close(websocket.StatusNormalClosure, "")
	<-f.done
}

// propagation writes at a at a fixed rate and times each write from its
// acknowledgement at a to its arrival, applied, at b's websocket fan-out.
func propagation(ctx context.Context, c *http.Client, a, b *benchRegion, rate int, d time.Duration) (prop, ack latencies, err error) {
	f, err := follow(ctx, b)
	if err != nil {
		return nil, nil, err
	}
	defer f.close()
	n := int(d.Seconds() * float64(rate))
	acked := make([]time.Time, n)
	sent := make([]time.Time, n)
	var failed atomic.Value
	var wg sync.WaitGroup
	// Writers in parallel, so one slow answer does not hold back the
	// schedule.
	jobs := make(chan int, 1024)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				sent[i] = time.Now()
				if err := doReq(c, "PATCH", fmt.Sprintf("%s/v1/docs/%s/lat/l%d", a.base, benchNS, i), []byte(`{"v":1}`), 200); err != nil {
					failed.Store(err)
					continue
				}
				acked[i] = time.Now()
			}
		}()
	}
	pace(ctx, rate, d, func(i int) {
		if i < n {
			jobs <- i
		}
	})
	close(jobs)
	wg.Wait()
	if e, ok := failed.Load().(error); ok {
		return nil, nil, e
	}
	// Everything acknowledged must arrive.
	if err := waitUntil(ctx, 30*time.Second, 10*time.Millisecond, func() (bool, error) {
		for i := 0; i < n; i++ {
			if _, ok := f.at(fmt.Sprintf("l%d", i)); !ok {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		return nil, nil, fmt.Errorf("writes acknowledged at a never reached b's devices: %w", err)
	}
	for i := 0; i < n; i++ {
		t, _ := f.at(fmt.Sprintf("l%d", i))
		prop = append(prop, t.Sub(acked[i]))
		ack = append(ack, acked[i].Sub(sent[i]))
	}
	return prop, ack, nil
}

type sessionResult struct{ local, ack2, after, read latencies }

// sessionCosts measures what ack= and after= add, one request at a time:
// a write at a acked locally and with ack=2, and a read at b of a write
// just made at a, with its session token and without.
func sessionCosts(ctx context.Context, c *http.Client, a, b *benchRegion, n int) (sessionResult, error) {
	var res sessionResult
	call := func(method, url string, body []byte) (map[string]any, time.Duration, error) {
		t0 := time.Now()
		req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
		if err != nil {
			return nil, 0, err
		}
		resp, err := c.Do(req)
		if err != nil {
			return nil, 0, err
		}
		defer resp.Body.Close()
		var out map[string]any
		err = json.NewDecoder(resp.Body).Decode(&out)
		d := time.Since(t0)
		if resp.StatusCode != 200 {
			return nil, 0, fmt.Errorf("%s %s: %s %v", method, url, resp.Status, out)
		}
		return out, d, err
	}
	for i := 0; i < n && ctx.Err() == nil; i++ {
		doc := fmt.Sprintf("%s/v1/docs/%s/session/s%d", a.base, benchNS, i)
		if _, d, err := call("PATCH", doc, []byte(`{"v":1}`)); err != nil {
			return res, err
		} else {
			res.local = append(res.local, d)
		}
		if _, d, err := call("PATCH", doc+"?ack=2&timeout=5s", []byte(`{"v":2}`)); err != nil {
			return res, err
		} else {
			res.ack2 = append(res.ack2, d)
		}
		w, _, err := call("PATCH", doc, []byte(`{"v":3}`))
		if err != nil {
			return res, err
		}
		tok, _ := w["token"].(string)
		at := fmt.Sprintf("%s/v1/docs/%s/session/s%d", b.base, benchNS, i)
		if _, d, err := call("GET", at+"?timeout=5s&after="+tok, nil); err != nil {
			return res, err
		} else {
			res.after = append(res.after, d)
		}
		if _, d, err := call("GET", at, nil); err != nil {
			return res, err
		} else {
			res.read = append(res.read, d)
		}
	}
	return res, nil
}

type sustainedResult struct {
	source, applied float64
	maxLag          uint64
	drain           time.Duration
}

// writeLoad runs o.Conns writers of o.Ops-change requests at r until
// stop is closed or total changes are written (0: no bound). prefix keeps
// documents of different phases apart.
func writeLoad(ctx context.Context, c *http.Client, r *benchRegion, o *ReplicationOptions, prefix string, total int, stop <-chan struct{}) (int, error) {
	var written atomic.Int64
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, o.Conns)
	for w := 0; w < o.Conns; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				select {
				case <-stop:
					return
				default:
				}
				i := next.Add(1) - 1
				ops := o.Ops
				if total > 0 {
					if left := total - int(i)*o.Ops; left <= 0 {
						return
					} else if left < ops {
						ops = left
					}
				}
				url := fmt.Sprintf("%s/v1/docs/%s/%s/d%d/ops", r.base, benchNS, prefix, i)
				if err := doReq(c, "POST", url, opsBody(ops, int(i)), 200); err != nil {
					errc <- err
					return
				}
				written.Add(int64(ops))
			}
		}()
	}
	wg.Wait()
	select {
	case err := <-errc:
		return int(written.Load()), err
	default:
	}
	return int(written.Load()), nil
}

// sustained loads a with writes and samples both vectors: b's applied
// rate is the figure, a's commit rate its baseline (b keeps up when they
// match and the lag stays bounded).
func sustained(ctx context.Context, c *http.Client, a, b *benchRegion, o ReplicationOptions) (sustainedResult, error) {
	var res sustainedResult
	stop := make(chan struct{})
	type sample struct {
		at         time.Time
		aHas, bHas uint64
	}
	var samples []sample
	take := func() error {
		va, err := a.vector(ctx, c)
		if err != nil {
			return err
		}
		vb, err := b.vector(ctx, c)
		if err != nil {
			return err
		}
		samples = append(samples, sample{time.Now(), va[mustID(a.id)], vb[mustID(a.id)]})
		return nil
	}
	if err := take(); err != nil {
		return res, err
	}
	loadErr := make(chan error, 1)
	go func() {
		_, err := writeLoad(ctx, c, a, &o, "tp", 0, stop)
		loadErr <- err
	}()
	end := time.Now().Add(o.Duration)
	for time.Now().Before(end) {
		time.Sleep(100 * time.Millisecond)
		if err := take(); err != nil {
			close(stop)
			return res, err
		}
	}
	close(stop)
	if err := <-loadErr; err != nil {
		return res, err
	}
	stopped := time.Now()
	if err := take(); err != nil {
		return res, err
	}
	target := samples[len(samples)-1].aHas
	if err := waitUntil(ctx, 60*time.Second, 5*time.Millisecond, func() (bool, error) {
		vb, err := b.vector(ctx, c)
		return vb[mustID(a.id)] >= target, err
	}); err != nil {
		return res, fmt.Errorf("b did not catch up after the load: %w", err)
	}
	res.drain = time.Since(stopped)
	// Rates over the loaded window, skipping the first sample's warm-up.
	first, last := samples[0], samples[len(samples)-1]
	el := last.at.Sub(first.at).Seconds()
	res.source = float64(last.aHas-first.aHas) / el
	res.applied = float64(last.bHas-first.bHas) / el
	for _, s := range samples {
		if s.aHas > s.bHas {
			res.maxLag = max(res.maxLag, s.aHas-s.bHas)
		}
	}
	return res, nil
}

func mustID(s string) crdt.ReplicaID {
	id, _ := uuid.Parse(s)
	return id
}

// catchUp stops b, writes o.CatchUp changes at a, starts b again and
// times how long b takes, from serving, to hold everything a holds.
func catchUp(ctx context.Context, c *http.Client, a, b *benchRegion, o ReplicationOptions) (catchUpResult, error) {
	if err := b.stop(); err != nil {
		return catchUpResult{}, err
	}
	if _, err := writeLoad(ctx, c, a, &o, "cu", o.CatchUp, nil); err != nil {
		return catchUpResult{}, err
	}
	va, err := a.vector(ctx, c)
	if err != nil {
		return catchUpResult{}, err
	}
	aid := mustID(a.id)
	if err := b.start(ctx); err != nil {
		return catchUpResult{}, err
	}
	serving := time.Now()
	vb, err := b.vector(ctx, c)
	if err != nil {
		return catchUpResult{}, err
	}
	// Timed from the last poll that still saw nothing applied: before
	// it, b waits for the route and for a heartbeat to show it is behind
	// (reported apart). Timing from that poll rather than from the first
	// change seen counts every change, so a catch-up that finishes
	// within one poll still gets a rate (bounded below by the poll).
	from := vb[aid]
	idle, first := serving, time.Time{}
	if err := waitUntil(ctx, 5*time.Minute, 2*time.Millisecond, func() (bool, error) {
		polled := time.Now()
		vb, err := b.vector(ctx, c)
		if err != nil {
			return false, err
		}
		if vb[aid] == from {
			idle = polled
		} else if first.IsZero() {
			first = time.Now()
		}
		return vb[aid] >= va[aid], nil
	}); err != nil {
		return catchUpResult{}, fmt.Errorf("b did not catch up: %w", err)
	}
	done := time.Now()
	return catchUpResult{
		rate:   float64(va[aid]-from) / done.Sub(idle).Seconds(),
		detect: first.Sub(serving),
		total:  done.Sub(serving),
	}, nil
}

type catchUpResult struct {
	rate          float64
	detect, total time.Duration
}

// healConverge isolates b, writes o.Heal changes on each side to the same
// fields, heals, and times convergence of both vectors.
func healConverge(ctx context.Context, c *http.Client, a, b *benchRegion, o ReplicationOptions) (time.Duration, error) {
	isolate := func(on bool) error {
		return doReq(c, "POST", b.base+"/v1/admin/isolate", []byte(fmt.Sprintf(`{"isolated":%v}`, on)), 200)
	}
	if err := isolate(true); err != nil {
		return 0, err
	}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, r := range []*benchRegion{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = writeLoad(ctx, c, r, &o, "heal", o.Heal, nil)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return 0, err
	}
	if err := isolate(false); err != nil {
		return 0, err
	}
	start := time.Now()
	err := waitUntil(ctx, 60*time.Second, 5*time.Millisecond, func() (bool, error) {
		va, err := a.vector(ctx, c)
		if err != nil {
			return false, err
		}
		vb, err := b.vector(ctx, c)
		if err != nil {
			return false, err
		}
		return va.CoversAll(vb) && vb.CoversAll(va), nil
	})
	if err != nil {
		return 0, fmt.Errorf("no convergence after the heal: %w", err)
	}
	return time.Since(start), nil
}
