// Package redact keeps passwords out of messages: URLs are shown with
// (*url.URL).Redacted, and error texts that may quote a connection string
// (go-redis and pgx parse errors do) have the URL and its password masked.
package redact

import (
	"errors"
	"net/url"
	"strings"
)

// URL returns rawURL with its password replaced by "xxxxx".
func URL(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "<unparseable url>"
	}
	return u.Redacted()
}

// Error returns err with every occurrence of rawURL, and of its password in
// any escaping, masked. The result wraps nothing but keeps err's identity for
// errors.Is through Unwrap.
func Error(err error, rawURL string) error {
	if err == nil {
		return nil
	}
	msg := String(err.Error(), rawURL)
	if msg == err.Error() {
		return err
	}
	return &redacted{msg: msg, err: err}
}

// String masks rawURL and its password in s.
func String(s, rawURL string) string {
	if rawURL == "" {
		return s
	}
	s = strings.ReplaceAll(s, rawURL, URL(rawURL))
	if u, err := url.Parse(rawURL); err == nil && u.User != nil {
		if pw, ok := u.User.Password(); ok && pw != "" {
			for _, form := range []string{pw, url.QueryEscape(pw), url.PathEscape(pw)} {
				s = strings.ReplaceAll(s, form, "xxxxx")
			}
		}
	} else if err != nil {
		if at := strings.LastIndex(rawURL, "@"); at >= 0 {
			// Unparseable: mask everything before the host, to be safe.
			s = strings.ReplaceAll(s, rawURL[:at], "xxxxx")
		}
	}
	return s
}

type redacted struct {
	msg string
	err error
}

func (r *redacted) Error() string { return r.msg }

// Is keeps errors.Is working for sentinels in the chain without exposing the
// unredacted text through Unwrap's Error.
func (r *redacted) Is(target error) bool { return errors.Is(r.err, target) }
