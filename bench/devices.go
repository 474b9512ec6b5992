package bench

import (
	"bufio"
	"bytes"
	"context"
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
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/google/uuid"

	"github.com/syncd/syncd/clientsdk"
)

// DevicesOptions size `syncd bench devices`.
type DevicesOptions struct {
	Dir      string    // scratch space (default a temp dir, removed after)
	Exe      string    // the syncd binary run as the region (default this executable)
	Progress io.Writer // progress lines (nil: none)
	// Rate and Duration: the device -> region -> device latency phase
	// (defaults 500 changes/s for 5s).
	Rate     int
	Duration time.Duration
	// Clients connected for the fan-out and idle-memory figures (1,000),
	// and how many changes are fanned out to them (50).
	Clients int
	Fanouts int
	// CatchUp is how many changes a fresh device catches up on (100,000).
	CatchUp int
	// EchoRounds: round trips of the raw websocket echo baseline (5,000).
	EchoRounds int
}

func (o *DevicesOptions) defaults() {
	if o.Rate <= 0 {
		o.Rate = 500
	}
	if o.Duration <= 0 {
		o.Duration = 5 * time.Second
	}
	if o.Clients <= 0 {
		o.Clients = 1000
	}
	if o.Fanouts <= 0 {
		o.Fanouts = 50
	}
	if o.CatchUp <= 0 {
		o.CatchUp = 100_000
	}
	if o.EchoRounds <= 0 {
		o.EchoRounds = 5000
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
}

// devicesNS is the namespace the devices figures write.
const devicesNS = "devices"

// Devices runs the figures of issue 5 against a region run as its own
// process (so its memory is its own), with the devices and websocket
// clients in this one.
func Devices(ctx context.Context, o DevicesOptions) (*Report, error) {
	o.defaults()
	cleanup, err := scratch(&o.Dir, "syncd-bench-devices-")
	if err != nil {
		return nil, err
	}
	defer cleanup()
	rep := &Report{Name: "devices"}
	say := func(f string, a ...any) { fmt.Fprintf(o.Progress, f+"\n", a...) }
	// On a shared virtual machine the hypervisor may take the CPUs away
	// under load; tail latencies mean little when it does, so the share
	// it took during each phase is part of the report.
	phase := func(key string) func() {
		steal0, total0, ok0 := cpuSteal()
		return func() {
			if steal1, total1, ok1 := cpuSteal(); ok0 && ok1 && total1 > total0 {
				rep.add("cpu_steal_pct_"+key, "CPU time the hypervisor took during the "+key+" phase", 100*float64(steal1-steal0)/float64(total1-total0), "%")
			}
		}
	}

	say("raw websocket echo on loopback (%d round trips)...", o.EchoRounds)
	echo, err := wsEcho(ctx, o.EchoRounds)
	if err != nil {
		return nil, fmt.Errorf("echo: %w", err)
	}
	rep.add("raw_ws_rtt_p50_ms", "raw websocket echo round trip on loopback, p50", echo.pct(50), "ms")
	rep.add("raw_ws_rtt_p99_ms", "raw websocket echo round trip on loopback, p99", echo.pct(99), "ms")

	reg, err := startRegionProc(ctx, o.Exe, filepath.Join(o.Dir, "region"))
	if err != nil {
		return nil, err
	}
	defer reg.stop()

	say("device -> region -> device at %d changes/s for %v...", o.Rate, o.Duration)
	done := phase("latency")
	d2d, lost, err := deviceToDevice(ctx, o, reg)
	done()
	if err != nil {
		return nil, fmt.Errorf("device to device: %w", err)
	}
	rep.vs("device_to_device_p50_ms", fmt.Sprintf("device write -> region -> other device's store, p50 at %d/s", o.Rate), d2d.pct(50), "ms", "raw_ws_rtt_p50_ms", "")
	rep.vs("device_to_device_p99_ms", "the same, p99", d2d.pct(99), "ms", "raw_ws_rtt_p50_ms", "<= 10 ms")
	if lost > 0 {
		rep.Note = append(rep.Note, fmt.Sprintf("device to device: %d changes not seen by the other device within 5s", lost))
	}

	// The memory figure is a growth: with syncd's collector floor
	// (internal/gcfloor) up to 32 MiB of garbage sits in the heap before
	// the clients connect, and their state fills it in place, so the
	// growth would hide most of what a connection costs (the Go part even
	// came out negative). This phase runs on a region of its own at
	// GOGC=100, which turns the floor off: that is also what each
	// connection costs once many are connected, the live heap past the
	// floor.
	say("%d idle connections, then one change at a time fanned out to all of them (a region at GOGC=100)...", o.Clients)
	regFan, err := startRegionProc(ctx, o.Exe, filepath.Join(o.Dir, "region-fanout"), "GOGC=100")
	if err != nil {
		return nil, err
	}
	defer regFan.stop()
	done = phase("fanout")
	mem, fan, err := fanout(ctx, o, regFan)
	done()
	if err != nil {
		return nil, fmt.Errorf("fan-out: %w", err)
	}
	rep.vs(fmt.Sprintf("fanout_p99_ms_c%d", o.Clients), fmt.Sprintf("one change to %d subscribed clients, p99 over clients and changes", o.Clients), fan.pct(99), "ms", "raw_ws_rtt_p50_ms", "<= 50 ms")
	rep.add(fmt.Sprintf("fanout_p50_ms_c%d", o.Clients), "the same, p50", fan.pct(50), "ms")
	rep.vs("kib_per_idle_conn", fmt.Sprintf("region RSS growth per idle connection, over %d", o.Clients), mem.rss, "KiB", "", "<= 64 KiB")
	rep.add("kib_per_idle_conn_go", "the same, Go heap + stacks in use", mem.goMem, "KiB")

	say("writing %d changes, then a fresh device catches up...", o.CatchUp)
	done = phase("catchup")
	rate, err := deviceCatchUp(ctx, o, reg)
	done()
	if err != nil {
		return nil, fmt.Errorf("catch-up: %w", err)
	}
	rep.vs("device_catchup_changes_per_s", fmt.Sprintf("fresh device catching up on %d changes", o.CatchUp), rate, "change/s", "", ">= 50,000")
	return rep, nil
}

// wsEcho is the floor: a websocket server that echoes, on loopback, in
// this process, with the same library the gateway uses.
func wsEcho(ctx context.Context, rounds int) (latencies, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		for {
			typ, b, err := c.Read(r.Context())
			if err != nil {
				return
			}
			if c.Write(r.Context(), typ, b) != nil {
				return
			}
		}
	})}
	go srv.Serve(ln)
	defer srv.Close()
	c, _, err := websocket.Dial(ctx, "ws://"+ln.Addr().String(), nil)
	if err != nil {
		return nil, err
	}
	defer c.CloseNow()
	msg := []byte(`{"type":"batch","ns":"bench","changes":[{"coll":"c","doc":"d","field":"v","value":1}]}`)
	lat := make(latencies, 0, rounds)
	for i := 0; i < rounds+100; i++ {
		t0 := time.Now()
		if err := c.Write(ctx, websocket.MessageText, msg); err != nil {
			return nil, err
		}
		if _, _, err := c.Read(ctx); err != nil {
			return nil, err
		}
		if i >= 100 { // warm-up
			lat = append(lat, time.Since(t0))
		}
	}
	return lat, nil
}

// regionProc is `syncd serve` run as a child process.
type regionProc struct {
	cmd  *exec.Cmd
	addr string
}

// startRegionProc starts `syncd serve` in dir; env is added to this
// process's environment for it.
func startRegionProc(ctx context.Context, exe, dir string, env ...string) (*regionProc, error) {
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return nil, err
		}
	}
	cmd := exec.Command(exe, "serve", "--node", "bench", "--data", dir, "--http", "127.0.0.1:0")
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start region: %w", err)
	}
	p := &regionProc{cmd: cmd}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if m := servingRE.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case addr <- m[1]:
				default:
				}
			}
		}
	}()
	select {
	case p.addr = <-addr:
		return p, nil
	case <-ctx.Done():
		p.stop()
		return nil, ctx.Err()
	case <-time.After(60 * time.Second):
		p.stop()
		return nil, errors.New("region did not start within 60s")
	}
}

func (p *regionProc) stop() {
	p.cmd.Process.Kill()
	p.cmd.Wait()
}

func (p *regionProc) ws() string { return "ws://" + p.addr + "/v1/ws" }

// memory reads the region's RSS and Go heap + stacks in use, in KiB.
func (p *regionProc) memory(c *http.Client) (rss, goMem float64, err error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			if err != nil {
				return 0, 0, err
			}
			rss = float64(kb)
		}
	}
	resp, err := c.Get("http://" + p.addr + "/metrics")
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		for _, name := range []string{"go_memstats_heap_inuse_bytes ", "go_memstats_stack_inuse_bytes "} {
			if v, ok := strings.CutPrefix(sc.Text(), name); ok {
				f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
				if err != nil {
					return 0, 0, err
				}
				goMem += f / 1024
			}
		}
	}
	return rss, goMem, sc.Err()
}

func openBenchDevice(ctx context.Context, dir string, reg *regionProc) (*clientsdk.Client, error) {
	return clientsdk.Open(ctx, clientsdk.Options{Dir: dir, URLs: []string{reg.ws()}, Namespace: devicesNS,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), MinBackoff: 20 * time.Millisecond})
}

// deviceToDevice: device A writes at o.Rate; the latency of each change
// is from just before A's write to device B's watcher seeing it land in
// B's store (it went A's store, A's push, the region's store and fan-out,
// B's store).
func deviceToDevice(ctx context.Context, o DevicesOptions, reg *regionProc) (latencies, int, error) {
	a, err := openBenchDevice(ctx, filepath.Join(o.Dir, "dev-a"), reg)
	if err != nil {
		return nil, 0, err
	}
	defer a.Close()
	b, err := openBenchDevice(ctx, filepath.Join(o.Dir, "dev-b"), reg)
	if err != nil {
		return nil, 0, err
	}
	defer b.Close()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for _, c := range []*clientsdk.Client{a, b} {
		if err := c.Sync(sctx); err != nil {
			return nil, 0, err
		}
	}
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	watch, err := b.Watch(wctx, "lat")
	if err != nil {
		return nil, 0, err
	}
	n := int(o.Duration.Seconds() * float64(o.Rate))
	warm := min(n/10, 100)
	sent := make([]time.Time, n)
	got := make([]time.Duration, n)
	var seen atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ch := range watch {
			i, err := strconv.Atoi(string(ch.Value))
			if err != nil || i < 0 || i >= n || got[i] != 0 {
				continue
			}
			got[i] = time.Since(sent[i])
			if seen.Add(1) == int64(n) {
				return
			}
		}
	}()
	interval := time.Second / time.Duration(o.Rate)
	start := time.Now()
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	for i := 0; i < n; i++ {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		sent[i] = time.Now()
		// Open loop: a slow write must not hold back the schedule.
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			if err := a.Doc("lat", "d"+strconv.Itoa(i%64)).Set(ctx, "v", i); err != nil {
				select {
				case errc <- err:
				default:
				}
			}
		}(i)
	}
	wg.Wait()
	select {
	case err := <-errc:
		return nil, 0, err
	default:
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
	stopWatch()
	<-done
	var lat latencies
	lost := 0
	for i := warm; i < n; i++ {
		if got[i] == 0 {
			lost++
			continue
		}
		lat = append(lat, got[i])
	}
	return lat, lost, nil
}

// wsClient is a bare protocol client: hello, then read frames.
type wsClient struct {
	c *websocket.Conn
}

func dialClient(ctx context.Context, url string, colls ...string) (*wsClient, error) {
	c, _, err := websocket.Dial(ctx, url, &websocket.DialOptions{Subprotocols: []string{"syncd.v1"}})
	if err != nil {
		return nil, err
	}
	c.SetReadLimit(16 << 20)
	hello, _ := json.Marshal(map[string]any{"type": "hello", "version": 1, "ns": devicesNS, "replica": uuid.New(),
		"vector": map[string]any{}, "colls": colls})
	if err := c.Write(ctx, websocket.MessageText, hello); err != nil {
		c.CloseNow()
		return nil, err
	}
	_, data, err := c.Read(ctx)
	if err != nil {
		c.CloseNow()
		return nil, err
	}
	if !strings.Contains(string(data), `"welcome"`) {
		c.CloseNow()
		return nil, fmt.Errorf("no welcome: %s", data)
	}
	return &wsClient{c: c}, nil
}

type memFigure struct{ rss, goMem float64 }

// fanout connects o.Clients clients following the "fan" collection. With
// them idle it takes the region's memory growth; then it writes one
// change at a time and times its arrival at every client.
func fanout(ctx context.Context, o DevicesOptions, reg *regionProc) (memFigure, latencies, error) {
	hc := httpClient(4)
	// Settle what earlier phases left behind before the baseline.
	time.Sleep(time.Second)
	rss0, go0, err := reg.memory(hc)
	if err != nil {
		return memFigure{}, nil, err
	}
	clients := make([]*wsClient, 0, o.Clients)
	defer func() {
		for _, c := range clients {
			c.c.CloseNow()
		}
	}()
	for i := 0; i < o.Clients; i++ {
		c, err := dialClient(ctx, reg.ws(), "fan")
		if err != nil {
			return memFigure{}, nil, fmt.Errorf("client %d: %w", i, err)
		}
		clients = append(clients, c)
	}
	// Each client reads (an idle device still takes heartbeats) and
	// stamps the arrival of each fanned-out change.
	arrived := make([][]time.Time, o.Clients)
	var wg sync.WaitGroup
	for i, c := range clients {
		arrived[i] = make([]time.Time, o.Fanouts)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				_, data, err := c.c.Read(ctx)
				if err != nil {
					return
				}
				now := time.Now()
				// Heartbeats come five times a second to every client:
				// decoding them would load this process, not the region.
				if !bytes.Contains(data, []byte(`"coll":"fan"`)) {
					continue
				}
				var m struct {
					Changes []struct {
						Coll, Doc string
					}
				}
				if json.Unmarshal(data, &m) != nil {
					continue
				}
				for _, ch := range m.Changes {
					if k, err := strconv.Atoi(strings.TrimPrefix(ch.Doc, "f")); err == nil && ch.Coll == "fan" && k >= 0 && k < o.Fanouts {
						arrived[i][k] = now
					}
				}
			}
		}()
	}
	time.Sleep(2 * time.Second) // idle: only heartbeats
	rss1, go1, err := reg.memory(hc)
	if err != nil {
		return memFigure{}, nil, err
	}
	n := float64(o.Clients)
	mem := memFigure{rss: (rss1 - rss0) / n, goMem: (go1 - go0) / n}

	sent := make([]time.Time, o.Fanouts)
	base := "http://" + reg.addr
	for k := 0; k < o.Fanouts; k++ {
		time.Sleep(100 * time.Millisecond)
		sent[k] = time.Now()
		if err := doReq(hc, "PATCH", fmt.Sprintf("%s/v1/docs/%s/fan/f%d", base, devicesNS, k), []byte(`{"v":1}`), 200); err != nil {
			return memFigure{}, nil, err
		}
	}
	time.Sleep(time.Second)
	for _, c := range clients {
		c.c.CloseNow()
	}
	wg.Wait()
	var lat latencies
	missing := 0
	for i := range clients {
		for k := range sent {
			if arrived[i][k].IsZero() {
				missing++
				continue
			}
			lat = append(lat, arrived[i][k].Sub(sent[k]))
		}
	}
	if missing > 0 {
		return mem, nil, fmt.Errorf("%d of %d deliveries missing", missing, o.Clients*o.Fanouts)
	}
	return mem, lat, nil
}

// deviceCatchUp writes o.CatchUp changes to the region, then times a fresh
// device from Open to caught up.
func deviceCatchUp(ctx context.Context, o DevicesOptions, reg *regionProc) (float64, error) {
	const perDoc = 500
	hc := httpClient(4)
	base := "http://" + reg.addr
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	docs := (o.CatchUp + perDoc - 1) / perDoc
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := int(next.Add(1)) - 1; k < docs; k = int(next.Add(1)) - 1 {
				var b strings.Builder
				b.WriteString(`{"ops":[`)
				for j := 0; j < perDoc && k*perDoc+j < o.CatchUp; j++ {
					if j > 0 {
						b.WriteByte(',')
					}
					fmt.Fprintf(&b, `{"field":"f%d","op":"set","value":%d}`, j, k*perDoc+j)
				}
				b.WriteString(`]}`)
				if err := doReq(hc, "POST", fmt.Sprintf("%s/v1/docs/%s/catchup/d%d/ops", base, devicesNS, k), []byte(b.String()), 200); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return 0, err
	}
	var st struct {
		Namespaces map[string]struct {
			Vector map[string]uint64 `json:"vector"`
		} `json:"namespaces"`
	}
	resp, err := hc.Get(base + "/v1/status")
	if err != nil {
		return 0, err
	}
	err = json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if err != nil {
		return 0, err
	}
	var total uint64
	for _, n := range st.Namespaces[devicesNS].Vector {
		total += n
	}

	start := time.Now()
	c, err := openBenchDevice(ctx, filepath.Join(o.Dir, "dev-catchup"), reg)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	deadline := time.Now().Add(5 * time.Minute)
	for {
		if s := c.Status(); s.Synced {
			break
		}
		if time.Now().After(deadline) {
			return 0, errors.New("the device did not catch up within 5 minutes")
		}
		time.Sleep(5 * time.Millisecond)
	}
	return float64(total) / time.Since(start).Seconds(), nil
}

// cpuSteal reads the machine's steal and total CPU time (jiffies) from
// /proc/stat; ok is false where there is none.
func cpuSteal() (steal, total uint64, ok bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0, false
	}
	for i, v := range f[1:] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, 0, false
		}
		if i < 8 { // user..steal; guest time is already in user
			total += n
		}
		if i == 7 {
			steal = n
		}
	}
	return steal, total, true
}
