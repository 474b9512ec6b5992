package crdt

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// Limits bound what one change may carry, so a hostile peer cannot make a
// replica allocate without bound.
type Limits struct {
	MaxValueBytes int // canonical JSON value size
	MaxDepth      int // JSON nesting depth
	MaxContext    int // dots in a change's context
}

// DefaultLimits are the limits a replica uses unless configured otherwise.
var DefaultLimits = Limits{MaxValueBytes: 64 << 10, MaxDepth: 64, MaxContext: 4096}

// ValidateName checks a namespace or collection name: [A-Za-z0-9_-]{1,64}.
// They appear in NATS subjects, so nothing else is allowed.
func ValidateName(s string) error {
	if len(s) == 0 || len(s) > 64 {
		return fmt.Errorf("%w: %q must be 1 to 64 characters", ErrBadName, clip(s))
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '_' && c != '-' {
			return fmt.Errorf("%w: %q may hold only A-Z a-z 0-9 _ -", ErrBadName, clip(s))
		}
	}
	return nil
}

// ValidateDocID checks a document id: [A-Za-z0-9_.:-]{1,128}.
func ValidateDocID(s string) error {
	if len(s) == 0 || len(s) > 128 {
		return fmt.Errorf("%w: document id %q must be 1 to 128 characters", ErrBadName, clip(s))
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '_' && c != '-' && c != '.' && c != ':' {
			return fmt.Errorf("%w: document id %q may hold only A-Z a-z 0-9 _ . : -", ErrBadName, clip(s))
		}
	}
	return nil
}

// ValidateField checks a field name: [A-Za-z0-9_.:-]{1,64}.
func ValidateField(s string) error {
	if len(s) == 0 || len(s) > 64 {
		return fmt.Errorf("%w: field %q must be 1 to 64 characters", ErrBadName, clip(s))
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && c != '_' && c != '-' && c != '.' && c != ':' {
			return fmt.Errorf("%w: field %q may hold only A-Z a-z 0-9 _ . : -", ErrBadName, clip(s))
		}
	}
	return nil
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// Canonical validates a JSON value against the limits and returns its
// canonical form: no insignificant space, object keys sorted, numbers as
// written, <, > and & escaped as encoding/json.Marshal escapes them. Set
// elements are compared by this form, so every replica must produce the
// same bytes for the same value; and since a change travels inside messages
// that json.Marshal encodes, the form must be one Marshal leaves unchanged,
// or the receiver would see a non-canonical value and refuse it.
func Canonical(v []byte, lim Limits) (json.RawMessage, error) {
	if isCanonicalScalar(v) {
		// Most values are short strings and numbers; they are their own
		// canonical form, and the decode and re-encode below would cost
		// microseconds and kilobytes per change on every replica.
		if len(v) > lim.MaxValueBytes {
			return nil, fmt.Errorf("%w: %d bytes (limit %d)", ErrValueTooBig, len(v), lim.MaxValueBytes)
		}
		return json.RawMessage(bytes.Clone(v)), nil
	}
	if err := CheckDepth(v, lim.MaxDepth); err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(v))
	dec.UseNumber()
	var x any
	if err := dec.Decode(&x); err != nil {
		return nil, fmt.Errorf("%w: value is not JSON: %v", ErrInvalid, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data after the JSON value", ErrInvalid)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	if err := enc.Encode(x); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	out := bytes.TrimRight(buf.Bytes(), "\n")
	if len(out) > lim.MaxValueBytes {
		return nil, fmt.Errorf("%w: %d bytes (limit %d)", ErrValueTooBig, len(out), lim.MaxValueBytes)
	}
	// A copy of the exact size: values live as long as the field states
	// that hold them, and the encoder's buffer is larger.
	return json.RawMessage(bytes.Clone(out)), nil
}

// isCanonicalScalar reports whether v, exactly as given, is true, false,
// null, a JSON number, or a string of printable ASCII that the encoder
// writes unchanged (no quote, backslash, <, > or &): values that decode
// and re-encode to themselves.
func isCanonicalScalar(v []byte) bool {
	if len(v) == 0 {
		return false
	}
	switch v[0] {
	case '"':
		if len(v) < 2 || v[len(v)-1] != '"' {
			return false
		}
		for _, c := range v[1 : len(v)-1] {
			if c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
				return false
			}
		}
		return true
	case 't':
		return string(v) == "true"
	case 'f':
		return string(v) == "false"
	case 'n':
		return string(v) == "null"
	}
	return isNumber(v)
}

// isNumber reports whether v is exactly a JSON number (RFC 8259 grammar).
func isNumber(v []byte) bool {
	i := 0
	digits := func() bool {
		start := i
		for i < len(v) && v[i] >= '0' && v[i] <= '9' {
			i++
		}
		return i > start
	}
	if i < len(v) && v[i] == '-' {
		i++
	}
	switch {
	case i < len(v) && v[i] == '0':
		i++
	case i < len(v) && v[i] >= '1' && v[i] <= '9':
		digits()
	default:
		return false
	}
	if i < len(v) && v[i] == '.' {
		i++
		if !digits() {
			return false
		}
	}
	if i < len(v) && (v[i] == 'e' || v[i] == 'E') {
		i++
		if i < len(v) && (v[i] == '+' || v[i] == '-') {
			i++
		}
		if !digits() {
			return false
		}
	}
	return i == len(v)
}

// CheckValue accepts a value from a peer only if it is already canonical,
// so that every replica keys set elements identically.
func CheckValue(v []byte, lim Limits) error {
	if len(v) > lim.MaxValueBytes {
		return fmt.Errorf("%w: %d bytes (limit %d)", ErrValueTooBig, len(v), lim.MaxValueBytes)
	}
	if isCanonicalScalar(v) {
		return nil
	}
	c, err := Canonical(v, lim)
	if err != nil {
		return err
	}
	if !bytes.Equal(c, v) {
		return fmt.Errorf("%w: value is not in canonical form", ErrInvalid)
	}
	return nil
}

// CheckDepth refuses JSON nested deeper than max before any decoder
// recurses into it.
func CheckDepth(v []byte, max int) error {
	depth, inStr, esc := 0, false, false
	for _, c := range v {
		switch {
		case inStr:
			switch {
			case esc:
				esc = false
			case c == '\\':
				esc = true
			case c == '"':
				inStr = false
			}
		case c == '"':
			inStr = true
		case c == '[' || c == '{':
			depth++
			if depth > max {
				return fmt.Errorf("%w: deeper than %d", ErrTooDeep, max)
			}
		case c == ']' || c == '}':
			depth--
		}
	}
	return nil
}
