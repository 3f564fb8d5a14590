package main

import "github.com/ghl-agency/ghlcache/internal/redact"

// redactURL returns rawURL with any password masked; it also works on URLs
// that do not parse and on key/value connection strings.
func redactURL(rawURL string) string { return redact.URL(rawURL) }

// scrub removes rawURL and its passwords from msg, a message produced by a
// library that was given rawURL (pgx and go-redis parse errors quote it
// whole). Use it on every error text that may mention a URL.
func scrub(msg, rawURL string) string { return redact.String(msg, rawURL) }

// wrapURL wraps err, an error from a library given rawURL, with context
// (format, args), scrubbing rawURL and its password from the text.
func wrapURL(rawURL string, err error, format string, args ...any) error {
	return redact.Wrap(rawURL, err, format, args...)
}
