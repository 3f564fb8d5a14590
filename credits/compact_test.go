package credits_test

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/cachelayer"
	"github.com/ghl-agency/ghlcache/credits"
)

func TestBalanceCompactRoundTrips(t *testing.T) {
	t.Parallel()
	codec := cachelayer.JSON{}
	for _, b := range []credits.Balance{
		{UserID: 42, Type: "enrichment", Amount: 1000, Version: 7, UpdatedAt: time.Date(2026, 12, 1, 23, 4, 5, 123456000, time.UTC)},
		{UserID: 1, Type: "sms"}, // version 0: no change yet, zero UpdatedAt
		{UserID: math.MaxInt64, Type: "a_b-c", Amount: math.MaxInt64, Version: math.MaxInt64,
			UpdatedAt: time.Unix(1<<40, 999999999).UTC()},
		{UserID: 3, Type: "email", Amount: 5, Version: 1, UpdatedAt: time.Unix(-1, 1).UTC()},
	} {
		raw, err := codec.Marshal(b)
		require.NoError(t, err)
		require.NotEqual(t, byte('{'), raw[0], "stored compact, not as JSON")
		var got credits.Balance
		require.NoError(t, codec.Unmarshal(raw, &got))
		require.Equal(t, b, got) // reflect.DeepEqual: times come back exactly, in UTC
	}
}

func TestBalanceReadsJSONEntriesWrittenBeforeCompact(t *testing.T) {
	t.Parallel()
	b := credits.Balance{UserID: 9, Type: "enrichment", Amount: 3, Version: 2, UpdatedAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	raw, err := json.Marshal(b)
	require.NoError(t, err)
	var got credits.Balance
	require.NoError(t, cachelayer.JSON{}.Unmarshal(raw, &got))
	require.Equal(t, b, got)
}

func TestBalanceCompactRejectsMalformedBytes(t *testing.T) {
	t.Parallel()
	codec := cachelayer.JSON{}
	raw, err := codec.Marshal(credits.Balance{UserID: 42, Type: "enrichment", Amount: 1000, Version: 7, UpdatedAt: time.Now().UTC()})
	require.NoError(t, err)
	// Every truncation, a trailing byte, a bad time flag, an oversized type
	// length: an error each time, never a panic or a partial value.
	var bad [][]byte
	for n := 1; n < len(raw); n++ {
		bad = append(bad, raw[:n])
	}
	bad = append(bad, append(append([]byte{}, raw...), 0))
	zero, err := codec.Marshal(credits.Balance{UserID: 1, Type: "sms"})
	require.NoError(t, err)
	flag := append([]byte{}, zero...)
	flag[len(flag)-1] = 7
	bad = append(bad, flag, []byte{0x01, 0x02, 0x7f, 'a'})
	for _, b := range bad {
		got := credits.Balance{UserID: -5}
		require.Error(t, codec.Unmarshal(b, &got), "%x", b)
		require.Equal(t, credits.Balance{UserID: -5}, got, "a failed decode leaves the value alone")
	}
	// A compact entry read into a type that cannot decode it is an error.
	var m map[string]any
	require.Error(t, codec.Unmarshal(raw, &m))
}

func TestKeyIsOneAllocation(t *testing.T) {
	require.Equal(t, "credits:42:enrichment", credits.Key(42, "enrichment"))
	require.Equal(t, "credits:-1:a", credits.Key(-1, "a"))
	long := credits.Type(strings.Repeat("t", 100)) // longer than the stack buffer: still right
	require.Equal(t, "credits:9223372036854775807:"+string(long), credits.Key(math.MaxInt64, long))
	require.Equal(t, 1.0, testing.AllocsPerRun(100, func() { _ = credits.Key(123456789, "enrichment") }))
}
