package replica_test

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Scenario files, in the style of etcd-io/raft's interaction tests: each
// file in testdata/ is a story of commands (see harness_test.go), each
// followed by "----" and the output it must produce. Commands are separated
// by blank lines; lines starting with # are comments. After changing the
// replica, run
//
//	go test ./replica -run TestInteraction -rewrite
//
// and read the diff: it is the change in behaviour, told as the story.
var rewrite = flag.Bool("rewrite", false, "rewrite the expected output in replica/testdata/*.txt")

func TestInteraction(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no scenario files in testdata/")
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) { runScenario(t, f) })
	}
}

// block is one command of a scenario file with what precedes it.
type block struct {
	pre  []string // comments and blank lines before the command
	line int
	cmd  string
	want []string
}

func parseScenario(path string, data []byte) ([]block, []string, error) {
	var blocks []block
	var pre []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	ln := 0
	next := func() (string, bool) {
		if !sc.Scan() {
			return "", false
		}
		ln++
		return sc.Text(), true
	}
	for {
		l, ok := next()
		if !ok {
			break
		}
		if strings.TrimSpace(l) == "" || strings.HasPrefix(l, "#") {
			pre = append(pre, l)
			continue
		}
		b := block{pre: pre, line: ln, cmd: l}
		pre = nil
		sep, ok := next()
		if ok && sep != "----" {
			if strings.TrimSpace(sep) != "" || !*rewrite {
				return nil, nil, fmt.Errorf("%s:%d: want ---- after the command, got %q", path, ln, sep)
			}
			// Rewriting: a new command written without "----" gets one.
			blocks = append(blocks, b)
			pre = append(pre, sep)
			continue
		}
		for ok {
			var out string
			if out, ok = next(); !ok || strings.TrimSpace(out) == "" {
				if ok {
					pre = append(pre, out)
				}
				break
			}
			b.want = append(b.want, out)
		}
		blocks = append(blocks, b)
		if !ok {
			break
		}
	}
	return blocks, pre, sc.Err()
}

func runScenario(t *testing.T, path string) {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blocks, tail, err := parseScenario(path, data)
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv()
	var out bytes.Buffer
	for i := range blocks {
		b := &blocks[i]
		got, err := e.run(b.cmd)
		if err != nil {
			t.Fatalf("%s:%d: %s: %v", path, b.line, b.cmd, err)
		}
		// A blank line would end the block when the file is read back.
		var lines []string
		for _, l := range strings.Split(strings.TrimRight(got, "\n"), "\n") {
			if strings.TrimSpace(l) != "" {
				lines = append(lines, l)
			}
		}
		if g, w := strings.Join(lines, "\n"), strings.Join(b.want, "\n"); g != w && !*rewrite {
			t.Errorf("%s:%d: %s\n--- want:\n%s\n--- got:\n%s", path, b.line, b.cmd, w, g)
		}
		b.want = lines
		for _, l := range b.pre {
			fmt.Fprintln(&out, l)
		}
		fmt.Fprintf(&out, "%s\n----\n", b.cmd)
		for _, l := range b.want {
			fmt.Fprintln(&out, l)
		}
	}
	for _, l := range tail {
		fmt.Fprintln(&out, l)
	}
	if *rewrite && !bytes.Equal(out.Bytes(), data) {
		if err := os.WriteFile(path, out.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("rewrote %s", path)
	}
}
