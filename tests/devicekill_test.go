package tests

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/syncd/syncd/clientsdk"
)

// The device process of TestDeviceKill9KeepsWrites is this test binary
// run again with these set (see TestMain).
const (
	envDeviceDir  = "SYNCD_TEST_DEVICE_DIR"
	envDeviceURL  = "SYNCD_TEST_DEVICE_URL"
	envDeviceFrom = "SYNCD_TEST_DEVICE_FROM"
)

// runDevice writes until it is killed: step i sets notes/k<i>.v = i and
// adds 1 to stock/s1.n, and once both calls have returned (the device
// has acknowledged them) prints "ack i".
func runDevice() int {
	from, err := strconv.Atoi(os.Getenv(envDeviceFrom))
	if err != nil {
		fmt.Fprintln(os.Stderr, "device: from:", err)
		return 2
	}
	ctx := context.Background()
	c, err := clientsdk.Open(ctx, clientsdk.Options{Dir: os.Getenv(envDeviceDir), URLs: []string{os.Getenv(envDeviceURL)},
		Namespace: "shop", Token: shopToken, Logger: quietLog, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if err != nil {
		fmt.Fprintln(os.Stderr, "device: open:", err)
		return 1
	}
	for i := from; ; i++ {
		if err := c.Doc("notes", fmt.Sprintf("k%d", i)).Set(ctx, "v", i); err != nil {
			fmt.Fprintln(os.Stderr, "device: set:", err)
			return 1
		}
		if err := c.Doc("stock", "s1").Incr(ctx, "n", 1); err != nil {
			fmt.Fprintln(os.Stderr, "device: incr:", err)
			return 1
		}
		fmt.Printf("ack %d\n", i)
	}
}

// TestDeviceKill9KeepsWrites kills a device process with SIGKILL in the
// middle of a stream of local writes, many times, while it pushes them
// to a region; every third time the region is killed too, a moment
// before the device, which then writes offline. After each kill the
// device's database passes integrity_check; at the end a device on the
// same store syncs, and every write the device had acknowledged is at
// the region, and the counter counts each increment once: re-pushing
// after a crash must not count a change twice.
func TestDeviceKill9KeepsWrites(t *testing.T) {
	kills := 12
	if testing.Short() {
		kills = 4
	}
	p := startRegion(t, "nyc", t.TempDir(), "--tokens", tokensFile(t))
	if r := p.do("PUT", "/v1/schema/shop/stock", `{"fields":{"n":"counter"}}`, auth...); r.Status != 200 {
		t.Fatalf("schema: %d %s", r.Status, r.Body)
	}
	dir := t.TempDir()
	d := openDevice(t, dir, wsURL(p))
	syncDevice(t, d, 30*time.Second) // the device counts only once it has the schema
	d.Close()

	rng := rand.New(rand.NewPCG(3, 4))
	last := -1 // the last step acknowledged
	for k := 0; k < kills; k++ {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), envDeviceDir+"="+dir, envDeviceURL+"="+wsURL(p), envDeviceFrom+"="+strconv.Itoa(last+1))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// On failure: stop the device, and only then read what it said
		// (exec copies its stderr until it has exited).
		fail := func(format string, a ...any) {
			t.Helper()
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf(format+": %s", append(a, stderr.String())...)
		}
		acks := make(chan int, 1<<16)
		go func() {
			defer close(acks)
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				if i, err := strconv.Atoi(strings.TrimPrefix(sc.Text(), "ack ")); err == nil {
					acks <- i
				}
			}
		}()
		// Kill once the device has written a while, at a random point of
		// its pushing; the region first, every third time.
		steps := 20 + rng.IntN(300)
		regionToo := k%3 == 2
		for n := 0; n < steps; n++ {
			select {
			case i, ok := <-acks:
				if !ok {
					fail("kill %d: the device exited", k)
				}
				last = i
				if regionToo && n == steps/2 {
					p.kill9()
				}
			case <-time.After(30 * time.Second):
				fail("kill %d: no ack for 30s", k)
			}
		}
		cmd.Process.Kill()
		for i := range acks { // printed before it died: acknowledged too
			last = i
		}
		cmd.Wait()
		checkIntegrity(t, filepath.Join(dir, "device.db"))
		if regionToo {
			p.start()
		}
	}

	d = openDevice(t, dir, wsURL(p))
	syncDevice(t, d, 60*time.Second)
	d.Close()
	got := map[string]string{}
	for after := ""; ; {
		r := p.do("GET", "/v1/docs/shop/notes?limit=1000&after="+url.QueryEscape(after), nil, auth...)
		docs, _ := r.JSON["docs"].([]any)
		for _, x := range docs {
			doc := x.(map[string]any)
			got[doc["id"].(string)] = field(response{JSON: doc}, "v")
		}
		next, _ := r.JSON["next"].(string)
		if next == "" {
			break
		}
		after = next
	}
	missing := 0
	for i := 0; i <= last; i++ {
		if v := got[fmt.Sprintf("k%d", i)]; v != strconv.Itoa(i) {
			if missing++; missing <= 10 {
				t.Errorf("acknowledged write k%d.v=%d is %q at the region", i, i, v)
			}
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d acknowledged writes missing at the region", missing, last+1)
	}
	// Each kill may leave one step's increment stored but unacknowledged,
	// and the next run repeats that step.
	r := p.do("GET", "/v1/docs/shop/stock/s1", nil, auth...)
	n, err := strconv.Atoi(field(r, "n"))
	if err != nil || n < last+1 || n > last+1+kills {
		t.Fatalf("counter at the region = %q after %d acknowledged increments and %d kills: want %d to %d",
			field(r, "n"), last+1, kills, last+1, last+1+kills)
	}
	if last+1 < kills*20 {
		t.Fatalf("only %d steps acknowledged across %d kills", last+1, kills)
	}
	t.Logf("%d steps acknowledged across %d kills; counter %d", last+1, kills, n)
}
