// Package web serves the browser conflict demo: a page (web/demo, plain
// HTML, CSS and JavaScript, no build step) whose devices run the replica
// core compiled to WebAssembly (web/wasm), so they merge exactly as the Go
// regions do. RunDemo (demo.go) starts three regions in one process and
// serves the page and their APIs under one origin.
//
// The .wasm is generated and committed, so `go run ./cmd/syncd demo`
// needs no toolchain for js/wasm; TestWasmUpToDate fails when it is stale.
package web

//go:generate go run ./internal/genwasm

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"sync"

	"github.com/syncd/syncd/web/internal/wasmbuild"
)

//go:embed demo
var demoFS embed.FS

// asset is one file of the page, held compressed: every browser accepts
// gzip, and the rare client that does not gets it inflated once.
type asset struct {
	ctype string
	etag  string
	gz    []byte
	once  sync.Once
	raw   []byte
}

func (a *asset) plain() []byte {
	a.once.Do(func() {
		r, err := gzip.NewReader(bytes.NewReader(a.gz))
		if err == nil {
			var b bytes.Buffer
			if _, err := b.ReadFrom(r); err == nil {
				a.raw = b.Bytes()
			}
		}
	})
	return a.raw
}

// Assets serves the demo page's files. It is safe for concurrent use.
type Assets struct {
	files    map[string]*asset
	manifest wasmbuild.Manifest
}

// LoadAssets reads the embedded page. core.wasm.gz is served as
// /core.wasm; text files are compressed here, once.
func LoadAssets() (*Assets, error) {
	a := &Assets{files: map[string]*asset{}}
	err := fs.WalkDir(demoFS, "demo", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := demoFS.ReadFile(p)
		if err != nil {
			return err
		}
		name := strings.TrimPrefix(p, "demo/")
		sum := sha256.Sum256(b)
		f := &asset{etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
		if name == "core.wasm.gz" {
			name, f.gz, f.ctype = "core.wasm", b, "application/wasm"
		} else {
			f.gz = wasmbuild.Gzip(b)
			f.ctype = mime.TypeByExtension(path.Ext(name))
			if f.ctype == "" {
				f.ctype = "application/octet-stream"
			}
		}
		if name == "core.wasm.json" {
			if err := json.Unmarshal(b, &a.manifest); err != nil {
				return fmt.Errorf("web: %s: %w", p, err)
			}
		}
		a.files[name] = f
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("web: load page: %w", err)
	}
	for _, need := range []string{"index.html", "core.wasm", "wasm_exec.js"} {
		if a.files[need] == nil {
			return nil, fmt.Errorf("web: the embedded page lacks %s (run go generate ./web/...)", need)
		}
	}
	return a, nil
}

// Manifest describes the embedded core.
func (a *Assets) Manifest() wasmbuild.Manifest { return a.manifest }

func (a *Assets) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimPrefix(r.URL.Path, "/")
	if name == "" {
		name = "index.html"
	}
	f := a.files[name]
	if f == nil || r.Method != http.MethodGet && r.Method != http.MethodHead {
		http.NotFound(w, r)
		return
	}
	h := w.Header()
	h.Set("Content-Type", f.ctype)
	// Revalidate every load: a rebuilt binary must not run an old core
	// against a new page; on loopback a 304 costs nothing.
	h.Set("Cache-Control", "no-cache")
	h.Set("ETag", f.etag)
	h.Set("Vary", "Accept-Encoding")
	h.Set("X-Content-Type-Options", "nosniff")
	if match := r.Header.Get("If-None-Match"); match != "" && match == f.etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	body := f.gz
	if acceptsGzip(r) {
		h.Set("Content-Encoding", "gzip")
	} else {
		body = f.plain()
	}
	h.Set("Content-Length", fmt.Sprint(len(body)))
	if r.Method == http.MethodHead {
		return
	}
	w.Write(body)
}

func acceptsGzip(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept-Encoding"), ",") {
		enc, q, _ := strings.Cut(strings.TrimSpace(part), ";")
		if strings.EqualFold(strings.TrimSpace(enc), "gzip") && strings.ReplaceAll(q, " ", "") != "q=0" {
			return true
		}
	}
	return false
}
