package crdt

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// DecodeChange parses one change strictly: unknown fields, a bad name, an
// unknown kind or op, a missing field or an oversized or over-deep value is
// an error wrapping ErrInvalid, never a panic and never a partial change.
func DecodeChange(data []byte, lim Limits) (Change, error) {
	var c Change
	if err := decodeStrict(data, lim, &c); err != nil {
		return Change{}, err
	}
	if err := c.Validate(lim); err != nil {
		return Change{}, err
	}
	return c, nil
}

// DecodeChanges parses a JSON array of changes with the same strictness;
// one bad change refuses the whole batch.
func DecodeChanges(data []byte, lim Limits) ([]Change, error) {
	var cs []Change
	if err := decodeStrict(data, lim, &cs); err != nil {
		return nil, err
	}
	for i := range cs {
		if err := cs[i].Validate(lim); err != nil {
			return nil, fmt.Errorf("change %d: %w", i, err)
		}
	}
	return cs, nil
}

// EncodeChanges is DecodeChanges' inverse.
func EncodeChanges(cs []Change) ([]byte, error) { return json.Marshal(cs) }

func decodeStrict(data []byte, lim Limits, v any) error {
	// Values sit three levels down in a batch; bound the whole document
	// before the decoder recurses into it.
	if err := CheckDepth(data, lim.MaxDepth+3); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		// Kind, op and hlc parsers already return a specific sentinel
		// (ErrUnknownOp, hlc.ErrBadTimestamp): keep it for errors.Is.
		if errors.Is(err, ErrInvalid) {
			return err
		}
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: trailing data", ErrInvalid)
	}
	return nil
}
