package clientsdk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/node"
	"github.com/syncd/syncd/replica"
	"github.com/syncd/syncd/resolver"
)

// Doc is a handle on one document; it holds no state of its own.
type Doc struct {
	c        *Client
	coll, id string
}

// Doc returns a handle on a document of a collection.
func (c *Client) Doc(coll, id string) *Doc { return &Doc{c: c, coll: coll, id: id} }

// Document is a document as the device sees it now.
type Document struct {
	ID        string
	Fields    map[string]any
	Conflicts map[string][]Version
	Deleted   bool
}

// Version is one value of a field in conflict.
type Version struct {
	Value   any
	Replica string
	Node    string
	HLC     string
}

func (d *Doc) write(ctx context.Context, field string, op crdt.Op, value any) error {
	var raw json.RawMessage
	if op != crdt.OpDelete {
		b, err := json.Marshal(value)
		if err != nil {
			return fmt.Errorf("%s %s.%s: value: %w", op, d.id, field, err)
		}
		raw = b
	}
	_, err := d.c.n.Write(ctx, d.c.opts.Namespace, []resolver.Op{{Coll: d.coll, Doc: d.id, Field: field, Op: op, Value: raw}}, node.WriteOptions{})
	if errors.Is(err, node.ErrStopped) {
		return ErrClosed
	}
	if err != nil {
		return fmt.Errorf("%s %s/%s.%s: %w", op, d.coll, d.id, field, err)
	}
	return nil
}

// Set writes an lww or manual field.
func (d *Doc) Set(ctx context.Context, field string, value any) error {
	return d.write(ctx, field, crdt.OpSet, value)
}

// Add adds a value to an orset field.
func (d *Doc) Add(ctx context.Context, field string, value any) error {
	return d.write(ctx, field, crdt.OpAdd, value)
}

// Remove removes a value from an orset field (the adds this device has
// seen; a concurrent add elsewhere wins).
func (d *Doc) Remove(ctx context.Context, field string, value any) error {
	return d.write(ctx, field, crdt.OpRemove, value)
}

// Incr adds delta to a counter field.
func (d *Doc) Incr(ctx context.Context, field string, delta int64) error {
	return d.write(ctx, field, crdt.OpIncr, delta)
}

// Resolve replaces every version of a manual field this device has seen
// with one value.
func (d *Doc) Resolve(ctx context.Context, field string, value any) error {
	return d.write(ctx, field, crdt.OpResolve, value)
}

// Delete deletes the document; a later write revives it.
func (d *Doc) Delete(ctx context.Context) error { return d.write(ctx, "", crdt.OpDelete, nil) }

// Get reads the document from the local store.
func (d *Doc) Get(ctx context.Context) (Document, error) {
	d.c.mu.Lock()
	closed := d.c.closed
	d.c.mu.Unlock()
	if closed {
		return Document{}, ErrClosed
	}
	fs, err := d.c.st.GetDoc(ctx, crdt.DocKey{NS: d.c.opts.Namespace, Coll: d.coll, Doc: d.id})
	if err != nil {
		return Document{}, fmt.Errorf("get %s/%s: %w", d.coll, d.id, err)
	}
	v := resolver.Render(d.id, fs, nil)
	out := Document{ID: d.id, Fields: map[string]any{}, Conflicts: map[string][]Version{}, Deleted: v.Deleted}
	for f, raw := range v.Fields {
		var x any
		_ = json.Unmarshal(raw, &x) // rendered from canonical JSON
		out.Fields[f] = x
	}
	for f, vs := range v.Conflicts {
		for _, ver := range vs {
			var x any
			_ = json.Unmarshal(ver.Value, &x)
			out.Conflicts[f] = append(out.Conflicts[f], Version{Value: x, Replica: ver.Replica.String(), Node: ver.Node, HLC: ver.HLC.String()})
		}
	}
	return out, nil
}

// Change is one change as it lands in the device's store.
type Change struct {
	Coll, Doc, Field string
	Op               string
	Value            json.RawMessage
	Local            bool // written on this device
	HLC              string
}

type watcher struct {
	coll string
	ch   chan Change
	done chan struct{}
}

func (w *watcher) stop() {
	select {
	case <-w.done:
	default:
		close(w.done)
		close(w.ch)
	}
}

// Watch streams the changes of a collection as they become durable here,
// local or remote, until ctx ends. A watcher that falls more than 1,024
// changes behind misses changes (reading the documents again catches up).
func (c *Client) Watch(ctx context.Context, coll string) (<-chan Change, error) {
	if err := crdt.ValidateName(coll); err != nil {
		return nil, err
	}
	w := &watcher{coll: coll, ch: make(chan Change, 1024), done: make(chan struct{})}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	c.watchers[w] = struct{}{}
	c.mu.Unlock()
	go func() {
		<-ctx.Done()
		c.mu.Lock()
		delete(c.watchers, w)
		w.stop()
		c.mu.Unlock()
	}()
	return w.ch, nil
}

// onCommit runs on the device's loop after each save: it must not block.
func (c *Client) onCommit(rd *replica.Ready) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.watchers) == 0 {
		return
	}
	// A device's Log holds only what is new to it: not its own writes
	// coming back stamped, nor what a re-fetch brings again.
	me := c.ReplicaID()
	for _, ch := range rd.Log {
		for w := range c.watchers {
			if w.coll != ch.Coll {
				continue
			}
			select {
			case w.ch <- Change{Coll: ch.Coll, Doc: ch.Doc, Field: ch.Field, Op: ch.Op.String(), Value: ch.Value, Local: ch.Origin == me, HLC: ch.HLC.String()}:
			default:
			}
		}
	}
}
