package workflows

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"
)

// Definition is a stored workflow definition. Version starts at 1 and grows
// by one with every Save (optimistic concurrency). Spec is a JSON object,
// returned compact (as json.Compact makes it).
type Definition struct {
	ID        int64
	Name      string
	Version   int64
	Spec      json.RawMessage
	UpdatedAt time.Time // UTC
}

// Clone returns a copy of d that shares no memory with it (Spec is copied),
// so that the near tier can hand each reader a definition of its own.
func (d Definition) Clone() Definition {
	if d.Spec != nil {
		d.Spec = append(json.RawMessage(make([]byte, 0, len(d.Spec))), d.Spec...)
	}
	return d
}

// Repo reads and changes workflow definitions.
type Repo interface {
	// Definition returns the definition with id. It returns ErrNotFound
	// when there is none and ErrInvalid for id <= 0.
	Definition(ctx context.Context, id int64) (Definition, error)

	// Save creates d when d.ID is 0 (Version 1, a new ID) and otherwise
	// replaces definition d.ID if its stored version is d.Version (the
	// result has Version d.Version+1). It returns ErrConflict when the
	// stored version differs, ErrNotFound when d.ID does not exist, and
	// ErrInvalid for an empty or long name, a negative ID, or a Spec that is
	// not a JSON object of at most MaxSpecBytes, and ErrCommitUnknown when
	// the save may or may not have been applied.
	Save(ctx context.Context, d Definition) (Definition, error)

	// Delete removes definition id. It returns ErrNotFound when there is
	// none, ErrInvalid for id <= 0, and ErrCommitUnknown when the delete may
	// or may not have been applied.
	Delete(ctx context.Context, id int64) error
}

// Limits on a definition.
const (
	MaxNameBytes = 200
	MaxSpecBytes = 128 << 10 // compact JSON; well under the cache's MaxValueBytes
)

var (
	// ErrNotFound means no definition has the id.
	ErrNotFound = errors.New("workflows: definition not found")
	// ErrConflict means the definition changed since the caller read it
	// (its version differs from Definition.Version).
	ErrConflict = errors.New("workflows: version conflict")
	// ErrInvalid means bad input; nothing was written.
	ErrInvalid = errors.New("workflows: invalid input")
	// ErrCommitUnknown means the connection failed while a Save or Delete
	// was being committed (its reply was lost), so it may or may not have
	// been applied; [Cached] invalidates the definition as if it had been.
	// Read the definition to find out (an applied Save has the new Version).
	// A create (ID 0) whose reply was lost returns no id: if it was
	// applied, the definition exists under an id the caller never learnt.
	ErrCommitUnknown = errors.New("workflows: commit outcome unknown")
)

// keyPrefix starts every definition's cache key (the near tier's prefix).
const keyPrefix = "workflow:"

// Key returns the cache key of a definition, "workflow:{id}:definition"
// (the cache adds its namespace, "ghl:" by default).
func Key(id int64) string {
	// One allocation (the string), not two: every read builds its key.
	var buf [48]byte
	b := append(buf[:0], keyHead...)
	b = strconv.AppendInt(b, id, 10)
	return string(append(b, keyTail...))
}

// A definition's key is keyHead + id + keyTail; a create builds it in SQL,
// where the new id is known.
const keyHead, keyTail = "workflow:", ":definition"

func validateID(id int64) error {
	if id <= 0 {
		return fmt.Errorf("%w: id %d must be positive", ErrInvalid, id)
	}
	return nil
}

// normalize validates d for Save and returns its Spec compacted.
func normalize(d Definition) (json.RawMessage, error) {
	if d.ID < 0 {
		return nil, fmt.Errorf("%w: id %d must be 0 (create) or positive", ErrInvalid, d.ID)
	}
	if d.Name == "" || len(d.Name) > MaxNameBytes || !utf8.ValidString(d.Name) || bytes.IndexByte([]byte(d.Name), 0) >= 0 {
		return nil, fmt.Errorf("%w: name must be 1..%d bytes of UTF-8 without NUL", ErrInvalid, MaxNameBytes)
	}
	if d.ID > 0 && d.Version <= 0 {
		return nil, fmt.Errorf("%w: version %d of an update must be the positive version read", ErrInvalid, d.Version)
	}
	trimmed := bytes.TrimSpace(d.Spec)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, fmt.Errorf("%w: spec must be a JSON object", ErrInvalid)
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, trimmed); err != nil {
		return nil, fmt.Errorf("%w: spec is not valid JSON: %v", ErrInvalid, err)
	}
	if buf.Len() > MaxSpecBytes {
		return nil, fmt.Errorf("%w: spec is %d bytes compact, more than %d", ErrInvalid, buf.Len(), MaxSpecBytes)
	}
	return buf.Bytes(), nil
}
