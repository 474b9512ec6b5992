package web

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/syncd/syncd/web/internal/wasmbuild"
)

const regenerate = "run `go generate ./web/...` and commit web/demo"

// TestWasmUpToDate fails when the committed core (web/demo/core.wasm.gz)
// was not built from the sources in this tree. The hash of its inputs is
// checked always; with the toolchain that built it, the build is redone
// and compared byte for byte (it is reproducible: -trimpath, no build id,
// no VCS stamp). With another toolchain the bytes legitimately differ, so
// only the inputs are compared.
func TestWasmUpToDate(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	mj, err := os.ReadFile(filepath.Join("demo", "core.wasm.json"))
	if err != nil {
		t.Fatalf("%v: %s", err, regenerate)
	}
	var m wasmbuild.Manifest
	if err := json.Unmarshal(mj, &m); err != nil {
		t.Fatal(err)
	}
	gz, err := os.ReadFile(filepath.Join("demo", "core.wasm.gz"))
	if err != nil {
		t.Fatalf("%v: %s", err, regenerate)
	}
	committed, err := wasmbuild.Gunzip(gz)
	if err != nil {
		t.Fatalf("core.wasm.gz: %v: %s", err, regenerate)
	}
	if wasmbuild.Sum(committed) != m.SHA256 || len(committed) != m.RawBytes || len(gz) != m.GzipBytes {
		t.Fatalf("core.wasm.gz does not match core.wasm.json: %s", regenerate)
	}
	inputs, err := wasmbuild.InputsHash(ctx, ".")
	if err != nil {
		t.Fatal(err)
	}
	if inputs != m.Inputs {
		t.Fatalf("the core's sources changed since core.wasm.gz was built: %s", regenerate)
	}
	gov, err := wasmbuild.GoVersion(ctx, ".")
	if err != nil {
		t.Fatal(err)
	}
	if gov != m.Go {
		t.Logf("core.wasm.gz was built with %s, this is %s: only its inputs are compared", m.Go, gov)
		return
	}
	exec, err := wasmbuild.WasmExec(ctx, ".")
	if err != nil {
		t.Fatal(err)
	}
	if have, _ := os.ReadFile(filepath.Join("demo", "wasm_exec.js")); !bytes.Equal(have, exec) {
		t.Errorf("web/demo/wasm_exec.js is not %s's: %s", gov, regenerate)
	}
	if testing.Short() {
		t.Skip("-short: not rebuilding the core to compare bytes")
	}
	raw, err := wasmbuild.Build(ctx, ".")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw, committed) {
		t.Fatalf("a rebuild of the core differs from the committed one (%d bytes, sha256 %s; committed %d bytes, %s): %s",
			len(raw), wasmbuild.Sum(raw), len(committed), m.SHA256, regenerate)
	}
	if m.GzipBytes > 2<<20 {
		t.Errorf("the compressed core weighs %d bytes, over the 2 MiB budget", m.GzipBytes)
	}
}

func get(t *testing.T, h http.Handler, path string, hdr ...string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w
}

func TestAssets(t *testing.T) {
	a, err := LoadAssets()
	if err != nil {
		t.Fatal(err)
	}
	// The browser's path: compressed, and a revalidation answered 304.
	w := get(t, a, "/core.wasm", "Accept-Encoding", "gzip, deflate, br")
	if w.Code != 200 || w.Header().Get("Content-Encoding") != "gzip" || w.Header().Get("Content-Type") != "application/wasm" {
		t.Fatalf("core.wasm: %d, encoding %q, type %q", w.Code, w.Header().Get("Content-Encoding"), w.Header().Get("Content-Type"))
	}
	raw, err := wasmbuild.Gunzip(w.Body.Bytes())
	if err != nil || !bytes.HasPrefix(raw, []byte("\x00asm")) {
		t.Fatalf("core.wasm does not inflate to WebAssembly: %v", err)
	}
	if w2 := get(t, a, "/core.wasm", "If-None-Match", w.Header().Get("ETag")); w2.Code != http.StatusNotModified {
		t.Fatalf("revalidation: %d, want 304", w2.Code)
	}
	// A client without gzip gets the plain bytes.
	w = get(t, a, "/core.wasm", "Accept-Encoding", "gzip;q=0")
	if w.Header().Get("Content-Encoding") != "" || !bytes.Equal(w.Body.Bytes(), raw) {
		t.Fatalf("core.wasm without gzip: encoding %q, %d bytes (want %d plain)", w.Header().Get("Content-Encoding"), w.Body.Len(), len(raw))
	}
	w = get(t, a, "/")
	if w.Code != 200 || !strings.HasPrefix(w.Header().Get("Content-Type"), "text/html") || !strings.Contains(w.Body.String(), "app.js") {
		t.Fatalf("/: %d %q", w.Code, w.Header().Get("Content-Type"))
	}
	for _, p := range []string{"/app.js", "/style.css", "/wasm_exec.js"} {
		if w := get(t, a, p); w.Code != 200 {
			t.Errorf("%s: %d", p, w.Code)
		}
	}
	for _, p := range []string{"/nope.js", "/core.wasm.gz/x", "/../web.go"} {
		if w := get(t, a, p); w.Code != http.StatusNotFound {
			t.Errorf("%s: %d, want 404", p, w.Code)
		}
	}
}

// TestRunDemo starts the demo in-process and checks what the page relies
// on: every region's API under one origin, the schema everywhere, and the
// timeline seeing a write reach all three regions.
func TestRunDemo(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	out := &syncWriter{line: make(chan string, 1)}
	done := make(chan error, 1)
	go func() {
		done <- RunDemo(ctx, DemoConfig{HTTPAddr: "127.0.0.1:0", DataDir: t.TempDir(), Out: out, Logger: quietLogger()})
	}()
	var base string
	select {
	case l := <-out.line:
		_, rest, _ := strings.Cut(l, "open ")
		base, _, _ = strings.Cut(rest, " ")
		base = strings.TrimSuffix(base, "/")
	case err := <-done:
		t.Fatalf("demo stopped before serving: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("demo did not serve within 60s")
	}
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("demo: %v", err)
		}
	}()
	call := func(method, path, body string, v any) int {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if v != nil {
			if err := json.Unmarshal(b, v); err != nil {
				t.Fatalf("%s %s: %v: %s", method, path, err, b)
			}
		}
		return resp.StatusCode
	}
	var info struct {
		Epoch   string
		Regions []struct{ Name, ID, Path string }
	}
	call("GET", "/demo/api/info", "", &info)
	if len(info.Regions) != 3 || info.Epoch == "" {
		t.Fatalf("info: %+v", info)
	}
	for _, r := range info.Regions {
		var s struct{ Fields map[string]string }
		if code := call("GET", r.Path+"/v1/schema/demo/users_manual", "", &s); code != 200 || s.Fields["title"] != "manual" {
			t.Fatalf("%s: schema of users_manual: %d %v", r.Name, code, s.Fields)
		}
	}
	if code := call("PATCH", "/r/london/v1/docs/demo/users_lww/u1", `{"title":"Engineer"}`, nil); code != 200 {
		t.Fatalf("write at london: %d", code)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var tl struct {
			Regions []struct {
				Name   string
				Vector map[string]uint64
			}
			Changes []struct {
				Doc, Region string
				RSeq        uint64
			}
		}
		call("GET", "/demo/api/timeline", "", &tl)
		everywhere := len(tl.Changes) == 1 && tl.Changes[0].Doc == "u1"
		for _, r := range tl.Regions {
			everywhere = everywhere && r.Vector[tl.Changes[0].Region] >= tl.Changes[0].RSeq
		}
		if everywhere {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("timeline after 30s: %+v", tl)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code := call("GET", "/r/nowhere/v1/status", "", nil); code != http.StatusNotFound {
		t.Fatalf("an unknown region: %d, want 404", code)
	}
}

type syncWriter struct{ line chan string }

func (w *syncWriter) Write(b []byte) (int, error) {
	select {
	case w.line <- string(b):
	default:
	}
	return len(b), nil
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
