package tests

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// cluster is a set of regions, each its own process, bridged by NATS
// routes between their embedded servers.
type cluster struct {
	t     *testing.T
	procs []*proc
	ports []int // NATS cluster (route) ports
}

var regionNames = []string{"nyc", "london", "tokyo", "sydney", "paris"}

func startCluster(t *testing.T, n int, extra ...string) *cluster {
	t.Helper()
	c := &cluster{t: t}
	dir := t.TempDir()
	for i := 0; i < n; i++ {
		c.ports = append(c.ports, freePort(t))
	}
	for i := 0; i < n; i++ {
		args := append([]string{"--cluster-port", fmt.Sprint(c.ports[i]), "--routes", c.routes(i)}, extra...)
		c.procs = append(c.procs, startRegion(t, regionNames[i], filepath.Join(dir, regionNames[i]), args...))
	}
	c.waitMesh()
	return c
}

func (c *cluster) routes(skip int) string {
	var rs []string
	for j, p := range c.ports {
		if j != skip {
			rs = append(rs, fmt.Sprintf("nats-route://127.0.0.1:%d", p))
		}
	}
	return strings.Join(rs, ",")
}

// waitMesh waits until every region holds every other one's write and
// lists it as a peer: holding its changes is not enough for ack=all,
// which counts the regions heard from in a heartbeat or an ack.
func (c *cluster) waitMesh() {
	c.t.Helper()
	for _, p := range c.procs {
		p.do("PATCH", "/v1/docs/mesh/ping/"+p.name, `{"up":true}`)
	}
	eventually(c.t, 30*time.Second, func() error {
		for _, p := range c.procs {
			for _, q := range c.procs {
				if r := p.do("GET", "/v1/docs/mesh/ping/"+q.name, nil); r.Status != 200 {
					return fmt.Errorf("%s has not heard from %s", p.name, q.name)
				}
			}
			peers := 0
			for _, pr := range p.status().Peers {
				if pr.NS == "mesh" {
					peers++
				}
			}
			if peers != len(c.procs)-1 {
				return fmt.Errorf("%s lists %d peers, want %d", p.name, peers, len(c.procs)-1)
			}
		}
		return nil
	})
}

// converged waits until every region shows the same document, and
// returns it.
func (c *cluster) converged(path string, within time.Duration) response {
	c.t.Helper()
	return c.convergedTo(path, within, nil)
}

// convergedTo is converged with a condition the common state must meet:
// regions can agree by coincidence before every change has arrived.
func (c *cluster) convergedTo(path string, within time.Duration, want func(response) error) response {
	c.t.Helper()
	var last response
	eventually(c.t, within, func() error {
		var first string
		for i, p := range c.procs {
			r := p.do("GET", path, nil)
			if r.Status != 200 {
				return fmt.Errorf("%s: %d %s", p.name, r.Status, r.Body)
			}
			body := canonicalDoc(r)
			if i == 0 {
				first, last = body, r
			} else if body != first {
				return fmt.Errorf("%s differs:\n%s\n%s", p.name, first, body)
			}
		}
		if want != nil {
			return want(last)
		}
		return nil
	})
	return last
}

// canonicalDoc drops what may differ between regions for the same state
// (node names are resolved locally) and re-encodes with sorted keys.
func canonicalDoc(r response) string {
	m := map[string]any{}
	for _, k := range []string{"id", "fields", "conflicts", "deleted", "version"} {
		m[k] = r.JSON[k]
	}
	if cs, ok := m["conflicts"].(map[string]any); ok {
		for _, vs := range cs {
			for _, v := range vs.([]any) {
				delete(v.(map[string]any), "node")
			}
		}
	}
	b, _ := json.Marshal(m)
	return string(b)
}

func (c *cluster) isolate(p *proc, on bool) {
	c.t.Helper()
	if r := p.do("POST", "/v1/admin/isolate", fmt.Sprintf(`{"isolated":%v}`, on)); r.Status != 200 {
		c.t.Fatalf("isolate %s: %d %s", p.name, r.Status, r.Body)
	}
}

func conflictValues(r response, field string) []string {
	cs, _ := r.JSON["conflicts"].(map[string]any)
	vs, _ := cs[field].([]any)
	var out []string
	for _, v := range vs {
		b, _ := json.Marshal(v.(map[string]any)["value"])
		out = append(out, string(b))
	}
	return out
}

// TestPrimerScenarios plays the replication primer's multi-leader
// scenarios across three real regions.
func TestPrimerScenarios(t *testing.T) {
	c := startCluster(t, 3)
	nyc, london, tokyo := c.procs[0], c.procs[1], c.procs[2]
	nyc.do("PUT", "/v1/schema/hr/users", `{"fields":{"title":"manual"}}`)
	nyc.do("PUT", "/v1/schema/hr/staff", `{"fields":{"title":"lww"}}`)
	nyc.do("PUT", "/v1/schema/shop/carts", `{"fields":{"items":"orset","stock":"counter"}}`)
	for _, p := range c.procs {
		eventually(t, 10*time.Second, func() error {
			if r := p.do("GET", "/v1/schema/shop/carts", nil); !strings.Contains(string(r.Body), "orset") {
				return fmt.Errorf("%s has no cart schema yet", p.name)
			}
			if r := p.do("GET", "/v1/schema/hr/users", nil); !strings.Contains(string(r.Body), "manual") {
				return fmt.Errorf("%s has no users schema yet", p.name)
			}
			return nil
		})
	}

	t.Run("lww title", func(t *testing.T) {
		c.isolate(nyc, true)
		nyc.do("PATCH", "/v1/docs/hr/staff/u1", `{"title":"Senior Engineer"}`)
		time.Sleep(5 * time.Millisecond)
		london.do("PATCH", "/v1/docs/hr/staff/u1", `{"title":"Staff Engineer"}`)
		c.isolate(nyc, false)
		r := c.converged("/v1/docs/hr/staff/u1", 10*time.Second)
		if field(r, "title") != `"Staff Engineer"` {
			t.Fatalf("the later write should win: %s", r.Body)
		}
		if got := conflictValues(r, "title"); len(got) != 1 || got[0] != `"Senior Engineer"` {
			t.Fatalf("the overwritten value should be in the history: %v", got)
		}
	})

	t.Run("manual title", func(t *testing.T) {
		c.isolate(nyc, true)
		nyc.do("PATCH", "/v1/docs/hr/users/u1", `{"title":"Senior Engineer"}`)
		london.do("PATCH", "/v1/docs/hr/users/u1", `{"title":"Staff Engineer"}`)
		c.isolate(nyc, false)
		r := c.converged("/v1/docs/hr/users/u1", 10*time.Second)
		if got := conflictValues(r, "title"); len(got) != 2 {
			t.Fatalf("both versions must be on every region: %s", r.Body)
		}
		// The inbox lists unresolved manual siblings (and the lww
		// overwrite of the subtest before).
		inbox := tokyo.do("GET", "/v1/conflicts/hr", nil)
		if !strings.Contains(string(inbox.Body), `{"coll":"users","id":"u1"`) {
			t.Fatalf("conflict inbox at tokyo lacks users/u1: %s", inbox.Body)
		}
		tokyo.do("POST", "/v1/docs/hr/users/u1/resolve", `{"field":"title","value":"Staff Engineer"}`)
		r = c.converged("/v1/docs/hr/users/u1", 10*time.Second)
		if len(conflictValues(r, "title")) != 0 || field(r, "title") != `"Staff Engineer"` {
			t.Fatalf("resolved everywhere: %s", r.Body)
		}
	})

	t.Run("cart add wins", func(t *testing.T) {
		nyc.do("POST", "/v1/docs/shop/carts/c1/ops", `{"ops":[{"field":"items","op":"add","value":"apple"}]}`)
		c.converged("/v1/docs/shop/carts/c1", 10*time.Second)
		c.isolate(london, true)
		nyc.do("POST", "/v1/docs/shop/carts/c1/ops", `{"ops":[{"field":"items","op":"add","value":"banana"}]}`)
		london.do("POST", "/v1/docs/shop/carts/c1/ops", `{"ops":[{"field":"items","op":"remove","value":"apple"},{"field":"items","op":"add","value":"orange"}]}`)
		tokyo.do("POST", "/v1/docs/shop/carts/c1/ops", `{"ops":[{"field":"items","op":"add","value":"apple"}]}`)
		c.isolate(london, false)
		r := c.converged("/v1/docs/shop/carts/c1", 10*time.Second)
		// London's remove took out the apple it saw; tokyo's concurrent
		// re-add survives.
		if got := field(r, "items"); got != `["apple","banana","orange"]` {
			t.Fatalf("cart: %s", got)
		}
	})

	t.Run("stock counter", func(t *testing.T) {
		nyc.do("POST", "/v1/docs/shop/carts/inv/ops", `{"ops":[{"field":"stock","op":"incr","value":10}]}`)
		c.converged("/v1/docs/shop/carts/inv", 10*time.Second)
		c.isolate(tokyo, true)
		for i := 0; i < 3; i++ {
			nyc.do("POST", "/v1/docs/shop/carts/inv/ops", `{"ops":[{"field":"stock","op":"incr","value":-1}]}`)
			tokyo.do("POST", "/v1/docs/shop/carts/inv/ops", `{"ops":[{"field":"stock","op":"incr","value":-1}]}`)
		}
		c.isolate(tokyo, false)
		// Both sides took 3 of 10: the same 7 on each side until they meet.
		c.convergedTo("/v1/docs/shop/carts/inv", 10*time.Second, func(r response) error {
			if field(r, "stock") != "4" {
				return fmt.Errorf("stock: %s", r.Body)
			}
			return nil
		})
	})

	t.Run("read your writes across regions", func(t *testing.T) {
		c.isolate(tokyo, true)
		w := nyc.do("PATCH", "/v1/docs/hr/staff/u2", `{"title":"Intern"}`)
		tok := w.JSON["token"].(string)
		if r := tokyo.do("GET", "/v1/docs/hr/staff/u2?after="+tok+"&timeout=300ms", nil); r.Status != 412 || r.errCode() != "behind" {
			t.Fatalf("an isolated region cannot honour the token: %d %s", r.Status, r.Body)
		}
		c.isolate(tokyo, false)
		if r := tokyo.do("GET", "/v1/docs/hr/staff/u2?after="+tok+"&timeout=10s", nil); r.Status != 200 || field(r, "title") != `"Intern"` {
			t.Fatalf("after heal the token is honoured: %d %s", r.Status, r.Body)
		}
	})

	t.Run("write concern", func(t *testing.T) {
		r := nyc.do("PATCH", "/v1/docs/hr/staff/u3?ack=all&timeout=10s", `{"title":"x"}`)
		if r.Status != 200 || r.JSON["replicated"] != true {
			t.Fatalf("ack=all: %d %s", r.Status, r.Body)
		}
		c.isolate(nyc, true)
		r = nyc.do("PATCH", "/v1/docs/hr/staff/u3?ack=2&timeout=300ms", `{"title":"y"}`)
		if r.Status != 202 || r.JSON["replicated"] != false || field(r, "title") != `"y"` {
			t.Fatalf("ack=2 while isolated: want 202 accepted locally, got %d %s", r.Status, r.Body)
		}
		c.isolate(nyc, false)
		c.converged("/v1/docs/hr/staff/u3", 10*time.Second)
	})
}
