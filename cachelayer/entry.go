package cachelayer

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
)

// Codec turns values into bytes and back. Implementations must be safe for
// concurrent use, and Unmarshal must return an error, not panic, on bytes
// Marshal never produced.
type Codec interface {
	Marshal(v any) ([]byte, error)
	Unmarshal(data []byte, v any) error
}

// JSON is the default [Codec]: encoding/json, readable in redis-cli. It
// does not escape HTML (&, <, >), so a json.RawMessage comes back byte for
// byte as it went in.
type JSON struct{}

// Marshal implements [Codec].
func (JSON) Marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte{'\n'}), nil
}

// Unmarshal implements [Codec].
func (JSON) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }

// Entry format. Every string this package stores under a cache key starts
// with one header byte: the high nibble is the format version, the low
// nibble the kind. A lease placeholder starts with a zero byte, which is no
// header of any version, so it can never be mistaken for a value. An entry of
// another version (after a deploy that changes the format) is undecodable:
// Fetch replaces it, Get reports it.
const (
	formatVersion = 1

	kindValue    = 1 // header + codec bytes
	kindNotFound = 2 // header only: the loader said ErrNotFound

	headerValue    = formatVersion<<4 | kindValue
	headerNotFound = formatVersion<<4 | kindNotFound

	leaseMagic = 0x00 // first byte of a lease placeholder: 0x00 'L' + token
	leaseLen   = 2 + 16
)

// entryKind is what a stored string turned out to be.
type entryKind int

const (
	entryValue    entryKind = iota // payload holds codec bytes
	entryNotFound                  // a not-found marker
	entryLease                     // a lease placeholder of some process
	entryCorrupt                   // anything else: garbage, other format version
)

var errCorrupt = errors.New("cachelayer: undecodable entry")

// classify tells what a stored string is and returns the codec payload of a
// value (without copying).
func classify(s string) (entryKind, string) {
	if len(s) == 0 {
		return entryCorrupt, ""
	}
	switch s[0] {
	case headerValue:
		return entryValue, s[1:]
	case headerNotFound:
		if len(s) == 1 {
			return entryNotFound, ""
		}
	case leaseMagic:
		if len(s) == leaseLen && s[1] == 'L' {
			return entryLease, ""
		}
	}
	return entryCorrupt, ""
}

// decodeEntry classifies s and, for a value, decodes its payload into dst.
// It returns entryCorrupt with an error when s is no entry of this format or
// the codec rejects the payload.
func decodeEntry(codec Codec, s string, dst any) (entryKind, error) {
	kind, payload := classify(s)
	switch kind {
	case entryValue:
		if err := codec.Unmarshal([]byte(payload), dst); err != nil {
			return entryCorrupt, fmt.Errorf("%w: %w", errCorrupt, err)
		}
		return entryValue, nil
	case entryCorrupt:
		return entryCorrupt, errCorrupt
	}
	return kind, nil
}

// encodeValue returns header + codec bytes of v.
func encodeValue(codec Codec, v any) ([]byte, error) {
	b, err := codec.Marshal(v)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 1+len(b))
	out[0] = headerValue
	copy(out[1:], b)
	return out, nil
}

// notFoundEntry is the stored not-found marker.
var notFoundEntry = string([]byte{headerNotFound})

// newLeaseToken returns a fresh lease placeholder: 0x00 'L' + 16 random
// bytes, so two leases never compare equal.
func newLeaseToken() string {
	var b [leaseLen]byte
	b[0], b[1] = leaseMagic, 'L'
	_, _ = rand.Read(b[2:]) // never fails (crypto/rand panics instead)
	return string(b[:])
}
