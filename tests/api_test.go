package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestAPI(t *testing.T) {
	p := startRegion(t, "nyc", t.TempDir())

	// Schema first: a cart with an add-wins set, a stock counter, a
	// manually resolved title.
	r := p.do("PUT", "/v1/schema/shop/carts", `{"fields":{"items":"orset","stock":"counter","title":"manual"}}`)
	if r.Status != 200 {
		t.Fatalf("put schema: %d %s", r.Status, r.Body)
	}
	r = p.do("GET", "/v1/schema/shop/carts", nil)
	if got := string(r.Body); !strings.Contains(got, `"items":"orset"`) || !strings.Contains(got, `"stock":"counter"`) {
		t.Fatalf("get schema: %s", got)
	}

	r = p.do("PATCH", "/v1/docs/shop/carts/c1", `{"title":"Groceries","note":"by friday"}`)
	if r.Status != 200 || field(r, "title") != `"Groceries"` || field(r, "note") != `"by friday"` {
		t.Fatalf("patch: %d %s", r.Status, r.Body)
	}
	if tok, _ := r.JSON["token"].(string); !strings.HasPrefix(tok, "v1.") {
		t.Fatalf("write without a session token: %s", r.Body)
	}
	r = p.do("POST", "/v1/docs/shop/carts/c1/ops", `{"ops":[{"field":"items","op":"add","value":"apple"},{"field":"items","op":"add","value":"pear"},{"field":"stock","op":"incr","value":5},{"field":"stock","op":"incr","value":-2}]}`)
	if r.Status != 200 || field(r, "items") != `["apple","pear"]` || field(r, "stock") != `3` {
		t.Fatalf("ops: %d %s", r.Status, r.Body)
	}
	r = p.do("POST", "/v1/docs/shop/carts/c1/ops", `{"ops":[{"field":"items","op":"remove","value":"apple"}]}`)
	if field(r, "items") != `["pear"]` {
		t.Fatalf("remove: %s", r.Body)
	}
	r = p.do("GET", "/v1/docs/shop/carts/c1", nil)
	if r.Status != 200 || field(r, "items") != `["pear"]` || r.JSON["deleted"] != false {
		t.Fatalf("get: %d %s", r.Status, r.Body)
	}
	// Read your own write with the token (trivially here: one region).
	tok, _ := p.do("PATCH", "/v1/docs/shop/carts/c2", `{"title":"x"}`).JSON["token"].(string)
	if r = p.do("GET", "/v1/docs/shop/carts/c2?after="+tok, nil); r.Status != 200 {
		t.Fatalf("get after token: %d %s", r.Status, r.Body)
	}
	r = p.do("POST", "/v1/docs/shop/carts/c1/resolve", `{"field":"title","value":"Weekly"}`)
	if r.Status != 200 || field(r, "title") != `"Weekly"` {
		t.Fatalf("resolve: %d %s", r.Status, r.Body)
	}

	// List, paged.
	for i := 0; i < 5; i++ {
		p.do("PATCH", fmt.Sprintf("/v1/docs/shop/notes/n%d", i), `{"text":"hi"}`)
	}
	r = p.do("GET", "/v1/docs/shop/notes?limit=3", nil)
	docs, _ := r.JSON["docs"].([]any)
	next, _ := r.JSON["next"].(string)
	if len(docs) != 3 || next != "n2" {
		t.Fatalf("list page 1: %s", r.Body)
	}
	r = p.do("GET", "/v1/docs/shop/notes?limit=3&after="+next, nil)
	if docs, _ = r.JSON["docs"].([]any); len(docs) != 2 {
		t.Fatalf("list page 2: %s", r.Body)
	}

	// Delete, then a later write revives.
	r = p.do("DELETE", "/v1/docs/shop/notes/n0", nil)
	if r.Status != 200 || r.JSON["deleted"] != true || field(r, "text") != "" {
		t.Fatalf("delete: %d %s", r.Status, r.Body)
	}
	r = p.do("PATCH", "/v1/docs/shop/notes/n0", `{"other":1}`)
	if r.JSON["deleted"] != false || field(r, "other") != "1" || field(r, "text") != "" {
		t.Fatalf("revive: %s", r.Body)
	}

	if r = p.do("GET", "/v1/conflicts/shop", nil); r.Status != 200 || r.JSON["count"] != float64(0) {
		t.Fatalf("conflicts on one region: %d %s", r.Status, r.Body)
	}
	if r = p.do("GET", "/v1/status", nil); r.Status != 200 || r.JSON["node"] != "nyc" {
		t.Fatalf("status: %d %s", r.Status, r.Body)
	}
	if r = p.do("GET", "/metrics", nil); r.Status != 200 || !strings.Contains(string(r.Body), "syncd_writes_total") {
		t.Fatalf("metrics: %d", r.Status)
	}
	if r = p.do("GET", "/healthz", nil); r.Status != 200 {
		t.Fatalf("healthz: %d", r.Status)
	}
	if r = p.do("GET", "/v1/docs/shop/carts/nope", nil); r.Status != 404 || r.errCode() != "not_found" {
		t.Fatalf("missing doc: %d %s", r.Status, r.Body)
	}

	// `syncd status` prints a readable summary of the same.
	out, err := exec.Command(binary, "status", "--http", p.addr).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "region nyc") || !strings.Contains(string(out), "shop") {
		t.Fatalf("syncd status: %v\n%s", err, out)
	}
}

// TestBadInput: every refused request answers a clear error, applies
// nothing, and the process keeps serving.
func TestBadInput(t *testing.T) {
	p := startRegion(t, "nyc", t.TempDir(), "--max-body", "4096")
	p.do("PUT", "/v1/schema/shop/carts", `{"fields":{"items":"orset","stock":"counter"}}`)
	p.do("PATCH", "/v1/docs/shop/carts/c1", `{"title":"before"}`)
	before := p.do("GET", "/v1/docs/shop/carts/c1", nil).Body

	deep := strings.Repeat("[", 65) + strings.Repeat("]", 65)
	cases := []struct {
		name, method, path, body string
		status                   int
		code                     string
	}{
		{"malformed json", "PATCH", "/v1/docs/shop/carts/c1", `{"title":`, 400, "bad_json"},
		{"not an object", "PATCH", "/v1/docs/shop/carts/c1", `[1,2]`, 400, "bad_json"},
		{"trailing data", "PATCH", "/v1/docs/shop/carts/c1", `{"title":"x"} {}`, 400, "bad_json"},
		{"bad namespace", "PATCH", "/v1/docs/sh%20op/carts/c1", `{"title":"x"}`, 400, "bad_name"},
		{"bad collection", "PATCH", "/v1/docs/shop/ca$rts/c1", `{"title":"x"}`, 400, "bad_name"},
		{"bad doc id", "PATCH", "/v1/docs/shop/carts/c%2F1", `{"title":"x"}`, 400, "bad_name"},
		{"long namespace", "PATCH", "/v1/docs/" + strings.Repeat("n", 65) + "/carts/c1", `{"title":"x"}`, 400, "bad_name"},
		{"bad field name", "PATCH", "/v1/docs/shop/carts/c1", `{"ti tle":"x"}`, 400, "bad_name"},
		{"reserved collection", "PATCH", "/v1/docs/shop/_schema/carts", `{"items":"lww"}`, 400, "reserved"},
		{"unknown op", "POST", "/v1/docs/shop/carts/c1/ops", `{"ops":[{"field":"items","op":"explode","value":1}]}`, 400, "unknown_op"},
		{"unknown body field", "POST", "/v1/docs/shop/carts/c1/ops", `{"ops":[],"extra":1}`, 400, "bad_json"},
		{"wrong kind: incr on lww", "POST", "/v1/docs/shop/carts/c1/ops", `{"ops":[{"field":"title","op":"incr","value":1}]}`, 409, "wrong_kind"},
		{"wrong kind: set on orset", "PATCH", "/v1/docs/shop/carts/c1", `{"items":["a"]}`, 409, "wrong_kind"},
		{"batch all or nothing", "POST", "/v1/docs/shop/carts/c1/ops", `{"ops":[{"field":"title","op":"set","value":"after"},{"field":"stock","op":"add","value":1}]}`, 409, "wrong_kind"},
		{"counter not an integer", "POST", "/v1/docs/shop/carts/c1/ops", `{"ops":[{"field":"stock","op":"incr","value":1.5}]}`, 400, "invalid"},
		{"counter overflow", "POST", "/v1/docs/shop/carts/c1/ops", `{"ops":[{"field":"stock","op":"incr","value":9223372036854775807},{"field":"stock","op":"incr","value":1}]}`, 409, "counter_overflow"},
		{"too deep", "PATCH", "/v1/docs/shop/carts/c1", `{"title":` + deep + `}`, 400, "too_deep"},
		{"too large", "PATCH", "/v1/docs/shop/carts/c1", `{"title":"` + strings.Repeat("x", 5000) + `"}`, 413, "too_large"},
		{"bad ack", "PATCH", "/v1/docs/shop/carts/c1?ack=most", `{"title":"x"}`, 400, "bad_param"},
		{"bad timeout", "PATCH", "/v1/docs/shop/carts/c1?ack=2&timeout=soon", `{"title":"x"}`, 400, "bad_param"},
		{"bad token", "GET", "/v1/docs/shop/carts/c1?after=v1.!!!", "", 400, "bad_token"},
		{"bad schema kind", "PUT", "/v1/schema/shop/carts", `{"fields":{"items":"bag"}}`, 400, "unknown_kind"},
		{"empty patch", "PATCH", "/v1/docs/shop/carts/c1", `{}`, 400, "invalid"},
		{"isolate without body", "POST", "/v1/admin/isolate", `{}`, 400, "invalid"},
		{"unknown path", "GET", "/v1/nothing", "", 404, "not_found"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var body any
			if c.body != "" {
				body = c.body
			}
			r := p.do(c.method, c.path, body)
			if r.Status != c.status || r.errCode() != c.code {
				t.Fatalf("got %d %q, want %d %q: %s", r.Status, r.errCode(), c.status, c.code, r.Body)
			}
			var e struct {
				Error struct{ Code, Message string }
			}
			if json.Unmarshal(r.Body, &e) != nil || e.Error.Message == "" {
				t.Fatalf("error without a message: %s", r.Body)
			}
		})
	}
	if after := p.do("GET", "/v1/docs/shop/carts/c1", nil).Body; string(after) != string(before) {
		t.Fatalf("a refused request changed the document:\nbefore %s\nafter  %s", before, after)
	}
	if r := p.do("GET", "/healthz", nil); r.Status != 200 {
		t.Fatalf("not serving after bad input: %d", r.Status)
	}
}

func TestAuth(t *testing.T) {
	dir := t.TempDir()
	tokens := filepath.Join(dir, "tokens.json")
	os.WriteFile(tokens, []byte(`{"tokens":[
		{"name":"shop-rw","token":"rw-0123456789abcdef","read":["shop"],"write":["shop"]},
		{"name":"shop-ro","token":"ro-0123456789abcdef","read":["shop"],"write":[]}]}`), 0o600)
	p := startRegion(t, "nyc", filepath.Join(dir, "data"), "--tokens", tokens)
	rw := []string{"Authorization", "Bearer rw-0123456789abcdef"}
	ro := []string{"Authorization", "Bearer ro-0123456789abcdef"}
	if r := p.do("PATCH", "/v1/docs/shop/c/d", `{"a":1}`); r.Status != 401 {
		t.Fatalf("no token: %d", r.Status)
	}
	if r := p.do("PATCH", "/v1/docs/shop/c/d", `{"a":1}`, "Authorization", "Bearer wrong-token-0000000"); r.Status != 401 {
		t.Fatalf("wrong token: %d", r.Status)
	}
	if r := p.do("PATCH", "/v1/docs/shop/c/d", `{"a":1}`, ro...); r.Status != 403 {
		t.Fatalf("read-only token writing: %d", r.Status)
	}
	if r := p.do("PATCH", "/v1/docs/other/c/d", `{"a":1}`, rw...); r.Status != 403 {
		t.Fatalf("token outside its namespace: %d", r.Status)
	}
	if r := p.do("PATCH", "/v1/docs/shop/c/d", `{"a":1}`, rw...); r.Status != 200 {
		t.Fatalf("read-write token: %d %s", r.Status, r.Body)
	}
	if r := p.do("GET", "/v1/docs/shop/c/d", nil, ro...); r.Status != 200 {
		t.Fatalf("read-only token reading: %d", r.Status)
	}
	if r := p.do("POST", "/v1/admin/isolate", `{"isolated":true}`, ro...); r.Status != 403 {
		t.Fatalf("read-only token isolating: %d", r.Status)
	}
}

func TestRefusesOpenListenerWithoutTokens(t *testing.T) {
	out, err := exec.Command(binary, "serve", "--node", "nyc", "--data", t.TempDir(), "--http", "0.0.0.0:0").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "without --tokens") {
		t.Fatalf("want a refusal naming --tokens, got %v:\n%s", err, out)
	}
}

func TestSigtermDrainsAndRestarts(t *testing.T) {
	dir := t.TempDir()
	p := startRegion(t, "nyc", dir)
	for i := 0; i < 20; i++ {
		p.do("PATCH", fmt.Sprintf("/v1/docs/shop/c/d%d", i), `{"v":1}`)
	}
	p.stop()
	p.start()
	deadline := time.Now().Add(5 * time.Second)
	for i := 0; i < 20 && time.Now().Before(deadline); i++ {
		if r := p.do("GET", fmt.Sprintf("/v1/docs/shop/c/d%d", i), nil); r.Status != 200 {
			t.Fatalf("d%d lost across a clean restart: %d", i, r.Status)
		}
	}
}
