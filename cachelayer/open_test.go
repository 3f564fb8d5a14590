package cachelayer

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for a logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestOpenMalformedURLsNeverShowPassword feeds Open the malformed shapes of
// issue 8 (and more): neither its error nor what it logs (the warning about
// a Redis not answering) may contain the password or a piece of it.
func TestOpenMalformedURLsNeverShowPassword(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		url     string
		invalid bool // Open must fail with ErrInvalid
	}{
		{"redis//:Secret1@127.0.0.1:1", true},
		{"redis:/:Secret1@127.0.0.1:1", true},
		{"redis://:Secret1@127.0.0.1:port/0", true},
		{"redis://:Secret1@[::1/0", true},
		{"redis://:Secret1@127.0.0.1:1/zz", true},
		{"redis://:Secret1@127.0.0.1:1/0?bogus=1", true},
		{"http://:Secret1@127.0.0.1:1/0", true},
		{"redis://:Sec@ret1@127.0.0.1:1/0", false},   // parses (the last '@' ends the userinfo); nothing answers
		{"redis://Secret1@127.0.0.1:1/0", false},     // ioredis's spelling of a password
		{"redis://:Se%20cret1@127.0.0.1:1/0", false}, // escaped
	} {
		t.Run(tc.url, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var logs syncBuffer
			c, err := Open(ctx, tc.url, &Config{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			if err == nil {
				_ = c.Close()
			}
			if tc.invalid != (err != nil) || (tc.invalid && !errors.Is(err, ErrInvalid)) {
				t.Fatalf("Open: %v, want ErrInvalid: %v", err, tc.invalid)
			}
			shown := logs.String()
			if err != nil {
				shown += err.Error()
			} else if shown == "" {
				t.Fatal("Open logged nothing about a Redis that does not answer")
			}
			for _, secret := range []string{"Secret1", "ret1", "Se cret1", "Se%20cret1"} {
				if strings.Contains(shown, secret) {
					t.Errorf("%q shows %q", shown, secret)
				}
			}
		})
	}
}
