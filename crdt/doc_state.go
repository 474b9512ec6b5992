package crdt

// Doc is the merged state of one document: its fields by name, and under
// the name "" the document record, whose Last is the newest delete.
//
// A delete is a document-level write ordered by Stamp: the document is
// deleted while its newest delete is newer than every field change, and
// only values written after that delete are shown again when a later write
// revives it. Counters keep their count across a delete: a count is a sum
// of every replica's increments, and a delete that zeroed it would need to
// know increments it has not seen.
type Doc struct {
	Fields map[string]*Field
}

// Apply merges a change into the document and reports whether it changed.
func (d *Doc) Apply(c *Change) bool {
	if d.Fields == nil {
		d.Fields = map[string]*Field{}
	}
	f := d.Fields[c.Field]
	if f == nil {
		f = &Field{}
		d.Fields[c.Field] = f
	}
	return f.Apply(c)
}

// DeletedAt returns the stamp of the newest delete (zero if none).
func (d *Doc) DeletedAt() Stamp {
	if f := d.Fields[""]; f != nil {
		return f.Last
	}
	return Stamp{}
}

// Deleted reports whether the newest delete is newer than every write.
func (d *Doc) Deleted() bool { return IsDeleted(d.Fields) }

// IsDeleted is Deleted over any map of field states, for stores that load
// a document's fields themselves.
func IsDeleted(fields map[string]*Field) bool {
	rec := fields[""]
	if rec == nil {
		return false
	}
	for name, f := range fields {
		if name != "" && rec.Last.Less(f.Last) {
			return false
		}
	}
	return true
}

// Clone returns a deep copy.
func (d *Doc) Clone() *Doc {
	c := &Doc{Fields: make(map[string]*Field, len(d.Fields))}
	for k, f := range d.Fields {
		c.Fields[k] = f.Clone()
	}
	return c
}
