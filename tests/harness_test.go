// Package tests holds black-box tests: they build the syncd binary and run
// it as real processes, over real HTTP, NATS and SQLite files.
package tests

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var binary string

func TestMain(m *testing.M) {
	if os.Getenv(envDeviceDir) != "" {
		os.Exit(runDevice())
	}
	dir, err := os.MkdirTemp("", "syncd-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "syncd")
	build := exec.Command("go", "build", "-o", binary, "../cmd/syncd")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build syncd:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is one syncd process.
type proc struct {
	t    testing.TB
	name string
	args []string
	dir  string
	cmd  *exec.Cmd
	addr string // host:port of the HTTP API
	mu   sync.Mutex
	logs bytes.Buffer
	done chan struct{}
}

var servingRE = regexp.MustCompile(`region serving.* http=http://([0-9.:]+)`)

// startRegion runs `syncd serve --node name --data dir` with extra flags
// and waits until it serves.
func startRegion(t testing.TB, name, dir string, extra ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, dir: dir,
		args: append([]string{"serve", "--node", name, "--data", dir, "--http", "127.0.0.1:0"}, extra...)}
	p.start()
	t.Cleanup(p.kill)
	return p
}

func (p *proc) start() {
	p.t.Helper()
	p.cmd = exec.Command(binary, p.args...)
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		p.t.Fatal(err)
	}
	p.cmd.Stdout = io.Discard
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	p.done = make(chan struct{})
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			p.mu.Lock()
			p.logs.WriteString(line + "\n")
			p.mu.Unlock()
			if m := servingRE.FindStringSubmatch(line); m != nil {
				select {
				case addr <- m[1]:
				default:
				}
			}
		}
		p.cmd.Wait()
		close(p.done)
	}()
	select {
	case p.addr = <-addr:
	case <-p.done:
		p.t.Fatalf("%s exited before serving:\n%s", p.name, p.Logs())
	case <-time.After(30 * time.Second):
		p.t.Fatalf("%s did not serve within 30s:\n%s", p.name, p.Logs())
	}
}

// Logs returns what the process wrote to stderr.
func (p *proc) Logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.String()
}

// kill9 kills the process without warning, as a crash would.
func (p *proc) kill9() {
	if p.cmd.Process != nil {
		p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
	}
}

func (p *proc) kill() {
	select {
	case <-p.done:
	default:
		p.kill9()
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop() {
	p.t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		p.t.Fatalf("%s did not stop on SIGTERM:\n%s", p.name, p.Logs())
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		p.t.Fatalf("%s exited %d on SIGTERM:\n%s", p.name, code, p.Logs())
	}
}

func (p *proc) restart() {
	p.t.Helper()
	p.kill()
	p.logs.Reset()
	p.start()
}

func (p *proc) url(path string) string { return "http://" + p.addr + path }

// response is an HTTP answer with its JSON decoded loosely.
type response struct {
	Status int
	Body   []byte
	JSON   map[string]any
}

func (r response) errCode() string {
	if e, ok := r.JSON["error"].(map[string]any); ok {
		c, _ := e["code"].(string)
		return c
	}
	return ""
}

var client = &http.Client{Timeout: 30 * time.Second}

func (p *proc) do(method, path string, body any, hdr ...string) response {
	p.t.Helper()
	r, err := p.try(method, path, body, hdr...)
	if err != nil {
		p.t.Fatalf("%s %s: %v", method, path, err)
	}
	return r
}

func (p *proc) try(method, path string, body any, hdr ...string) (response, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			return response{}, err
		}
		rd = bytes.NewReader(j)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, p.url(path), rd)
	if err != nil {
		return response{}, err
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return response{}, err
	}
	out := response{Status: resp.StatusCode, Body: b}
	_ = json.Unmarshal(b, &out.JSON)
	return out, nil
}

// field returns a document's field as JSON text.
func field(r response, name string) string {
	f, _ := r.JSON["fields"].(map[string]any)
	v, ok := f[name]
	if !ok {
		return ""
	}
	b, _ := json.Marshal(v)
	return string(b)
}

var (
	portsMu sync.Mutex
	ports   = map[int]bool{} // handed out by freePort
)

// freePort returns a port that is free now and was not handed out
// before, below the kernel's range of ephemeral ports. Tests restart
// processes on fixed ports; one from that range could be taken while its
// process is down by anything that asks for a random one (an embedded
// NATS client listener, an outgoing connection), and the restart fail.
func freePort(t testing.TB) int {
	t.Helper()
	lo := 32768 // Linux's default start of the range
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > 11000 {
				lo = n
			}
		}
	}
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 1000 {
		p := 10000 + rand.IntN(lo-10000)
		if ports[p] {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		l.Close()
		ports[p] = true
		return p
	}
	t.Fatal("no free port below the ephemeral range")
	return 0
}

// eventually retries f until it returns nil or the deadline passes.
func eventually(t testing.TB, within time.Duration, f func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("not within %s: %v", within, err)
}
