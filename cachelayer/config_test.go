package cachelayer

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	c := withDefaults(nil)
	want := Config{Prefix: "ghl:", OpTimeout: 100 * time.Millisecond, InvalidateTimeout: time.Second,
		LoadTimeout: 5 * time.Second, LeaseTTL: 3 * time.Second, LeaseWait: time.Second,
		NegativeTTL: 30 * time.Second, Jitter: 0.1, BreakerFailures: 5, BreakerCooldown: time.Second,
		MaxValueBytes: 256 << 10, InvalidateWaitTimeout: 100 * time.Millisecond, TopologyInterval: time.Second,
		ReadsInFlight: max(2, runtime.GOMAXPROCS(0)),
		Near:          NearConfig{MaxEntries: 10_000, MaxBytes: 64 << 20, MaxStaleness: 30 * time.Second, MaxLag: 5 * time.Millisecond, Keepalive: time.Second}}
	c.Codec, c.Logger = nil, nil
	if c != want {
		t.Fatalf("defaults %+v, want %+v", c, want)
	}
	if got := withDefaults(&Config{Jitter: -1}).Jitter; got != 0 {
		t.Fatalf("negative jitter gave %v, want 0 (disabled)", got)
	}
	for _, bad := range []Config{{OpTimeout: -1}, {InvalidateTimeout: -1}, {LoadTimeout: -1}, {LeaseTTL: -1},
		{LeaseWait: -1}, {NegativeTTL: -1}, {BreakerCooldown: -1}, {BreakerFailures: -1}, {MaxValueBytes: -1}, {Jitter: 1},
		{InvalidateWaitTimeout: -1}, {TopologyInterval: -1}, {Near: NearConfig{MaxEntries: -1}},
		{Near: NearConfig{MaxBytes: -1}}, {Near: NearConfig{MaxStaleness: -1}}, {Near: NearConfig{Keepalive: -1}}, {Near: NearConfig{MaxLag: -1}}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("New(%+v) did not panic", bad)
				}
			}()
			New(nil, &bad)
		}()
	}
	defer func() {
		if recover() == nil {
			t.Error("Open with a negative duration did not panic")
		}
	}()
	_, _ = Open(context.Background(), "", &Config{LeaseWait: -time.Second})
}

func TestJitterOnlyShortens(t *testing.T) {
	t.Parallel()
	c := New(nil, &Config{Jitter: 0.2})
	ttl := 10 * time.Second
	lo, hi := int64(8000), int64(10000)
	seenLow := false
	for range 10000 {
		ms := c.jittered(ttl)
		if ms < lo || ms > hi {
			t.Fatalf("jittered %d ms outside [%d, %d]", ms, lo, hi)
		}
		seenLow = seenLow || ms < 9000
	}
	if !seenLow {
		t.Fatal("jitter never shortened much")
	}
	if got := New(nil, &Config{Jitter: -1}).jittered(ttl); got != 10000 {
		t.Fatalf("disabled jitter gave %d", got)
	}
}

func TestEscapeGlob(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"ghl:user:1":   "ghl:user:1",
		`a*b?c[d]e\f`:  `a\*b\?c\[d\]e\\f`,
		"credits:1*:x": `credits:1\*:x`,
	} {
		if got := escapeGlob(in); got != want {
			t.Errorf("escapeGlob(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestOpenNeverShowsPassword(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, u := range []string{
		"redis://user:s3cretpw@127.0.0.1:notaport/0",
		"redis://:s3cretpw@127.0.0.1:6379/notadb",
		"rediss://user:s3cretpw@[::1/0",
		"http://user:s3cretpw@host/0",
	} {
		c, err := Open(ctx, u, nil)
		if err == nil {
			c.Close()
			t.Errorf("Open(%s) succeeded", u)
			continue
		}
		if strings.Contains(err.Error(), "s3cretpw") {
			t.Errorf("error shows the password: %v", err)
		}
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("Open(%s): %v, want ErrInvalid", u, err)
		}
	}
}

func TestInvalidArguments(t *testing.T) {
	t.Parallel()
	c := New(nil, nil)
	ctx := context.Background()
	load := func(context.Context) (int, error) { t.Error("loader called"); return 0, nil }
	long := strings.Repeat("k", MaxKeyLen+1)
	check := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", what, err)
		}
	}
	_, err := Fetch(ctx, c, "", time.Minute, load)
	check("Fetch empty key", err)
	_, err = Fetch(ctx, c, long, time.Minute, load)
	check("Fetch long key", err)
	_, err = Fetch(ctx, c, "k", 0, load)
	check("Fetch ttl 0", err)
	_, err = c.Get(ctx, "", new(int))
	check("Get", err)
	check("Set ttl", c.Set(ctx, "k", 1, -time.Second))
	check("Delete", c.Delete(ctx, "ok", ""))
	_, err = c.DeletePrefix(ctx, "")
	check("DeletePrefix", err)
	_, err = c.Incr(ctx, "k", 1, 0)
	check("Incr", err)
	_, err = c.Allow(ctx, "k", 0, time.Second)
	check("Allow limit", err)
	_, err = c.Allow(ctx, "k", 1, 0)
	check("Allow window", err)
	_, err = c.Exists(ctx, long)
	check("Exists", err)
	_, err = c.TTL(ctx, "")
	check("TTL", err)
}
