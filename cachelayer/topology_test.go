package cachelayer

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestParseClusterNodes(t *testing.T) {
	t.Parallel()
	// A failover in progress: m1 failed and its replica r1 took slots
	// 0-5460; r2 is only suspected to fail (still counts); r3 failed.
	text := `r1 127.0.0.1:7004@17004 master - 0 0 7 connected 0-5460
m1 127.0.0.1:7001@17001 master,fail - 0 0 1 disconnected
m2 127.0.0.1:7002@17002 myself,master - 0 0 2 connected 5461-10922 [5461->-r1]
r2 127.0.0.1:7005@17005,host.example slave,fail? m2 0 0 2 connected
m3 127.0.0.1:7003@17003 master - 0 0 3 connected 10923 10924-16383
r3 127.0.0.1:7006@17006 slave,fail m3 0 0 3 disconnected
r4 127.0.0.1:7007@17007 slave r1 0 0 7 connected
`
	owners, replicas, aliases := parseClusterNodes(text)
	assert.Equal(t, []slotOwner{
		{0, 5460, "127.0.0.1:7004"}, {5461, 10922, "127.0.0.1:7002"},
		{10923, 10923, "127.0.0.1:7003"}, {10924, 16383, "127.0.0.1:7003"},
	}, owners)
	assert.Equal(t, map[string]int{"127.0.0.1:7004": 1, "127.0.0.1:7002": 1, "127.0.0.1:7003": 0}, replicas)
	assert.Equal(t, map[string]string{"127.0.0.1:7005": "host.example:7005"}, aliases)
}

func TestSameOwners(t *testing.T) {
	t.Parallel()
	a := []slotOwner{{0, 5460, "x"}, {5461, 16383, "y"}}
	assert.True(t, sameOwners(a, []slotOwner{{0, 100, "x"}, {101, 5460, "x"}, {5461, 16383, "y"}}), "split ranges, same owners")
	assert.False(t, sameOwners(a, []slotOwner{{0, 5460, "z"}, {5461, 16383, "y"}}), "a new master")
	assert.False(t, sameOwners(a, []slotOwner{{0, 5461, "x"}, {5462, 16383, "y"}}), "one slot moved")
	assert.False(t, sameOwners(a, []slotOwner{{5461, 16383, "y"}}), "slots without a master")
}

// keySlot agrees with Redis: CLUSTER KEYSLOT of known keys (Redis's own
// test vectors) and hash tags.
func TestKeySlot(t *testing.T) {
	t.Parallel()
	for key, want := range map[string]int{
		"123456789":            12739, // CRC16-XMODEM check value 0x31C3
		"foo":                  12182,
		"{user1000}.following": 3443, "{user1000}.followers": 3443, "user1000": 3443,
		"foo{}{bar}":    keySlot("foo{}{bar}"), // empty first tag: the whole key
		"foo{{bar}}zap": keySlot("{bar"),
		"":              0,
	} {
		assert.Equal(t, want, keySlot(key), "slot of %q", key)
	}
	assert.NotEqual(t, keySlot("foo{}{bar}"), keySlot("bar"), "an empty tag is no tag")
}
