// Command genwasm builds the browser core into web/demo: core.wasm.gz
// (what the page loads, committed so `go run ./cmd/syncd demo` works on a
// fresh clone), core.wasm.json (its manifest) and wasm_exec.js (the
// toolchain's loader, which must match the Go version). Run it through
// `go generate ./web/...`; it works from the web directory.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/syncd/syncd/web/internal/wasmbuild"
)

func main() {
	if err := run(context.Background(), "."); err != nil {
		fmt.Fprintln(os.Stderr, "genwasm:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, webDir string) error {
	raw, err := wasmbuild.Build(ctx, webDir)
	if err != nil {
		return err
	}
	inputs, err := wasmbuild.InputsHash(ctx, webDir)
	if err != nil {
		return err
	}
	gov, err := wasmbuild.GoVersion(ctx, webDir)
	if err != nil {
		return err
	}
	exec, err := wasmbuild.WasmExec(ctx, webDir)
	if err != nil {
		return err
	}
	gz := wasmbuild.Gzip(raw)
	m := wasmbuild.Manifest{Go: gov, Inputs: inputs, SHA256: wasmbuild.Sum(raw), RawBytes: len(raw),
		GzipBytes: len(gz), Flags: strings.Join(wasmbuild.Flags, " ")}
	mj, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Join(webDir, "demo")
	for name, b := range map[string][]byte{"core.wasm.gz": gz, "core.wasm.json": append(mj, '\n'), "wasm_exec.js": exec} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return err
		}
	}
	fmt.Printf("web/demo/core.wasm.gz: %d bytes raw, %d gzip (%s)\n", len(raw), len(gz), gov)
	return nil
}
