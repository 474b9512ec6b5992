package sqlitestore

import (
	"errors"
	"fmt"
	"sync"
	"time"
)

// The WAL is copied back into the database file (a checkpoint) by a
// goroutine of the store's own, on a connection of its own, rather than
// by whichever commit crosses SQLite's threshold of 1,000 WAL pages: that
// checkpoint runs inside the committing call, so under a steady load one
// round of the node loop in a few hundred took several milliseconds longer
// (a few MB copied and two fsyncs) and every write and replicated change
// waiting behind it did too; that was most of the replication
// propagation's p99. A PASSIVE checkpoint runs beside the writer without
// blocking it.
//
// SQLite starts the WAL over only at a commit that finds every frame
// already copied, which under continuous writes a checkpoint running
// beside them rarely leaves. So the WAL grows to the writer's own
// automatic checkpoint, kept at a much higher threshold (walBackstop,
// 40 MB of 4 KB pages): that one runs inside a commit again, but finds
// nearly every frame already copied, and starts the WAL over. Watching
// the WAL during `syncd bench replication` shows exactly this: it grows
// to about 40 MB under load, then starts over.
const (
	// ckptEvery is the least time between two background checkpoints,
	// so a busy store checkpoints in batches, not once per commit.
	ckptEvery = 100 * time.Millisecond
	// walBackstop is the writer's own autocheckpoint, in pages.
	walBackstop = 10000
)

type checkpointer struct {
	c    *wconn
	kick chan struct{}
	stop chan struct{}
	done chan struct{}

	mu  sync.Mutex
	err error // the first failed checkpoint, reported by Close
}

func startCheckpointer(dsn string) (*checkpointer, error) {
	c, err := openConn(dsn)
	if err != nil {
		return nil, fmt.Errorf("open checkpoint connection: %w", err)
	}
	k := &checkpointer{c: c, kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go k.run()
	return k, nil
}

// committed tells the checkpointer the WAL grew; it never blocks.
func (k *checkpointer) committed() {
	select {
	case k.kick <- struct{}{}:
	default:
	}
}

func (k *checkpointer) run() {
	defer close(k.done)
	for {
		select {
		case <-k.stop:
			return
		case <-k.kick:
		}
		if err := k.c.exec("PRAGMA wal_checkpoint(PASSIVE)"); err != nil {
			k.mu.Lock()
			if k.err == nil {
				k.err = fmt.Errorf("background checkpoint: %w", err)
			}
			k.mu.Unlock()
		}
		select {
		case <-k.stop:
			return
		case <-time.After(ckptEvery):
		}
	}
}

// close stops the goroutine and closes its connection, returning the
// first checkpoint that failed, if any (the writer's own checkpoint, at
// the threshold and on close, still ran).
func (k *checkpointer) close() error {
	close(k.stop)
	<-k.done
	k.mu.Lock()
	defer k.mu.Unlock()
	return errors.Join(k.err, k.c.close())
}
