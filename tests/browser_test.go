package tests

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// The browser test drives the demo page (`syncd demo`) in headless
// Chromium: its devices are the WebAssembly core syncing over real
// websockets with real regions. It installs nothing: .ci/run installs
// Debian's chromium when it is missing. Screenshots and the figures it
// measured go to tests/artifacts/ (gitignored).

var demoURLRE = regexp.MustCompile(`syncd demo: open (http://[0-9.:]+)/`)

// demoProc is a running `syncd demo`.
type demoProc struct {
	cmd  *exec.Cmd
	url  string
	mu   sync.Mutex
	logs strings.Builder
	done chan struct{}
}

func (d *demoProc) Logs() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.logs.String()
}

func startDemo(t *testing.T) *demoProc {
	t.Helper()
	d := &demoProc{done: make(chan struct{})}
	d.cmd = exec.Command(binary, "demo", "--http", "127.0.0.1:0", "--data", t.TempDir())
	stdout, err := d.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := d.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	url := make(chan string, 1)
	var wg sync.WaitGroup
	for _, r := range []interface{ Read([]byte) (int, error) }{stdout, stderr} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sc := bufio.NewScanner(r)
			sc.Buffer(make([]byte, 1<<20), 1<<20)
			for sc.Scan() {
				d.mu.Lock()
				d.logs.WriteString(sc.Text() + "\n")
				d.mu.Unlock()
				if m := demoURLRE.FindStringSubmatch(sc.Text()); m != nil {
					url <- m[1]
				}
			}
		}()
	}
	go func() {
		wg.Wait()
		d.cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() {
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(20 * time.Second):
			d.cmd.Process.Kill()
			<-d.done
			t.Errorf("syncd demo did not stop on SIGTERM:\n%s", d.Logs())
		}
	})
	select {
	case d.url = <-url:
	case <-d.done:
		t.Fatalf("syncd demo exited before serving:\n%s", d.Logs())
	case <-time.After(60 * time.Second):
		t.Fatalf("syncd demo did not serve within 60s:\n%s", d.Logs())
	}
	return d
}

// findChromium fails the test, clearly, when no browser is installed.
func findChromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("SYNCD_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("the browser test needs Chromium and none is installed: run `apt-get update && apt-get install -y chromium` " +
		"(.ci/run does this), or set SYNCD_CHROMIUM to a Chrome or Chromium binary")
	return ""
}

// card is what one replica's card on the page shows of the focused
// document.
type card struct {
	Replica  string   `json:"replica"`
	Value    *string  `json:"value"`    // the field's value as shown
	Versions []string `json:"versions"` // manual versions offered with "keep this"
	Items    []string `json:"items"`    // set elements
	Pending  int      `json:"pending"`  // devices: changes waiting to push
}

const readCards = `[...document.querySelectorAll('#regions [data-replica], #devices [data-replica]')].map(c => ({
	replica: c.dataset.replica,
	value: c.querySelector('[data-part=doc] .value')?.textContent ?? null,
	versions: [...c.querySelectorAll('[data-part=doc] .versions.manual .version')].map(v => v.dataset.value),
	items: [...c.querySelectorAll('[data-part=doc] .item')].map(i => i.dataset.item),
	pending: (syncdDemo.devices().find(d => d.key === c.dataset.replica)?.status?.outbox || []).length,
}))`

const allSynced = `syncdDemo.devices().every(d => d.conn === 'online' && d.status && d.status.synced)`

type browser struct {
	t         *testing.T
	ctx       context.Context
	artifacts string
	mu        sync.Mutex
	errs      []string
}

// settledShot waits (briefly, without failing) until the page shows every
// replica holding the same changes, so the picture is of a settled state,
// then takes it.
func (b *browser) settledShot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](`(syncdDemo.refresh(), syncdDemo.settled())`,
		chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(10*time.Second))); err != nil {
		b.t.Logf("screenshot %s: the page did not settle: %v", name, err)
	}
	b.screenshot(name)
}

func (b *browser) screenshot(name string) {
	b.t.Helper()
	png, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Errorf("screenshot %s: %v", name, err)
		return
	}
	p := filepath.Join(b.artifacts, "browser-"+name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		b.t.Errorf("screenshot %s: %v", name, err)
		return
	}
	b.t.Logf("screenshot %s", p)
}

// wait polls a JavaScript predicate until it holds.
func (b *browser) wait(what, expr string, within time.Duration) {
	b.t.Helper()
	_, err := chromedp.Run(b.ctx, chromedp.Poll[chromedp.Void](expr,
		chromedp.WithPollingInterval(20*time.Millisecond), chromedp.WithPollingTimeout(within)))
	if err != nil {
		b.screenshot("failed")
		story, _ := chromedp.Run(b.ctx, chromedp.Evaluate[string](`document.querySelector('#story')?.innerText || ''`))
		b.t.Fatalf("%s: not within %s: %v\npage says:\n%s", what, within, err, story)
	}
}

func (b *browser) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.screenshot("failed")
		b.t.Fatalf("%s: %v", what, err)
	}
}

func eval[T any](b *browser, expr string) T {
	b.t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

func (b *browser) cards() []card {
	b.t.Helper()
	cs := eval[[]card](b, readCards)
	if len(cs) != 5 {
		b.t.Fatalf("the page shows %d replica cards, want 5 (3 regions, 2 devices)", len(cs))
	}
	return cs
}

// consoleErrors returns what the page logged as an error so far.
func (b *browser) consoleErrors() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.errs)
}

// figures are the numbers the test measured, for docs/benchmarks.md.
type figures struct {
	InteractiveMs     float64 `json:"navigation_to_interactive_ms"`
	WarmInteractiveMs float64 `json:"reload_to_interactive_ms"`
	TestSideLoadMs    float64 `json:"navigate_until_ready_ms_test_side"`
	ManualConflictMs  float64 `json:"manual_conflict_shown_everywhere_ms"`
	ManualResolveMs   float64 `json:"manual_resolve_converged_ms"`
	CartMs            float64 `json:"cart_converged_ms"`
	ReloadOfflineMs   float64 `json:"offline_write_after_reload_converged_ms"`
	// ScenarioMs: the other scenarios, converged on every replica after
	// their last step.
	ScenarioMs    map[string]float64 `json:"scenario_converged_ms"`
	WasmGzipBytes int                `json:"wasm_gzip_bytes"`
	WasmRawBytes  int                `json:"wasm_raw_bytes"`
}

func TestBrowserDemo(t *testing.T) {
	chrome := findChromium(t)
	demo := startDemo(t)
	artifacts, err := filepath.Abs("artifacts")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(artifacts, 0o755); err != nil {
		t.Fatal(err)
	}
	old, _ := filepath.Glob(filepath.Join(artifacts, "browser-*"))
	for _, f := range old { // what is there afterwards is this run's
		os.Remove(f)
	}

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chrome),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.NoFirstRun,
		chromedp.DisableGPU,
		chromedp.UserDataDir(t.TempDir()), // a fresh profile: empty IndexedDB, cold caches
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.WindowSize(1440, 1000),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	b := &browser{t: t, ctx: ctx, artifacts: artifacts}

	// Subscribe before navigating, so nothing the page logs is missed.
	console := chromedp.Console(ctx)
	go func() {
		for m, err := range console {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.IsException() {
				b.mu.Lock()
				b.errs = append(b.errs, fmt.Sprintf("%s (%s:%d)", m, m.URL, m.Line))
				b.mu.Unlock()
			}
		}
	}()
	defer func() {
		if errs := b.consoleErrors(); len(errs) > 0 {
			t.Errorf("the page logged %d console error(s):\n%s", len(errs), strings.Join(errs, "\n"))
		}
		if t.Failed() {
			t.Logf("syncd demo output:\n%s", demo.Logs())
		}
	}()

	fig := figures{ScenarioMs: map[string]float64{}}
	start := time.Now()
	b.do("open the demo page", chromedp.Navigate(demo.url+"/?pace=0.15"))
	b.wait("page interactive", `window.syncdDemo && syncdDemo.ready`, 30*time.Second)
	fig.TestSideLoadMs = ms(time.Since(start))
	fig.InteractiveMs = eval[float64](b, `syncdDemo.interactiveMs`)
	t.Logf("page start, ms after navigation: %v", eval[map[string]float64](b, `syncdDemo.timings`))
	b.wait("both devices connected and caught up", allSynced, 30*time.Second)
	wasm, err := chromedp.Run(ctx, chromedp.Evaluate[map[string]any](`fetch('/demo/api/info').then(r => r.json()).then(i => i.wasm)`, chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("read the demo's info: %v", err)
	}
	if f, ok := wasm["gzip_bytes"].(float64); ok {
		fig.WasmGzipBytes = int(f)
	}
	if f, ok := wasm["raw_bytes"].(float64); ok {
		fig.WasmRawBytes = int(f)
	}
	b.settledShot("01-start")

	// Manual resolution: two devices offline, different edits, back
	// online; the conflict is shown on both devices and every region;
	// resolved on one device; converged everywhere.
	b.do("start the manual-resolution scenario", chromedp.Click(chromedp.CSS(`#scn-manual`)))
	b.wait("manual scenario shows the conflict", `document.body.dataset.phase === 'await-resolve' || document.body.dataset.phase === 'error'`, 60*time.Second)
	if phase := eval[string](b, `document.body.dataset.phase`); phase != "await-resolve" {
		b.screenshot("failed")
		t.Fatalf("manual scenario: %s", eval[string](b, `document.querySelector('#story').innerText`))
	}
	for _, c := range b.cards() {
		got := slices.Sorted(slices.Values(c.Versions))
		if !slices.Equal(got, []string{"Senior Engineer", "Staff Engineer"}) {
			t.Fatalf("%s shows versions %q, want both offline edits", c.Replica, c.Versions)
		}
	}
	fig.ManualConflictMs = eval[float64](b, `syncdDemo.results.manual.conflict_ms`)
	b.wait("devices' pushes acknowledged", allSynced, 30*time.Second)
	b.settledShot("02-manual-conflict")
	b.do("keep one version on device B", chromedp.Click(chromedp.CSS(`#devices [data-replica="B"] button[data-keep="Senior Engineer"]`)))
	b.wait("manual scenario resolved everywhere", `document.body.dataset.phase === 'done' || document.body.dataset.phase === 'error'`, 60*time.Second)
	for _, c := range b.cards() {
		if c.Value == nil || *c.Value != "“Senior Engineer”" || len(c.Versions) != 0 {
			t.Fatalf("after resolving, %s shows %v with versions %q", c.Replica, deref(c.Value), c.Versions)
		}
	}
	fig.ManualResolveMs = eval[float64](b, `syncdDemo.results.manual.resolve_ms`)
	b.settledShot("03-manual-resolved")

	// The cart: concurrent remove and add of one item, add wins.
	b.do("start the cart scenario", chromedp.Click(chromedp.CSS(`#scn-cart`)))
	b.wait("cart scenario done", `document.body.dataset.scenario === 'cart' && (document.body.dataset.phase === 'done' || document.body.dataset.phase === 'error')`, 60*time.Second)
	want := []string{"apple", "banana", "milk", "orange"}
	for _, c := range b.cards() {
		if !slices.Equal(c.Items, want) {
			t.Fatalf("%s shows the cart %q, want %q", c.Replica, c.Items, want)
		}
	}
	fig.CartMs = eval[float64](b, `syncdDemo.results.cart.converge_ms`)
	b.wait("devices' pushes acknowledged", allSynced, 30*time.Second)
	b.settledShot("04-cart")

	// A device's offline write survives a reload (IndexedDB) and spreads
	// once it is back online.
	dev := `#devices [data-replica="A"]`
	b.do("device A offline, adds bread",
		chromedp.Click(chromedp.CSS(dev+` input[data-act="online"]`)),
		chromedp.SendKeys(chromedp.CSS(dev+` [data-input]`), "bread"),
		chromedp.Click(chromedp.CSS(dev+` button[data-act="add"]`)),
	)
	b.wait("bread pending on device A", `syncdDemo.devices()[0].status.outbox.length === 1 && !syncdDemo.devices()[0].online`, 10*time.Second)
	b.do("reload the page", chromedp.Reload())
	b.wait("page interactive after reload", `window.syncdDemo && syncdDemo.ready`, 30*time.Second)
	fig.WarmInteractiveMs = eval[float64](b, `syncdDemo.interactiveMs`)
	b.wait("device A still offline with bread waiting", `!syncdDemo.devices()[0].online && syncdDemo.devices()[0].status.outbox.length === 1`, 10*time.Second)
	// The page forgets which document it showed; show the cart again.
	cartID := eval[string](b, `syncdDemo.devices()[0].status.outbox[0].doc`)
	b.do("focus the cart", chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`syncdDemo.focus('carts', %q, 'items')`, cartID)))
	b.wait("device A shows bread after the reload", `[...document.querySelectorAll('#devices [data-replica="A"] .item')].some(i => i.dataset.item === 'bread')`, 10*time.Second)
	b.screenshot("05-offline-after-reload")
	back := time.Now()
	b.do("device A back online", chromedp.Click(chromedp.CSS(dev+` input[data-act="online"]`)))
	b.wait("bread on every replica", `[...document.querySelectorAll('#regions [data-replica], #devices [data-replica]')].every(c => [...c.querySelectorAll('.item')].some(i => i.dataset.item === 'bread'))`, 30*time.Second)
	fig.ReloadOfflineMs = ms(time.Since(back))
	b.wait("device A's push acknowledged", allSynced, 30*time.Second)
	for _, c := range b.cards() {
		if !slices.Contains(c.Items, "bread") || c.Pending != 0 {
			t.Fatalf("%s: cart %q, %d pending; want bread everywhere and nothing pending", c.Replica, c.Items, c.Pending)
		}
	}
	b.settledShot("06-offline-write-spread")

	// The other three scenarios: each ends converged on every replica.
	for _, sc := range []struct{ id, want string }{
		{"lww", "“Staff Engineer”"}, {"stock", "4"}, {"ryw", "“Just moved to Tokyo!”"},
	} {
		b.do("start the "+sc.id+" scenario", chromedp.Click(chromedp.CSS(`#scn-`+sc.id)))
		b.wait(sc.id+" scenario done", fmt.Sprintf(`document.body.dataset.scenario === %q && (document.body.dataset.phase === 'done' || document.body.dataset.phase === 'error')`, sc.id), 60*time.Second)
		if phase := eval[string](b, `document.body.dataset.phase`); phase != "done" {
			b.screenshot("failed")
			t.Fatalf("%s scenario: %s", sc.id, eval[string](b, `document.querySelector('#story').innerText`))
		}
		for _, c := range b.cards() {
			if c.Value == nil || *c.Value != sc.want {
				t.Fatalf("%s scenario: %s shows %s, want %s", sc.id, c.Replica, deref(c.Value), sc.want)
			}
		}
		if sc.id == "lww" {
			// The losing value is kept, and shown, everywhere.
			lost := eval[[]string](b, `[...document.querySelectorAll('[data-replica] [data-part=doc] .version.lost')].map(v => v.dataset.value)`)
			if len(lost) != 5 || slices.ContainsFunc(lost, func(v string) bool { return v != "Senior Engineer" }) {
				t.Fatalf("lww scenario: the overwritten value shows as %q, want it on all 5 replicas", lost)
			}
		}
		fig.ScenarioMs[sc.id] = eval[float64](b, fmt.Sprintf(`syncdDemo.results[%q].converge_ms`, sc.id))
		b.wait("devices' pushes acknowledged", allSynced, 30*time.Second)
		b.settledShot("07-" + sc.id)
	}

	js, _ := json.MarshalIndent(fig, "", "  ")
	t.Logf("browser demo figures:\n%s", js)
	if err := os.WriteFile(filepath.Join(artifacts, "browser-figures.json"), append(js, '\n'), 0o644); err != nil {
		t.Error(err)
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func deref(s *string) string {
	if s == nil {
		return "<nothing>"
	}
	return *s
}
