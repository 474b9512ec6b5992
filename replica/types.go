package replica

import (
	"fmt"

	"github.com/syncd/syncd/crdt"
	"github.com/syncd/syncd/hlc"
)

// Storage is the replica's read-only view of its durable state, in the
// style of etcd-io/raft's Storage: a region with millions of documents
// reads the few fields a step touches instead of holding them all. It is
// scoped to one namespace. Writing is the caller's job (Ready).
type Storage interface {
	// Field returns a field's persisted state, or nil if it has none. The
	// replica never modifies what it is given.
	Field(k crdt.FieldKey) (*crdt.Field, error)
	// Doc returns every persisted field of a document (nil if none).
	Doc(k crdt.DocKey) (map[string]*crdt.Field, error)
	// HasDot reports whether a change with this dot was persisted.
	HasDot(d crdt.Dot) (bool, error)
	// Log returns up to limit persisted changes stamped by region with
	// region sequence numbers from `from` on, in order, in a slice the
	// caller may keep and change.
	Log(region crdt.ReplicaID, from uint64, limit int) ([]crdt.Change, error)
}

// FieldBatcher is an optional Storage capability: read many fields at
// once. A batch from a peer touches many fields, and a store that answers
// them in a few queries instead of one each applies it several times
// faster. Keys with no state are absent from the result.
type FieldBatcher interface {
	Fields(keys []crdt.FieldKey) (map[crdt.FieldKey]*crdt.Field, error)
}

// State is what a replica must find again after a restart, besides its
// fields and log: saved in the same transaction as the rest of a Ready.
type State struct {
	// Vector: per region, the region sequence up to which every change is
	// held.
	Vector crdt.Vector `json:"vector"`
	// Seq is the last sequence number this replica gave a change (its own
	// dots; for a region also its region stamps). Never reused.
	Seq uint64 `json:"seq"`
	// HLC is the clock's high-water mark, so a restart never issues a
	// stamp at or below one already issued or seen.
	HLC hlc.Timestamp `json:"hlc"`
}

// Role says whether a replica is a region (stamps device changes, answers
// sync requests, publishes to other regions) or a device (pushes its
// changes to one region at a time and follows it).
type Role uint8

const (
	RoleRegion Role = iota
	RoleDevice
)

// MsgType is the kind of a replication message.
type MsgType uint8

const (
	// MsgBatch carries changes. For every region r in Head, the batch
	// continues a receiver holding Base[r] and brings it to Head[r]:
	// changes the sender filtered out (a device's unsubscribed
	// collections) are skipped by the range and need not be listed.
	MsgBatch MsgType = iota + 1
	// MsgHeartbeat carries the sender's vector; a receiver that lacks
	// something asks for it.
	MsgHeartbeat
	// MsgSyncReq asks for what the sender lacks: Vector is what it holds,
	// Colls (if any) the collections it follows, Limit the page size.
	MsgSyncReq
	// MsgPush carries a device's own changes to a region.
	MsgPush
	// MsgPushAck names the pushed dots a region has made durable.
	MsgPushAck
	// MsgAck is a region's vector sent back after it applied a live batch,
	// so the sender learns promptly what its peers hold (write concern).
	MsgAck
	// MsgError refuses a message, with a code a program can act on.
	MsgError
)

var msgNames = [...]string{"", "batch", "heartbeat", "sync_req", "push", "push_ack", "ack", "error"}

func (t MsgType) String() string {
	if int(t) < len(msgNames) {
		return msgNames[t]
	}
	return "msg?"
}

// Message is one replication message between two replicas of a namespace.
// Transports (NATS between regions, the websocket to devices) carry it.
type Message struct {
	Type MsgType        `json:"type"`
	NS   string         `json:"ns"`
	From crdt.ReplicaID `json:"from"`
	// Node is the sender's human name (regions, on heartbeats), so peers
	// can show "london" rather than a UUID.
	Node string `json:"node,omitempty"`
	// To is the receiving replica; the nil UUID means every region (a
	// publish).
	To      crdt.ReplicaID `json:"to"`
	Vector  crdt.Vector    `json:"vector,omitempty"`
	Base    crdt.Vector    `json:"base,omitempty"`
	Head    crdt.Vector    `json:"head,omitempty"`
	Changes []crdt.Change  `json:"changes,omitempty"`
	Dots    []crdt.Dot     `json:"dots,omitempty"`
	Colls   []string       `json:"colls,omitempty"`
	Limit   int            `json:"limit,omitempty"`
	// Sync marks a batch that answers a sync request; More says the
	// sender has further pages.
	Sync bool `json:"sync,omitempty"`
	More bool `json:"more,omitempty"`
	// Req is a device's number for a sync request, echoed on the page
	// that answers it: after a reconnect the region may still deliver an
	// answer to a request of the connection before, and only the number
	// tells it apart. Device links only; the region-to-region wire form
	// (natsbus) does not carry it.
	Req uint64 `json:"req,omitempty"`
	// Code and Text explain a MsgError; HLC carries the sender's clock on
	// a clock_skew refusal so a device can correct its own.
	Code string        `json:"code,omitempty"`
	Text string        `json:"text,omitempty"`
	HLC  hlc.Timestamp `json:"hlc,omitempty"`
}

// Error codes carried by MsgError.
const (
	CodeInvalid   = "invalid"    // malformed change or message; nothing applied
	CodeForged    = "forged"     // a change under another replica's id; nothing applied
	CodeClockSkew = "clock_skew" // stamps too far ahead of the receiver's clock; nothing applied
	CodeNamespace = "namespace"  // message for another namespace
)

// FieldUpdate is a field's new state to persist.
type FieldUpdate struct {
	Key   crdt.FieldKey
	State *crdt.Field
}

// Ready is everything one step of the replica produced: first persist
// State, Log, Fields and the outbox in one transaction, then send
// Messages and Fanout, then call Advance. Nothing in Messages may leave
// before the rest is durable: a peer or device must never hold (or be told
// of) a change its sender could lose in a crash.
type Ready struct {
	NS string
	// State is non-nil when the vector, sequence or clock moved.
	State *State
	// Log holds the changes newly held: each records its dot, and, when
	// stamped, is appended to the log under (Region, RSeq). On a region a
	// change seen before appears again under each new stamp it comes
	// with (its logs serve catch-ups and must have no holes); a device
	// serves no log, so its Log holds only changes new to it.
	Log []crdt.Change
	// Fields are the field states that changed, each once, in the order
	// they were first changed since the last Ready.
	Fields []FieldUpdate
	// Outbox (devices) are own changes to keep until a region
	// acknowledges them; OutboxDone are those now acknowledged.
	Outbox     []crdt.Change
	OutboxDone []crdt.Dot
	// Messages go out after the transaction commits.
	Messages []Message
	// Fanout (regions) is every newly held stamped change as one batch,
	// for the devices following this region.
	Fanout *Message
	// Writes counts local writes this Ready makes durable.
	Writes int
}

// IsEmpty reports whether there is nothing to do.
func (rd *Ready) IsEmpty() bool {
	return rd.State == nil && len(rd.Log) == 0 && len(rd.Fields) == 0 && len(rd.Outbox) == 0 &&
		len(rd.OutboxDone) == 0 && len(rd.Messages) == 0 && rd.Fanout == nil
}

// MarshalText writes the type's wire name ("batch", "push", ...), so the
// websocket protocol reads as words in any language.
func (t MsgType) MarshalText() ([]byte, error) {
	if t == 0 || int(t) >= len(msgNames) {
		return nil, fmt.Errorf("replica: no wire name for message type %d", t)
	}
	return []byte(msgNames[t]), nil
}

// UnmarshalText reads a wire name.
func (t *MsgType) UnmarshalText(b []byte) error {
	for i, n := range msgNames {
		if i > 0 && n == string(b) {
			*t = MsgType(i)
			return nil
		}
	}
	return fmt.Errorf("%w: unknown message type %q", crdt.ErrInvalid, b)
}
