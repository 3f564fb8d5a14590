package main

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"
)

// redacted replaces every password in a message about a URL.
const redacted = "xxxxx"

var (
	// userinfoPassword matches "scheme://user:password@" in a URL that
	// net/url cannot parse (a bad port, say), whose password it cannot find.
	userinfoPassword = regexp.MustCompile(`(://[^/?#@:]*:)([^/?#]*)@`)
	// keywordPassword matches password=... in a key/value connection string
	// or a URL query.
	keywordPassword = regexp.MustCompile(`(password=)('[^']*'|[^ &]*)`)
)

// redactURL returns rawURL with any password replaced by "xxxxx". It also
// works on URLs that do not parse and on key/value connection strings, so
// that nothing the user typed as a password reaches a message.
func redactURL(rawURL string) string {
	if u, err := url.Parse(rawURL); err == nil {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), redacted)
		}
		q := u.Query()
		if q.Has("password") {
			q.Set("password", redacted)
			u.RawQuery = q.Encode()
		}
		return u.String()
	}
	s := userinfoPassword.ReplaceAllString(rawURL, "${1}"+redacted+"@")
	return keywordPassword.ReplaceAllString(s, "${1}"+redacted)
}

// secrets returns the passwords in rawURL, in every spelling a library may
// echo back (as typed, unescaped).
func secrets(rawURL string) []string {
	var out []string
	add := func(s string) {
		if s == "" || s == redacted {
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

// scrub removes rawURL and its passwords from msg, a message produced by a
// library that was given rawURL (pgx and go-redis parse errors quote it
// whole). Use it on every error text that may mention a URL.
func scrub(msg, rawURL string) string {
	if rawURL == "" {
		return msg
	}
	msg = strings.ReplaceAll(msg, rawURL, redactURL(rawURL))
	for _, s := range secrets(rawURL) {
		msg = strings.ReplaceAll(msg, s, redacted)
	}
	return msg
}

// scrubbedError is an error whose text has had URLs and passwords removed;
// errors.Is and errors.As still see the original chain.
type scrubbedError struct {
	msg string
	err error
}

func (e *scrubbedError) Error() string { return e.msg }
func (e *scrubbedError) Unwrap() error { return e.err }

// wrapURL wraps err, an error from a library given rawURL, with context
// (format, args), scrubbing rawURL and its password from the text.
func wrapURL(rawURL string, err error, format string, args ...any) error {
	return &scrubbedError{msg: scrub(fmt.Sprintf(format, args...)+": "+err.Error(), rawURL), err: err}
}
