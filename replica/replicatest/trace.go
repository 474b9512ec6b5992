package replicatest

import (
	"fmt"
	"strings"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/replica"
	"github.com/syncd/syncd/resolver"
)

type evKind uint8

const (
	evSchema evKind = iota
	evWrite
	evSave
	evTick
	evDeliver
	evDrop
	evLost
	evConnect
	evDisconnect
	evPartition
	evHeal
	evCrash
	evRestart
	evQuiesce
	evSettled
	evMeanwhile
	evWiden
)

// event is one line of a run's trace, kept raw and formatted only when a
// run fails: formatting every event of a thousand passing seeds would cost
// more than the simulation.
type event struct {
	step int
	kind evKind
	a, b int // node indices
	n, m int
	ops  []resolver.Op
	cs   []crdt.Change
	err  error
	msg  replica.Message
	text string
}

// ring keeps the last events of a run.
type ring struct {
	buf  []event
	next int
	full bool
	s    *sim
}

func newRing(n int) *ring { return &ring{buf: make([]event, n)} }

func (s *sim) event(e event) {
	e.step = s.step
	t := s.trace
	t.buf[t.next] = e
	t.next++
	if t.next == len(t.buf) {
		t.next, t.full = 0, true
	}
}

func (t *ring) lines() []string {
	var evs []event
	if t.full {
		evs = append(evs, t.buf[t.next:]...)
	}
	evs = append(evs, t.buf[:t.next]...)
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = t.format(e)
	}
	return out
}

func (t *ring) format(e event) string {
	s := t.s
	name := func(i int) string { return s.nodes[i].name }
	var b strings.Builder
	fmt.Fprintf(&b, "%5d ", e.step)
	switch e.kind {
	case evSchema:
		fmt.Fprintf(&b, "%s put schema (%d changes)", name(e.a), e.n)
	case evWrite:
		fmt.Fprintf(&b, "%s write", name(e.a))
		for i, op := range e.ops {
			fmt.Fprintf(&b, " %s.%s %s", op.Doc, op.Field, op.Op)
			if len(op.Value) > 0 {
				fmt.Fprintf(&b, " %s", op.Value)
			}
			if i < len(e.cs) {
				c := &e.cs[i]
				fmt.Fprintf(&b, " =%d@%s", c.Seq, c.HLC)
				if len(c.Context) > 0 {
					b.WriteString(" ctx[")
					for j, d := range c.Context {
						if j > 0 {
							b.WriteByte(' ')
						}
						fmt.Fprintf(&b, "%s/%d", s.nameOf(d.Replica), d.Seq)
					}
					b.WriteByte(']')
				}
			}
			if i < len(e.ops)-1 {
				b.WriteByte(';')
			}
		}
		if e.err != nil {
			fmt.Fprintf(&b, " -> refused: %v", e.err)
		}
	case evSave:
		fmt.Fprintf(&b, "%s save (%d log, %d msgs)", name(e.a), e.n, e.m)
	case evTick:
		fmt.Fprintf(&b, "%s tick", name(e.a))
	case evDeliver:
		fmt.Fprintf(&b, "%s -> %s %s", name(e.a), name(e.b), s.fmtMsg(e.msg))
		if e.err != nil {
			fmt.Fprintf(&b, " -> error: %v", e.err)
		}
	case evDrop:
		fmt.Fprintf(&b, "%s -> %s DROPPED %s", name(e.a), name(e.b), s.fmtMsg(e.msg))
	case evLost:
		fmt.Fprintf(&b, "%s -> %s LOST (%s) %s", name(e.a), name(e.b), e.text, s.fmtMsg(e.msg))
	case evConnect:
		fmt.Fprintf(&b, "%s connects to %s", name(e.a), name(e.b))
		if e.text != "" {
			fmt.Fprintf(&b, " following %s", e.text)
		}
	case evWiden:
		fmt.Fprintf(&b, "%s follows every collection now: vector reset, restart", name(e.a))
	case evDisconnect:
		fmt.Fprintf(&b, "%s disconnects from %s", name(e.a), name(e.b))
	case evPartition:
		fmt.Fprintf(&b, "partition {%s} from the rest", e.text)
	case evHeal:
		b.WriteString("heal")
	case evCrash:
		fmt.Fprintf(&b, "%s CRASH, %d unsaved writes lost", name(e.a), e.n)
		switch crashMode(e.m) {
		case crashBeforeSave:
			b.WriteString(" (between Ready and Save)")
		case crashBeforeSend:
			b.WriteString(" (between Save and sending)")
		}
	case evRestart:
		fmt.Fprintf(&b, "%s restart", name(e.a))
	case evQuiesce:
		b.WriteString("--- quiescence: heal, restart, connect, no drops ---")
	case evMeanwhile:
		fmt.Fprintf(&b, "%s Ready handed out; meanwhile:", name(e.a))
	case evSettled:
		fmt.Fprintf(&b, "settled after %d rounds", e.n)
	}
	return b.String()
}

func (s *sim) fmtMsg(m replica.Message) string {
	var b strings.Builder
	b.WriteString(m.Type.String())
	switch m.Type {
	case replica.MsgBatch:
		fmt.Fprintf(&b, " base=%s head=%s", s.fmtVector(m.Base), s.fmtVector(m.Head))
		if m.Sync {
			b.WriteString(" sync")
		}
		if m.More {
			b.WriteString(" more")
		}
		s.fmtChanges(&b, m.Changes)
	case replica.MsgPush:
		s.fmtChanges(&b, m.Changes)
	case replica.MsgHeartbeat, replica.MsgAck, replica.MsgSyncReq:
		fmt.Fprintf(&b, " %s", s.fmtVector(m.Vector))
	case replica.MsgPushAck:
		fmt.Fprintf(&b, " %d dots", len(m.Dots))
	case replica.MsgError:
		fmt.Fprintf(&b, " %s: %s", m.Code, m.Text)
	}
	return b.String()
}

func (s *sim) fmtChanges(b *strings.Builder, cs []crdt.Change) {
	b.WriteString(" [")
	for i := range cs {
		if i > 0 {
			b.WriteByte(' ')
		}
		c := &cs[i]
		fmt.Fprintf(b, "%s/%d", s.nameOf(c.Origin), c.Seq)
		if c.RSeq != 0 {
			fmt.Fprintf(b, "=%s:%d", s.nameOf(c.Region), c.RSeq)
		}
	}
	b.WriteByte(']')
}
