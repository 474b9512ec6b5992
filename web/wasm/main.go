//go:build js && wasm

// Command wasm is the browser's replica core: package device (crdt,
// resolver and replica around an in-memory store) behind a small
// syscall/js binding, so a device in the page merges exactly as the Go
// regions do. `go generate ./web/...` builds it into web/demo/core.wasm.gz.
//
// It sets one global, syncdCore, whose functions take and return strings
// (JSON), which keeps the binding small and every value plain:
//
//	open(ns, snapshot|null)      -> {"handle", "id"}       a device, fresh or from IndexedDB
//	hello(h, colls)              -> the hello frame         first websocket message
//	connect(h, regionID, colls)  -> {}                      after the region's welcome
//	disconnect(h), tick(h)       -> {}
//	write(h, ops)                -> {}                      ops: [{"coll","doc","field","op","value"}]
//	step(h, frame)               -> {}                      a frame from the region
//	ready(h)                     -> null | {"snapshot", "messages", "changes"}
//	advance(h)                   -> {}                      once the snapshot is saved
//	export(h)                    -> {"snapshot"}            what the store holds now
//	doc(h, coll, id), docs(h, coll), status(h), close(h)
//
// Every function returns {"error": "..."} instead of throwing.
package main

import (
	"encoding/json"
	"fmt"
	"syscall/js"

	"github.com/google/uuid"

	"github.com/syncd/syncd/web/wasm/device"
)

var (
	devices = map[int]*device.Device{}
	next    = 1
)

func main() {
	core := js.Global().Get("Object").New()
	bind := func(name string, f func(args []js.Value) (any, error)) {
		core.Set(name, js.FuncOf(func(_ js.Value, args []js.Value) (result any) {
			// A bug here must surface in the page as an error, not kill
			// the Go runtime every device of the page runs on.
			defer func() {
				if p := recover(); p != nil {
					result = errJSON(fmt.Errorf("core panic: %v", p))
				}
			}()
			v, err := f(args)
			if err != nil {
				return errJSON(err)
			}
			b, err := json.Marshal(v)
			if err != nil {
				return errJSON(err)
			}
			return string(b)
		}))
	}
	bind("open", func(a []js.Value) (any, error) {
		var snap []byte
		if len(a) > 1 && a[1].Type() == js.TypeString {
			snap = []byte(a[1].String())
		}
		d, err := device.New(str(a, 0), snap, nil)
		if err != nil {
			return nil, err
		}
		h := next
		next++
		devices[h] = d
		return map[string]any{"handle": h, "id": d.ID()}, nil
	})
	withDevice := func(name string, f func(d *device.Device, a []js.Value) (any, error)) {
		bind(name, func(a []js.Value) (any, error) {
			if len(a) == 0 {
				return nil, fmt.Errorf("%s: no device handle", name)
			}
			d, ok := devices[a[0].Int()]
			if !ok {
				return nil, fmt.Errorf("%s: no device %d", name, a[0].Int())
			}
			return f(d, a[1:])
		})
	}
	withDevice("hello", func(d *device.Device, a []js.Value) (any, error) {
		b, err := d.Hello(colls(a, 0))
		return json.RawMessage(b), err
	})
	withDevice("connect", func(d *device.Device, a []js.Value) (any, error) {
		region, err := uuid.Parse(str(a, 0))
		if err != nil {
			return nil, fmt.Errorf("connect: region id: %w", err)
		}
		d.Connect(region, colls(a, 1))
		return struct{}{}, nil
	})
	withDevice("disconnect", func(d *device.Device, _ []js.Value) (any, error) {
		d.Disconnect()
		return struct{}{}, nil
	})
	withDevice("tick", func(d *device.Device, _ []js.Value) (any, error) {
		d.Tick()
		return struct{}{}, nil
	})
	withDevice("write", func(d *device.Device, a []js.Value) (any, error) {
		var ops []device.Op
		if err := json.Unmarshal([]byte(str(a, 0)), &ops); err != nil {
			return nil, fmt.Errorf("write: ops: %w", err)
		}
		return struct{}{}, d.Write(ops)
	})
	withDevice("step", func(d *device.Device, a []js.Value) (any, error) {
		return struct{}{}, d.Step([]byte(str(a, 0)))
	})
	withDevice("ready", func(d *device.Device, _ []js.Value) (any, error) {
		f, ok, err := d.Ready()
		if err != nil || !ok {
			return nil, err
		}
		out := struct {
			device.Flush
			Snapshot *string `json:"snapshot"`
		}{Flush: f}
		if f.Snapshot != nil {
			s := string(f.Snapshot)
			out.Snapshot = &s
		}
		return out, nil
	})
	withDevice("advance", func(d *device.Device, _ []js.Value) (any, error) {
		d.Advance()
		return struct{}{}, nil
	})
	withDevice("export", func(d *device.Device, _ []js.Value) (any, error) {
		b, err := d.Export()
		return map[string]string{"snapshot": string(b)}, err
	})
	withDevice("doc", func(d *device.Device, a []js.Value) (any, error) {
		v, ok, err := d.Doc(str(a, 0), str(a, 1))
		if err != nil || !ok {
			return nil, err
		}
		return v, nil
	})
	withDevice("docs", func(d *device.Device, a []js.Value) (any, error) {
		return d.Docs(str(a, 0))
	})
	withDevice("status", func(d *device.Device, _ []js.Value) (any, error) {
		return d.Status(), nil
	})
	bind("close", func(a []js.Value) (any, error) {
		if len(a) > 0 {
			delete(devices, a[0].Int())
		}
		return struct{}{}, nil
	})
	core.Set("version", device.SnapshotVersion)
	js.Global().Set("syncdCore", core)
	if cb := js.Global().Get("onSyncdCoreReady"); cb.Type() == js.TypeFunction {
		cb.Invoke()
	}
	select {} // the functions above live as long as the page
}

func str(a []js.Value, i int) string {
	if i < len(a) && a[i].Type() == js.TypeString {
		return a[i].String()
	}
	return ""
}

// colls reads an optional JSON array of collection names.
func colls(a []js.Value, i int) []string {
	var cs []string
	if s := str(a, i); s != "" {
		_ = json.Unmarshal([]byte(s), &cs) // a malformed list follows everything
	}
	return cs
}

func errJSON(err error) string {
	b, _ := json.Marshal(map[string]string{"error": err.Error()})
	return string(b)
}
