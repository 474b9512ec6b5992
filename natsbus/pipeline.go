package natsbus

import (
	"sync"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/replica"
)

// pipelineDepth bounds the catch-up pages requested on the replica's
// behalf that it has not yet stored: enough to keep the peer reading the
// next page while this region stores the last, few enough that a long
// catch-up never queues more than a few pages in memory.
const pipelineDepth = 3

// pipeline overlaps a catch-up's page exchange. The replica asks for the
// next page only once it has stored the last (its messages leave after
// the commit), so without this the peer would sit idle while this region
// stores a page, and this region idle while the peer reads the next one.
// When a page arrives that answers the latest request and says more
// follow, the bus asks for the next page at once, as the replica will once
// it has stored this one; the replica's own request for it is then
// dropped. A sync request acknowledges nothing (peers learn what a region
// holds only from its heartbeats and acks, sent after the commit), so
// asking ahead never lets a peer count on a change not yet durable here;
// the replica still asks for exactly what it lacks, and anything it asks
// that was not anticipated (a gap, a retry) goes out as usual.
//
// clientsdk pipelines a device's catch-up the same way.
type pipeline struct {
	mu    sync.Mutex
	peers map[pipeKey]*pipePeer
}

type pipeKey struct {
	ns   string
	peer crdt.ReplicaID
}

type pipePeer struct {
	req   replica.Message // the latest request sent: its Vector is what was asked from
	asked []crdt.Vector   // requests sent on the replica's behalf that it has not made yet
	// deferred is the next request, held back while asked is full; it
	// goes out when the replica stores a page.
	deferred *replica.Message
}

// forward is called with every sync request the replica sends. It
// reports whether the request should go out, and returns a deferred
// request that may go out now.
func (p *pipeline) forward(m replica.Message) (send bool, also *replica.Message) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.peers == nil {
		p.peers = map[pipeKey]*pipePeer{}
	}
	k := pipeKey{m.NS, m.To}
	pp := p.peers[k]
	if pp == nil {
		pp = &pipePeer{}
		p.peers[k] = pp
	}
	for i, v := range pp.asked {
		if sameVector(v, m.Vector) {
			// Asked already: the replica has stored one more page, so
			// one more may be asked ahead.
			pp.asked = append(pp.asked[:i], pp.asked[i+1:]...)
			if d := pp.deferred; d != nil {
				pp.deferred = nil
				pp.asked = append(pp.asked, d.Vector)
				pp.req = *d
				return false, d
			}
			return false, nil
		}
	}
	// A request of its own (a gap, a retry, a catch-up starting): what
	// was asked ahead before it no longer predicts what it will ask.
	pp.req, pp.asked, pp.deferred = m, pp.asked[:0], nil
	pp.req.Vector = m.Vector.Clone()
	return true, nil
}

// next is called with every batch addressed to this region. It returns
// the request to send now when the batch is a catch-up page answering
// the latest request and more pages follow.
func (p *pipeline) next(m replica.Message) (*replica.Message, bool) {
	if m.Type != replica.MsgBatch || !m.Sync || !m.More || len(m.Head) == 0 {
		return nil, false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	pp := p.peers[pipeKey{m.NS, m.From}]
	if pp == nil || pp.deferred != nil {
		return nil, false
	}
	for r, h := range m.Head {
		if m.Base[r] != pp.req.Vector[r] || h < m.Base[r] {
			return nil, false // answers an older request
		}
	}
	req := pp.req
	req.Vector = pp.req.Vector.Clone()
	req.Vector.Merge(m.Head)
	if sameVector(req.Vector, pp.req.Vector) {
		return nil, false
	}
	if len(pp.asked) >= pipelineDepth {
		pp.deferred = &req
		return nil, false
	}
	pp.req = req
	pp.asked = append(pp.asked, req.Vector)
	return &req, true
}

func sameVector(a, b crdt.Vector) bool { return a.CoversAll(b) && b.CoversAll(a) }
