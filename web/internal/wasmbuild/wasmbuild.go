// Package wasmbuild builds the browser core (web/wasm) the one way both
// `go generate ./web/...` and the staleness test use, so that a rebuild
// from the same sources with the same toolchain gives the same bytes:
// -trimpath, no VCS stamp, no build id, stripped symbols, a clean
// environment.
package wasmbuild

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// Package is the core's import path relative to the web directory.
const Package = "./wasm"

// Flags are the fixed build flags. -s -w drop the symbol table and DWARF,
// which the page never needs (only about 2% of a js/wasm binary: its size
// is the code of encoding/json, reflect, fmt and the runtime).
var Flags = []string{"-trimpath", "-buildvcs=false", "-ldflags=-s -w -buildid="}

// Manifest describes the committed build; the page shows its sizes.
type Manifest struct {
	Go        string `json:"go"`         // toolchain that built it
	Inputs    string `json:"inputs"`     // InputsHash at build time
	SHA256    string `json:"sha256"`     // of the raw .wasm
	RawBytes  int    `json:"raw_bytes"`  // the raw .wasm
	GzipBytes int    `json:"gzip_bytes"` // what the browser downloads
	Flags     string `json:"flags"`
}

// env is the build environment: the caller's, minus anything that would
// change the output (GOFLAGS such as -race or -cover, another target).
func env() []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "GOOS", "GOARCH", "GOFLAGS", "CGO_ENABLED", "GOWASM", "GOEXPERIMENT":
			continue
		}
		out = append(out, kv)
	}
	return append(out, "GOOS=js", "GOARCH=wasm", "CGO_ENABLED=0", "GOFLAGS=")
}

func goCmd(ctx context.Context, dir string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir, cmd.Env = dir, env()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// GoVersion is the toolchain's version, as `go env GOVERSION` says.
func GoVersion(ctx context.Context, webDir string) (string, error) {
	out, err := goCmd(ctx, webDir, "env", "GOVERSION")
	return strings.TrimSpace(string(out)), err
}

// GOROOT is the toolchain's root, where wasm_exec.js comes from.
func GOROOT(ctx context.Context, webDir string) (string, error) {
	out, err := goCmd(ctx, webDir, "env", "GOROOT")
	return strings.TrimSpace(string(out)), err
}

// WasmExec returns the toolchain's wasm_exec.js, which must match the Go
// version that built the .wasm.
func WasmExec(ctx context.Context, webDir string) ([]byte, error) {
	root, err := GOROOT(ctx, webDir)
	if err != nil {
		return nil, err
	}
	for _, p := range []string{"lib/wasm/wasm_exec.js", "misc/wasm/wasm_exec.js"} { // Go 1.24 moved it
		if b, err := os.ReadFile(filepath.Join(root, p)); err == nil {
			return b, nil
		}
	}
	return nil, fmt.Errorf("wasm_exec.js not found under %s", root)
}

// Build compiles the core and returns the .wasm bytes.
func Build(ctx context.Context, webDir string) ([]byte, error) {
	tmp, err := os.MkdirTemp("", "syncd-wasm-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, "core.wasm")
	args := append([]string{"build"}, Flags...)
	args = append(args, "-o", out, Package)
	if _, err := goCmd(ctx, webDir, args...); err != nil {
		return nil, err
	}
	return os.ReadFile(out)
}

// InputsHash hashes what the .wasm is built from: the source files of
// every package of this module it links (read from disk) and the module
// path and version of every other (the module cache is immutable). The
// standard library is covered by the toolchain version, kept beside it.
// A test can compare it without building.
func InputsHash(ctx context.Context, webDir string) (string, error) {
	out, err := goCmd(ctx, webDir, "list", "-deps", "-json=ImportPath,Dir,GoFiles,EmbedFiles,Standard,Module", Package)
	if err != nil {
		return "", err
	}
	type pkg struct {
		ImportPath string
		Dir        string
		GoFiles    []string
		EmbedFiles []string
		Standard   bool
		Module     *struct {
			Path    string
			Version string
			Main    bool
		}
	}
	h := sha256.New()
	fmt.Fprintf(h, "flags %q\n", Flags)
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return "", fmt.Errorf("go list: %w", err)
		}
		switch {
		case p.Standard:
			continue
		case p.Module == nil:
			return "", fmt.Errorf("package %s has no module", p.ImportPath)
		case !p.Module.Main:
			fmt.Fprintf(h, "pkg %s %s@%s\n", p.ImportPath, p.Module.Path, p.Module.Version)
			continue
		}
		fmt.Fprintf(h, "pkg %s\n", p.ImportPath)
		files := append(slices.Clone(p.GoFiles), p.EmbedFiles...)
		slices.Sort(files)
		for _, f := range files {
			b, err := os.ReadFile(filepath.Join(p.Dir, f))
			if err != nil {
				return "", err
			}
			fmt.Fprintf(h, "file %s %d\n", f, len(b))
			h.Write(b)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Gzip compresses at the best level with an empty header, so the same
// bytes always give the same file.
func Gzip(raw []byte) []byte {
	var b bytes.Buffer
	w, _ := gzip.NewWriterLevel(&b, gzip.BestCompression) // the level is valid
	w.Write(raw)
	w.Close()
	return b.Bytes()
}

// Gunzip is the inverse of Gzip.
func Gunzip(gz []byte) ([]byte, error) {
	r, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		return nil, err
	}
	return io.ReadAll(r)
}

// Sum is the hex SHA-256 of b.
func Sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
