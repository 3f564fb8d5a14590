package cachelayer

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

func TestEntryKinds(t *testing.T) {
	t.Parallel()
	codec := JSON{}
	v := sampleRow(7)
	b, err := encodeValue(codec, v)
	if err != nil {
		t.Fatal(err)
	}
	var got row
	if kind, err := decodeEntry(codec, string(b), &got); kind != entryValue || err != nil || !reflect.DeepEqual(got, v) {
		t.Fatalf("value: kind %v err %v got %+v", kind, err, got)
	}
	if kind, _ := decodeEntry(codec, notFoundEntry, &got); kind != entryNotFound {
		t.Fatalf("marker decoded as %v", kind)
	}
	for range 100 {
		tok := newLeaseToken()
		if kind, _ := decodeEntry(codec, tok, &got); kind != entryLease {
			t.Fatalf("lease %q decoded as %v", tok, kind)
		}
	}
	if a, b := newLeaseToken(), newLeaseToken(); a == b {
		t.Fatal("two leases compare equal")
	}
	// A Cache's own tokens: unique, recognised as its own, and leases
	// whether or not a waiter has marked them.
	mine, theirs := newLeaseTokens(), newLeaseTokens()
	seen := map[string]bool{}
	for range 1000 {
		tok := mine.next()
		marked := "\x00W" + tok[2:]
		if seen[tok] || !mine.owns(tok) || !mine.owns(marked) || theirs.owns(tok) || isMarked(tok) || !isMarked(marked) {
			t.Fatalf("token %q: repeated, or ownership/mark wrong", tok)
		}
		seen[tok] = true
		for _, l := range []string{tok, marked} {
			if kind, _ := decodeEntry(codec, l, &got); kind != entryLease {
				t.Fatalf("lease %q decoded as %v", l, kind)
			}
		}
	}
	corrupt := []string{
		"", "x", "\x11{", "\x11", string(notFoundEntry) + "x", "\x00L", "\x00Lshort", "\x00Wshort", "\x00X" + strings.Repeat("a", 16),
		"\x21" + string(b[1:]), // another format version
		"42",                   // a counter
		"\x13{}",               // unknown kind
	}
	for _, s := range corrupt {
		if kind, err := decodeEntry(codec, s, &got); kind != entryCorrupt || err == nil {
			t.Errorf("%q: kind %v err %v, want corrupt", s, kind, err)
		}
	}
}

// FuzzDecode feeds arbitrary bytes to the entry decoder: it must never
// panic, never take a lease or a marker for a value, and whatever it decodes
// as a value must survive a round trip.
func FuzzDecode(f *testing.F) {
	codec := JSON{}
	good, _ := encodeValue(codec, sampleRow(1))
	for _, s := range []string{"", "\x00", "\x00L0123456789abcdef", notFoundEntry, string(good), "\x11null", "\x11[]", "\x11{\"amount\":1e999}", "42"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s := string(data)
		var v row
		kind, err := decodeEntry(codec, s, &v)
		switch kind {
		case entryLease:
			if len(s) != leaseLen || s[0] != leaseMagic || err != nil {
				t.Fatalf("lease %q: err %v", s, err)
			}
		case entryNotFound:
			if s != notFoundEntry || err != nil {
				t.Fatalf("marker %q: err %v", s, err)
			}
		case entryValue:
			if err != nil || len(s) == 0 || s[0] != headerValue {
				t.Fatalf("value %q: err %v", s, err)
			}
			again, err := encodeValue(codec, v)
			if err != nil {
				t.Fatalf("re-encode %+v: %v", v, err)
			}
			var w row
			if k, err := decodeEntry(codec, string(again), &w); k != entryValue || err != nil || !reflect.DeepEqual(v, w) {
				t.Fatalf("round trip of %q: %v %v %+v != %+v", s, k, err, w, v)
			}
		case entryCorrupt:
			if err == nil {
				t.Fatalf("corrupt %q without error", s)
			}
			if len(s) > 0 && s[0] == headerValue && bytes.Equal(data, good) {
				t.Fatal("a good value reported corrupt")
			}
		default:
			t.Fatalf("kind %v", kind)
		}
		if strings.HasPrefix(s, "\x00") && kind == entryValue {
			t.Fatal("a lease-like entry decoded as a value")
		}
	})
}
