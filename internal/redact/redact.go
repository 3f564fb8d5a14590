// Package redact keeps passwords out of messages. URLs are shown with their
// password masked, also when they do not parse and in key/value connection
// strings; error texts that may quote a connection string (go-redis and pgx
// parse errors do) have the URL and every spelling of its password masked.
package redact

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
)

// Mask replaces every password in a message.
const Mask = "xxxxx"

var (
	// userinfoPassword matches "scheme://user:password@" in a URL that
	// net/url cannot parse (a bad port, say), whose password it cannot find.
	userinfoPassword = regexp.MustCompile(`(://[^/?#@:]*:)([^/?#]*)@`)
	// keywordPassword matches password=... in a key/value connection string
	// or a URL query.
	keywordPassword = regexp.MustCompile(`(password=)('[^']*'|[^ &]*)`)
)

// URL returns rawURL with any password replaced by [Mask].
func URL(rawURL string) string {
	if u, err := url.Parse(rawURL); err == nil && u.Scheme != "" {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), Mask)
		}
		q := u.Query()
		if q.Has("password") {
			q.Set("password", Mask)
			u.RawQuery = q.Encode()
		}
		return u.String()
	}
	s := userinfoPassword.ReplaceAllString(rawURL, "${1}"+Mask+"@")
	return keywordPassword.ReplaceAllString(s, "${1}"+Mask)
}

// secrets returns the passwords in rawURL, in every spelling a library may
// echo back (as typed, unescaped).
func secrets(rawURL string) []string {
	var out []string
	add := func(s string) {
		if s == "" || s == Mask {
			return
		}
		out = append(out, s)
		if u, err := url.PathUnescape(s); err == nil && u != s {
			out = append(out, u)
		}
		if u, err := url.QueryUnescape(s); err == nil && u != s {
			out = append(out, u)
		}
	}
	if u, err := url.Parse(rawURL); err == nil {
		if p, has := u.User.Password(); has {
			add(p)
		}
		for _, p := range u.Query()["password"] {
			add(p)
		}
	}
	for _, m := range userinfoPassword.FindAllStringSubmatch(rawURL, -1) {
		add(m[2])
	}
	for _, m := range keywordPassword.FindAllStringSubmatch(rawURL, -1) {
		add(strings.Trim(m[2], "'"))
	}
	return out
}

// String removes rawURL and its passwords from s, a message produced by a
// library that was given rawURL.
func String(s, rawURL string) string {
	if rawURL == "" {
		return s
	}
	s = strings.ReplaceAll(s, rawURL, URL(rawURL))
	for _, p := range secrets(rawURL) {
		s = strings.ReplaceAll(s, p, Mask)
	}
	return s
}

// Error returns err with rawURL and its passwords removed from its text.
// errors.Is and errors.As still see err's chain; Unwrap does not return it,
// so no caller can print the unredacted text by accident.
func Error(err error, rawURL string) error {
	if err == nil {
		return nil
	}
	return &scrubbed{msg: String(err.Error(), rawURL), err: err}
}

// Wrap is Error with context: the text is fmt.Sprintf(format, args...) +
// ": " + err's text, all scrubbed of rawURL and its passwords.
func Wrap(rawURL string, err error, format string, args ...any) error {
	return &scrubbed{msg: String(fmt.Sprintf(format, args...)+": "+err.Error(), rawURL), err: err}
}

type scrubbed struct {
	msg string
	err error
}

func (e *scrubbed) Error() string        { return e.msg }
func (e *scrubbed) Is(target error) bool { return errors.Is(e.err, target) }
func (e *scrubbed) As(target any) bool   { return errors.As(e.err, target) }

// WithText returns an error whose text is msg (already scrubbed by the
// caller) and which errors.Is and errors.As match as err.
func WithText(msg string, err error) error { return &scrubbed{msg: msg, err: err} }
