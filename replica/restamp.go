package replica

import (
	"fmt"
	"slices"

	"github.com/google/uuid"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
	"github.com/syncd/syncd/resolver"
)

// Restamp re-issues a device's unacknowledged changes that are stamped
// above floor, so that they are accepted now instead of when real time
// catches up with them.
//
// A region refuses a push whose stamps are more than its max skew ahead of
// its clock (CodeClockSkew, with its clock in Message.HLC) and applies none
// of it. The device's caller first corrects the physical clock the
// device's hlc.Clock reads, then calls Restamp with the region's stamp.
// Each refused change is re-issued as a new change with a new dot that
// supersedes the old one, so nothing is lost and nothing is counted
// twice, whether or not the old one ever reaches a region:
//
//   - register (lww, manual) and orset: the new change's context is the
//     old one's, plus the old dot, with the device's own re-issued dots
//     renamed to their new dots;
//   - counter: the same running total under a higher sequence number,
//     which replaces the old part;
//   - delete: the document's delete stamp is the new one.
//
// Should a refused push land after all (a region whose clock has since
// caught up), only a delete differs: it keeps its later stamp there.
//
// The old dots leave the outbox; the clock's high-water mark is rewound
// to the highest stamp still in use (floor, or a newer stamp this replica
// applied from its regions), since only the discarded stamps were above
// it. It returns the new changes (nil if nothing was above floor); like a
// write, they are durable after the next Ready and are pushed at once if
// the device is connected.
func (r *Replica) Restamp(floor hlc.Timestamp) ([]crdt.Change, error) {
	if r.cfg.Role != RoleDevice {
		return nil, fmt.Errorf("%w: only a device re-stamps its changes", ErrRole)
	}
	// Everything this replica applied from regions was observed by them,
	// so it is at or below the refusing region's clock, unless it came
	// from another region whose clock is further ahead: keep those too.
	for _, t := range r.newest {
		floor = max(floor, t)
	}
	var old []crdt.Change
	for _, c := range r.outbox {
		if c.HLC > floor {
			old = append(old, c)
		}
	}
	if len(old) == 0 {
		return nil, nil
	}
	r.clock.Rewind(floor)

	renamed := make(map[uint64]uint64, len(old)) // own old seq -> new seq
	fresh := make([]crdt.Change, 0, len(old))
	seq := r.seq
	for _, c := range old {
		seq++
		n := c
		n.ID, n.Seq, n.HLC = r.cfg.NewID(), seq, r.clock.Now()
		n.Context = nil
		if c.Op != crdt.OpDelete && c.Op != crdt.OpIncr {
			var ctx crdt.Ctx
			for _, d := range c.Context {
				if d.Replica == r.id {
					if s, ok := renamed[d.Seq]; ok {
						d.Seq = s
					}
				}
				ctx = ctx.Add(d)
			}
			if c.Op != crdt.OpRemove {
				// The old write is a live sibling or add here: the new
				// one replaces it. (A remove leaves no dot behind.)
				ctx = ctx.Add(c.Dot())
			}
			// Merge keeps one superseded sequence per origin, so the
			// context may be too: it then never outgrows the old one.
			n.Context = []crdt.Dot(ctx)
		}
		if err := n.Validate(r.lim); err != nil {
			return nil, fmt.Errorf("restamp %s/%d: %w", c.Origin, c.Seq, err)
		}
		renamed[c.Seq] = seq
		fresh = append(fresh, n)
	}

	// Commit: nothing above touched the replica's state.
	r.seq = seq
	oldStamp := make(map[crdt.FieldKey][]crdt.Stamp, len(old))
	for _, c := range old {
		oldStamp[c.Key()] = append(oldStamp[c.Key()], c.Stamp())
	}
	for i := range fresh {
		n := &fresh[i]
		f, _, err := r.mutable(n.Key(), nil)
		if err != nil {
			return nil, err
		}
		// The field's newest stamp (and, for the document record, its
		// delete stamp) is a maximum, so a discarded stamp would outlive
		// the change it came from. Every stamp above floor on this field
		// is one of ours being re-issued, so dropping it loses nothing:
		// the new change sets it again, above every stamp still in use.
		if slices.Contains(oldStamp[n.Key()], f.Last) {
			f.Last, f.LastKind = crdt.Stamp{}, crdt.KindNone
		}
		f.Apply(n)
		if n.Coll == resolver.SchemaColl {
			delete(r.schemas, n.Doc)
		}
		r.dirtyDots[n.Dot()] = struct{}{}
		r.rd.Log = append(r.rd.Log, *n)
		r.rd.Outbox = append(r.rd.Outbox, *n)
	}
	gone := make(map[crdt.Dot]bool, len(old))
	for _, c := range old {
		gone[c.Dot()] = true
		r.rd.OutboxDone = append(r.rd.OutboxDone, c.Dot())
		delete(r.pushed, c.Dot())
	}
	r.outbox = slices.DeleteFunc(r.outbox, func(c crdt.Change) bool { return gone[c.Dot()] })
	r.outbox = append(r.outbox, fresh...)
	if r.upstream != uuid.Nil {
		r.push(fresh)
	}
	r.stateDirty = true
	return fresh, nil
}
