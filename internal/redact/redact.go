// Package redact keeps passwords out of messages.
//
// The rule is built so that it cannot leak: [URL] echoes a URL only when it
// parses cleanly, and then only the parts that cannot hold a password
// (scheme, user, host, port, path and a few known-safe query settings), with
// the password masked. Anything else — a string without "scheme://", a
// key/value connection string, a URL with an unescaped '@' outside its one
// userinfo separator, whitespace, a bad port — is shown as a fixed
// placeholder, never echoed. "Parses cleanly" means every parser this module
// hands a URL to (net/url, go-redis, pgx's libpq-style parser) must find the
// password in the same place: they disagree on where the userinfo ends when
// a '@', '/', '?' or '#' is left unescaped in a password.
//
// Library messages are another matter: pgx and go-redis quote the input in
// their parse errors, and a parser that split an ambiguous URL elsewhere
// echoes the piece it took for a host ("lookup ret2@host"). [Reason]
// describes a parse error from a fixed vocabulary, without any of the
// library's text; [String], [Error] and [Wrap] scrub other library messages
// (connect errors) of the URL, of its password in every spelling and, for a
// URL that does not parse cleanly, of every piece of what might be a
// password.
package redact

import (
	"cmp"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"unicode"
)

// Mask replaces every password in a message.
const Mask = "xxxxx"

// The placeholders URL returns for what it does not echo.
const (
	// Unparseable stands for a string that is not a URL of the form
	// scheme://host… (or has a bad port, host or escape).
	Unparseable = "<unparseable URL>"
	// Ambiguous stands for a URL with more than one '@', or a '@' after
	// the host: parsers disagree on where its password ends.
	Ambiguous = "<URL not shown: unescaped '@', write it as %40>"
	// KeyValue stands for a key/value connection string ("host=… password=…").
	KeyValue = "<key/value connection string>"
)

// minPiece is the shortest fragment of a possible password that String
// masks when a URL does not parse cleanly (a whole password is always masked,
// whatever its length). Shorter fragments would shred messages and tell
// nothing.
const minPiece = 3

var (
	// schemeRE is a URL scheme (RFC 3986).
	schemeRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*$`)
	// hostRE is what URL echoes as host[:port][,host[:port]…]: names, IPv4,
	// bracketed IPv6 with a zone.
	hostRE = regexp.MustCompile(`^[A-Za-z0-9._~\-:,\[\]%]*$`)
	// safeValueRE is a query value URL may echo.
	safeValueRE = regexp.MustCompile(`^[A-Za-z0-9._~/,:\-]{1,64}$`)
	// keywordPassword matches a password setting in a key/value connection
	// string (libpq allows spaces around '=' and single-quoted values with
	// backslash escapes) or in a URL query.
	keywordPassword = regexp.MustCompile(`(?i)(?:ssl)?password\s*=\s*('(?:[^'\\]|\\.)*'?|[^\s&]+)`)
	// schemePrefix is what precedes the userinfo of a URL-like string, well
	// formed or not ("redis://", "redis//", "redis:/"; "alice:" when there
	// is no scheme, which leaves the password).
	schemePrefix = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*(?::/*|/+)`)
)

// safeQuery are the query settings URL echoes (values permitting): none can
// hold a secret.
var safeQuery = []string{
	"sslmode", "connect_timeout", "target_session_attrs", "host", "port", "dbname", "user",
	"db", "protocol", "dial_timeout", "read_timeout", "write_timeout", "pool_size", "pool_max_conns",
}

// passwordInUser reports whether scheme's clients may read a userinfo
// without ':' as the password: ioredis (the service ghlcache replaces) reads
// redis://secret@host that way.
func passwordInUser(scheme string) bool {
	switch strings.ToLower(scheme) {
	case "redis", "rediss", "unix":
		return true
	}
	return false
}

// clean parses rawURL when it parses cleanly (see the package comment). It
// returns the URL and its raw host part, or the placeholder to show instead.
func clean(rawURL string) (u *url.URL, host, placeholder string) {
	for _, r := range rawURL {
		if r <= ' ' || r == 0x7f {
			return nil, "", notURL(rawURL)
		}
	}
	i := strings.Index(rawURL, "://")
	if i <= 0 || !schemeRE.MatchString(rawURL[:i]) {
		return nil, "", notURL(rawURL)
	}
	rest := rawURL[i+3:]
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	authority, tail := rest[:end], rest[end:]
	if strings.Count(authority, "@") > 1 || strings.Contains(tail, "@") {
		return nil, "", Ambiguous
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, "", Unparseable
	}
	host = authority[strings.LastIndex(authority, "@")+1:]
	if !hostRE.MatchString(host) {
		return nil, "", Unparseable
	}
	return u, host, ""
}

// notURL is the placeholder of a string that is not shaped like a URL.
func notURL(s string) string {
	if !strings.Contains(s, "://") && strings.Contains(s, "=") {
		return KeyValue
	}
	return Unparseable
}

// URL returns rawURL fit for a message: scheme://[user:xxxxx@]host[:port]/path
// and the safe query settings, or a placeholder ([Unparseable], [Ambiguous],
// [KeyValue]) when rawURL does not parse cleanly. "" stays "".
func URL(rawURL string) string {
	if rawURL == "" {
		return ""
	}
	u, host, placeholder := clean(rawURL)
	if u == nil {
		return placeholder
	}
	var b strings.Builder
	b.WriteString(u.Scheme + "://")
	if u.User != nil {
		name := u.User.Username()
		_, hasPassword := u.User.Password()
		switch {
		case hasPassword:
			b.WriteString(url.UserPassword(name, Mask).String() + "@")
		case passwordInUser(u.Scheme):
			b.WriteString(Mask + "@")
		default:
			b.WriteString(url.User(name).String() + "@")
		}
	}
	b.WriteString(host)
	b.WriteString(u.EscapedPath())
	q := u.Query()
	shown := url.Values{}
	for _, k := range safeQuery {
		if v := q.Get(k); safeValueRE.MatchString(v) {
			shown.Set(k, v)
		}
	}
	if len(shown) > 0 {
		b.WriteString("?" + shown.Encode())
	}
	return b.String()
}

// secrets returns what String masks in a message about rawURL, longest
// first: its passwords in every spelling a library may echo (as typed,
// unescaped) and, when rawURL does not parse cleanly, every piece of what
// might be one.
func secrets(rawURL string) []string {
	var out []string
	add := func(s string, pieces bool) {
		for _, v := range []string{s, unescape(s, url.PathUnescape), unescape(s, url.QueryUnescape)} {
			if v != "" && v != Mask {
				out = append(out, v)
			}
			if !pieces {
				continue
			}
			for _, p := range strings.FieldsFunc(v, func(r rune) bool { return strings.ContainsRune("@:/?#&'", r) || unicode.IsSpace(r) }) {
				if len(p) >= minPiece {
					out = append(out, p)
				}
			}
		}
	}
	for _, m := range keywordPassword.FindAllStringSubmatch(rawURL, -1) {
		v := m[1]
		if strings.HasPrefix(v, "'") {
			v = strings.TrimSuffix(strings.TrimPrefix(v, "'"), "'")
			add(v, false)
			v = strings.NewReplacer(`\'`, `'`, `\\`, `\`).Replace(v)
		}
		add(v, false)
	}
	if u, _, _ := clean(rawURL); u != nil {
		if p, has := u.User.Password(); has {
			add(p, false)
			if raw, ok := rawPassword(rawURL); ok {
				add(raw, false)
			}
		} else if u.User != nil && passwordInUser(u.Scheme) {
			add(u.User.Username(), false)
		}
	} else if at := strings.LastIndex(rawURL, "@"); at >= 0 {
		// Whatever precedes the last '@' may be userinfo, split by
		// another parser anywhere: mask it and each of its pieces.
		userinfo := schemePrefix.ReplaceAllString(rawURL[:at], "")
		if _, pw, ok := strings.Cut(userinfo, ":"); ok {
			add(pw, true)
		} else {
			add(userinfo, true)
		}
	}
	slices.SortFunc(out, func(a, b string) int { return cmp.Compare(len(b), len(a)) })
	return slices.Compact(out)
}

// rawPassword returns the password of a cleanly parsed URL as typed.
func rawPassword(rawURL string) (string, bool) {
	rest := rawURL[strings.Index(rawURL, "://")+3:]
	at := strings.IndexByte(rest, '@')
	if at < 0 {
		return "", false
	}
	_, pw, ok := strings.Cut(rest[:at], ":")
	return pw, ok
}

func unescape(s string, f func(string) (string, error)) string {
	if u, err := f(s); err == nil {
		return u
	}
	return ""
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

var (
	// anyUserinfo matches the userinfo of anything URL-like in free text,
	// up to the last '@' of a word ("//u:pw@", "//pw@", "u:pw@").
	anyUserinfo = regexp.MustCompile(`(?:[A-Za-z][A-Za-z0-9+.-]*:)?//[^\s"'<>]*@|[^\s/@"'<>=:]+:[^\s"'<>]*@`)
	// schemeSlashes is the part of an anyUserinfo match that stays.
	schemeSlashes = regexp.MustCompile(`^(?:[A-Za-z][A-Za-z0-9+.-]*:)?//`)
)

// Message masks what may be a password in s, a message about no URL in
// particular (go-redis's own log lines): the userinfo of anything URL-like
// and password settings. Use String when the URL is known.
func Message(s string) string {
	s = anyUserinfo.ReplaceAllStringFunc(s, func(m string) string {
		return schemeSlashes.FindString(m) + Mask + "@"
	})
	return keywordPassword.ReplaceAllStringFunc(s, func(m string) string {
		return m[:strings.IndexByte(m, '=')+1] + Mask
	})
}

// reasons map a parse error (already scrubbed, lower case) to what Reason
// says; the first match wins. None of the library's text is repeated: it
// quotes the input.
var reasons = []struct{ match, reason string }{
	{"invalid port", "invalid port"},
	{"missing protocol scheme", "missing scheme"},
	{"first path segment in url cannot contain colon", "missing scheme"},
	{"invalid url scheme", "unsupported scheme"},
	{"invalid database number", "invalid database number"},
	{"invalid url path", "invalid path"},
	{"invalid userinfo", "invalid character in the user name or password (percent-encode it)"},
	{"invalid url escape", "invalid %-escape"},
	{"keyword/value", "neither a URL nor key/value settings"},
	{"sslmode", "invalid sslmode"},
	{"unexpected option", "unknown query setting"},
	{"timeout", "invalid timeout setting"},
	{"host", "invalid host"},
	{"unix socket", "invalid unix socket path"},
}

// Reason says why rawURL did not parse, given the parser's error, in words
// of a fixed vocabulary that never quote the input.
func Reason(rawURL string, err error) string {
	if _, _, placeholder := clean(rawURL); placeholder == Ambiguous {
		return "unescaped '@' (write it as %40)"
	}
	msg := ""
	if err != nil {
		msg = strings.ToLower(String(err.Error(), rawURL))
	}
	for _, r := range reasons {
		if strings.Contains(msg, r.match) {
			return r.reason
		}
	}
	if notURL(rawURL) == Unparseable && !strings.Contains(rawURL, "://") {
		return "not a URL of the form scheme://host"
	}
	return "malformed"
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
