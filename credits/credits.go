package credits

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"
)

// Type names a kind of credit, such as "enrichment". It matches
// ^[a-z][a-z0-9_]{0,31}$.
type Type string

// Balance is a user's balance of one credit type. Version counts the changes
// applied to it: 0 before the first change, 1 after it.
type Balance struct {
	UserID    int64
	Type      Type
	Amount    int64
	Version   int64
	UpdatedAt time.Time // UTC; zero before the first change
}

// Change asks to add or deduct Amount (always > 0) credits of Type for a
// user. A non-empty IdempotencyKey makes the change apply at most once per
// (UserID, Type, IdempotencyKey): a repeat returns the first result.
type Change struct {
	UserID         int64
	Type           Type
	Amount         int64
	Reason         string
	IdempotencyKey string
}

// Entry is one applied change in the ledger, with the balance and version it
// produced. Delta is positive for an add and negative for a deduct.
type Entry struct {
	ID             int64
	UserID         int64
	Type           Type
	Delta          int64
	BalanceAfter   int64
	VersionAfter   int64
	Reason         string
	IdempotencyKey string
	CreatedAt      time.Time // UTC
}

// Repo reads and changes credit balances. Every implementation decides money
// in Postgres only: a cached Repo serves reads from the cache but sends every
// change to the database.
type Repo interface {
	// Balance returns the user's balance of t. A user with no row has
	// Balance{UserID: userID, Type: t} (Amount 0, Version 0). It returns
	// ErrInvalid for userID <= 0 or a bad type name.
	Balance(ctx context.Context, userID int64, t Type) (Balance, error)

	// Add adds c.Amount and returns the new balance. It returns ErrInvalid
	// for bad input or when the balance would overflow an int64,
	// ErrIdempotencyConflict when c.IdempotencyKey was used for a different
	// change, and ErrCommitUnknown when the change may or may not have been
	// applied.
	Add(ctx context.Context, c Change) (Balance, error)

	// Deduct subtracts c.Amount and returns the new balance. It returns
	// ErrInsufficient (and changes nothing) when the balance is lower than
	// c.Amount, ErrInvalid for bad input, ErrIdempotencyConflict when
	// c.IdempotencyKey was used for a different change, and
	// ErrCommitUnknown when the change may or may not have been applied.
	Deduct(ctx context.Context, c Change) (Balance, error)

	// History returns the user's ledger entries of t, newest first. limit
	// <= 0 means DefaultHistoryLimit; more than MaxHistoryLimit is clamped.
	// It returns ErrInvalid for userID <= 0 or a bad type name.
	History(ctx context.Context, userID int64, t Type, limit int) ([]Entry, error)
}

// Limits on a change and on History.
const (
	MaxAmount            = 1_000_000_000_000 // per change
	MaxReasonBytes       = 500
	MaxIdempotencyKeyLen = 200 // bytes
	DefaultHistoryLimit  = 100
	MaxHistoryLimit      = 1000
)

var (
	// ErrInsufficient means a deduct asked for more than the balance.
	ErrInsufficient = errors.New("credits: insufficient balance")
	// ErrInvalid means bad input (ids, type names, amounts, overflow, long
	// reasons or keys); nothing was written.
	ErrInvalid = errors.New("credits: invalid input")
	// ErrIdempotencyConflict means the idempotency key was already used for
	// a change with another amount or direction.
	ErrIdempotencyConflict = errors.New("credits: idempotency key reused for a different change")
	// ErrCommitUnknown means the connection failed while a change was being
	// committed (its reply was lost), so it may or may not have been
	// applied; [Cached] invalidates the balance as if it had been. To find
	// out, repeat the change with the same IdempotencyKey: if it was
	// applied, the repeat returns its result instead of applying it again.
	ErrCommitUnknown = errors.New("credits: commit outcome unknown")
)

// keyPrefix starts every balance's cache key.
const keyPrefix = "credits:"

// Key returns the cache key of a balance, "credits:{userId}:{type}" (the
// cache adds its namespace, "ghl:" by default).
func Key(userID int64, t Type) string {
	// One allocation (the string), not two: every read builds its key.
	var buf [64]byte
	b := append(buf[:0], keyPrefix...)
	b = strconv.AppendInt(b, userID, 10)
	b = append(b, ':')
	return string(append(b, t...))
}

// typePattern is the form of a type name; validType checks it by hand
// because a read validates its type on every call (a regexp costs a
// microsecond there).
const typePattern = `^[a-z][a-z0-9_]{0,31}$`

// Validate reports whether t is a well-formed type name (ErrInvalid if not).
func (t Type) Validate() error {
	if !validType(string(t)) {
		return fmt.Errorf("%w: credit type %q must match %s", ErrInvalid, t, typePattern)
	}
	return nil
}

func validType(s string) bool {
	if len(s) == 0 || len(s) > 32 || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' {
			return false
		}
	}
	return true
}

func validateOwner(userID int64, t Type) error {
	if userID <= 0 {
		return fmt.Errorf("%w: user id %d must be positive", ErrInvalid, userID)
	}
	return t.Validate()
}

// Validate reports whether c is a well-formed change (ErrInvalid if not).
func (c Change) Validate() error {
	if err := validateOwner(c.UserID, c.Type); err != nil {
		return err
	}
	if c.Amount <= 0 || c.Amount > MaxAmount {
		return fmt.Errorf("%w: amount %d must be in 1..%d", ErrInvalid, c.Amount, int64(MaxAmount))
	}
	if len(c.Reason) > MaxReasonBytes || !utf8.ValidString(c.Reason) || containsNUL(c.Reason) {
		return fmt.Errorf("%w: reason must be valid UTF-8 without NUL, at most %d bytes", ErrInvalid, MaxReasonBytes)
	}
	if len(c.IdempotencyKey) > MaxIdempotencyKeyLen || !utf8.ValidString(c.IdempotencyKey) || containsNUL(c.IdempotencyKey) {
		return fmt.Errorf("%w: idempotency key must be valid UTF-8 without NUL, at most %d bytes", ErrInvalid, MaxIdempotencyKeyLen)
	}
	return nil
}

func containsNUL(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return true
		}
	}
	return false
}
