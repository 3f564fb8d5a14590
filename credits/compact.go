package credits

import (
	"encoding/binary"
	"errors"
	"time"

	"github.com/ghl-agency/ghlcache/cachelayer"
)

// AppendCompact implements cachelayer.CompactMarshaler: the cache stores a
// balance as varints (user id, type length and bytes, amount, version,
// then 0 for a zero UpdatedAt or 1 with its Unix seconds and nanoseconds),
// not as JSON: a cached read then decodes in tens of nanoseconds.
func (b Balance) AppendCompact(out []byte) []byte {
	out = binary.AppendVarint(out, b.UserID)
	out = binary.AppendUvarint(out, uint64(len(b.Type)))
	out = append(out, b.Type...)
	out = binary.AppendVarint(out, b.Amount)
	out = binary.AppendVarint(out, b.Version)
	if b.UpdatedAt.IsZero() {
		return append(out, 0)
	}
	out = append(out, 1)
	out = binary.AppendVarint(out, b.UpdatedAt.Unix())
	return binary.AppendUvarint(out, uint64(b.UpdatedAt.Nanosecond()))
}

// errCompact is a compact balance that AppendCompact did not write.
var errCompact = errors.New("credits: malformed compact balance")

// UnmarshalCompact implements cachelayer.CompactUnmarshaler. UpdatedAt
// comes back in UTC, as the store returns it.
func (b *Balance) UnmarshalCompact(data []byte) error {
	d := compactReader{data: data}
	var v Balance
	v.UserID = d.varint()
	n := d.uvarint()
	if d.bad || n > uint64(len(d.data)) {
		return errCompact
	}
	v.Type, d.data = Type(d.data[:n]), d.data[n:]
	v.Amount = d.varint()
	v.Version = d.varint()
	switch flag := d.byte(); {
	case d.bad:
	case flag == 1:
		sec, nsec := d.varint(), d.uvarint()
		if nsec >= uint64(time.Second) {
			d.bad = true
		}
		v.UpdatedAt = time.Unix(sec, int64(nsec)).UTC()
	case flag != 0:
		d.bad = true
	}
	if d.bad || len(d.data) != 0 {
		return errCompact
	}
	*b = v
	return nil
}

// compactReader reads varints off data; bad records any malformed one.
type compactReader struct {
	data []byte
	bad  bool
}

func (r *compactReader) varint() int64 {
	v, n := binary.Varint(r.data)
	if n <= 0 {
		r.bad = true
		return 0
	}
	r.data = r.data[n:]
	return v
}

func (r *compactReader) uvarint() uint64 {
	v, n := binary.Uvarint(r.data)
	if n <= 0 {
		r.bad = true
		return 0
	}
	r.data = r.data[n:]
	return v
}

func (r *compactReader) byte() byte {
	if len(r.data) == 0 {
		r.bad = true
		return 0
	}
	c := r.data[0]
	r.data = r.data[1:]
	return c
}

var (
	_ cachelayer.CompactMarshaler   = Balance{}
	_ cachelayer.CompactUnmarshaler = (*Balance)(nil)
)

// CacheVersion implements cachelayer.Versioned: a balance's Version grows
// by one with every change, in commit order, so the cache can tell an older
// cached balance from a newer one (CachedConfig.WriteThrough).
func (b Balance) CacheVersion() int64 { return b.Version }
