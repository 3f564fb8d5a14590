package credits

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ghl-agency/ghlcache/internal/dbq"
	"github.com/ghl-agency/ghlcache/internal/outbox"
	"github.com/ghl-agency/ghlcache/internal/pgretry"
)

// Store is the Postgres implementation of [Repo]. Each change is one
// statement in autocommit (one round trip, its own READ COMMITTED
// transaction): the balance row, a ledger row and, when a cached decorator
// asks for it, an outbox row naming the cache key to invalidate. It is safe
// for concurrent use.
type Store struct {
	pool *pgxpool.Pool
}

var _ Repo = (*Store)(nil)

// NewStore returns a Store on pool. The schema must be migrated (db.Migrate).
func NewStore(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

// Balance implements [Repo]. It retries once when Postgres terminated the
// connection or the query was never sent.
func (s *Store) Balance(ctx context.Context, userID int64, t Type) (Balance, error) {
	if err := validateOwner(userID, t); err != nil {
		return Balance{}, err
	}
	row, err := pgretry.Read(ctx, func(ctx context.Context) (dbq.CreditBalance, error) {
		return dbq.New(s.pool).CreditBalanceGet(ctx, dbq.CreditBalanceGetParams{UserID: userID, CreditType: string(t)})
	})
	switch err := interpretError(err); {
	case errors.Is(err, errNoRow):
		return Balance{UserID: userID, Type: t}, nil // no change yet
	case err != nil:
		return Balance{}, fmt.Errorf("credits: balance of user %d %s: %w", userID, t, err)
	}
	return balanceFromRow(row), nil
}

// Add implements [Repo].
func (s *Store) Add(ctx context.Context, c Change) (Balance, error) {
	b, _, err := s.change(ctx, c, +1, nil)
	return b, err
}

// Deduct implements [Repo].
func (s *Store) Deduct(ctx context.Context, c Change) (Balance, error) {
	b, _, err := s.change(ctx, c, -1, nil)
	return b, err
}

// History implements [Repo]. It retries once like Balance.
func (s *Store) History(ctx context.Context, userID int64, t Type, limit int) ([]Entry, error) {
	if err := validateOwner(userID, t); err != nil {
		return nil, err
	}
	switch {
	case limit <= 0:
		limit = DefaultHistoryLimit
	case limit > MaxHistoryLimit:
		limit = MaxHistoryLimit
	}
	rows, err := pgretry.Read(ctx, func(ctx context.Context) ([]dbq.CreditLedger, error) {
		return dbq.New(s.pool).CreditLedgerList(ctx, dbq.CreditLedgerListParams{
			UserID: userID, CreditType: string(t), MaxRows: int32(limit),
		})
	})
	if err := interpretError(err); err != nil {
		return nil, fmt.Errorf("credits: history of user %d %s: %w", userID, t, err)
	}
	entries := make([]Entry, len(rows))
	for i, r := range rows {
		entries[i] = entryFromRow(r)
	}
	return entries, nil
}

// change applies c with the sign of delta (+1 add, -1 deduct) in one
// statement, credit_apply (db/migrations/00004_write_path.sql), run in
// autocommit: one round trip in the common case. When ob is not nil, the
// same statement writes the balance's outbox row (domain ob.Domain(), the
// full key), so the invalidation is durable exactly when the change is; inv
// is that row (zero when no row was written: no outbox, an idempotent
// replay, too little to deduct).
//
// When the statement's outcome is unknown (its reply was lost: in
// autocommit the statement is its own COMMIT), change returns an error that
// Is ErrCommitUnknown together with an inv whose row id is unknown
// ([outbox.Outbox.Unrecorded]): the row exists exactly if the change was
// applied, and the caller invalidates as if it was. Writes are never
// retried here.
//
// Idempotency: a key already in the ledger returns its entry's result (no
// second round trip). Two racing first attempts serialise on the balance
// row lock and the ledger's unique index; the loser's statement fails as a
// whole (SQLSTATE GHL01, nothing written) and change reads the winner's
// result: one more round trip, only in that race.
func (s *Store) change(ctx context.Context, c Change, sign int64, ob *outbox.Outbox) (_ Balance, inv outbox.Invalidation, _ error) {
	none := outbox.Invalidation{}
	if err := c.Validate(); err != nil {
		return Balance{}, none, err
	}
	op := "add"
	if sign < 0 {
		op = "deduct"
	}
	key := Key(c.UserID, c.Type)
	arg := dbq.CreditApplyParams{UserID: c.UserID, CreditType: string(c.Type), Delta: sign * c.Amount, Reason: c.Reason}
	if c.IdempotencyKey != "" {
		arg.IdempotencyKey = &c.IdempotencyKey
	}
	if ob != nil {
		domain, full := ob.Domain(), ob.FullKey(key)
		arg.OutboxDomain, arg.OutboxKey = &domain, &full
	}
	// Acquire apart, so that a failure to connect (nothing sent) is never
	// taken for a statement whose outcome is unknown.
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return Balance{}, none, fmt.Errorf("credits: %s: %w", op, err)
	}
	row, err := dbq.New(conn).CreditApply(ctx, arg)
	conn.Release()
	switch err := interpretError(err); {
	case err == nil:
	case errors.Is(err, errKeyRaced): // a racing first attempt took the key; nothing was written
		b, found, err := s.replay(ctx, c, sign)
		if err == nil && !found {
			err = fmt.Errorf("credits: %s: idempotency key %q vanished", op, c.IdempotencyKey)
		}
		return b, none, err
	case sign > 0 && errors.Is(err, ErrInvalid): // out of range
		return Balance{}, none, fmt.Errorf("%w: adding %d to user %d %s would overflow the balance", ErrInvalid, c.Amount, c.UserID, c.Type)
	case pgretry.CommitUnknown(err):
		return Balance{}, ob.Unrecorded(key), fmt.Errorf("%w: %s: %w", ErrCommitUnknown, op, err)
	default:
		return Balance{}, none, fmt.Errorf("credits: %s: %w", op, err)
	}

	b := Balance{UserID: c.UserID, Type: c.Type, Amount: row.Balance, Version: row.Version, UpdatedAt: row.UpdatedAt.UTC()}
	switch row.Outcome {
	case outcomeApplied:
		if row.OutboxID != 0 {
			inv = outbox.Invalidation{ID: row.OutboxID, Key: *arg.OutboxKey}
		}
		return b, inv, nil
	case outcomeReplay:
		if row.FirstDelta != arg.Delta {
			return Balance{}, none, fmt.Errorf("%w: key %q first applied delta %d, now asked %d",
				ErrIdempotencyConflict, c.IdempotencyKey, row.FirstDelta, arg.Delta)
		}
		return b, none, nil
	case outcomeInsufficient:
		return Balance{}, none, fmt.Errorf("%w: user %d %s has less than %d", ErrInsufficient, c.UserID, c.Type, c.Amount)
	}
	return Balance{}, none, fmt.Errorf("credits: %s: unknown outcome %q", op, row.Outcome)
}

// The outcomes of credit_apply.
const (
	outcomeApplied      = "applied"
	outcomeReplay       = "replay"
	outcomeInsufficient = "insufficient"
)

// replay looks c.IdempotencyKey up in the ledger. found reports whether the
// key was used; then the result is the first application's balance, or
// ErrIdempotencyConflict when that change had another amount or direction.
func (s *Store) replay(ctx context.Context, c Change, sign int64) (b Balance, found bool, err error) {
	e, err := pgretry.Read(ctx, func(ctx context.Context) (dbq.CreditLedger, error) {
		return dbq.New(s.pool).CreditLedgerGetByIdempotencyKey(ctx, dbq.CreditLedgerGetByIdempotencyKeyParams{
			UserID: c.UserID, CreditType: string(c.Type), IdempotencyKey: c.IdempotencyKey,
		})
	})
	switch err := interpretError(err); {
	case errors.Is(err, errNoRow):
		return Balance{}, false, nil // the key was never used
	case err != nil:
		return Balance{}, false, fmt.Errorf("credits: idempotency key lookup: %w", err)
	}
	if e.Delta != sign*c.Amount {
		return Balance{}, true, fmt.Errorf("%w: key %q first applied delta %d, now asked %d",
			ErrIdempotencyConflict, c.IdempotencyKey, e.Delta, sign*c.Amount)
	}
	return Balance{
		UserID: e.UserID, Type: Type(e.CreditType), Amount: e.BalanceAfter,
		Version: e.VersionAfter, UpdatedAt: e.CreatedAt.UTC(),
	}, true, nil
}

// errNoRow is interpretError's pgx.ErrNoRows: the statement matched no row.
// What that means is each caller's to say (no change yet, a key never
// used); it never leaves the store.
var errNoRow = errors.New("credits: no row")

// errKeyRaced is interpretError's SQLSTATE GHL01 from credit_apply: a
// racing change with the same idempotency key committed first, and this
// statement wrote nothing. It never leaves the store.
var errKeyRaced = errors.New("credits: idempotency key taken by a racing change")

// sqlstateKeyRaced is the SQLSTATE credit_apply raises for errKeyRaced.
const sqlstateKeyRaced = "GHL01"

// interpretError is the store's one translation of driver errors, applied
// to the result of every query: pgx.ErrNoRows becomes errNoRow,
// numeric_value_out_of_range (a balance past the bigint range) an error
// that Is ErrInvalid and credit_apply's GHL01 errKeyRaced; any other error
// is returned as it is.
func interpretError(err error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return errNoRow
	}
	switch pgretry.Code(err) {
	case pgerrcode.NumericValueOutOfRange:
		return fmt.Errorf("%w: out of range: %w", ErrInvalid, err)
	case sqlstateKeyRaced:
		return fmt.Errorf("%w: %w", errKeyRaced, err)
	}
	return err // nil stays nil
}

func balanceFromRow(r dbq.CreditBalance) Balance {
	return Balance{
		UserID: r.UserID, Type: Type(r.CreditType), Amount: r.Balance,
		Version: r.Version, UpdatedAt: r.UpdatedAt.UTC(),
	}
}

func entryFromRow(r dbq.CreditLedger) Entry {
	e := Entry{
		ID: r.ID, UserID: r.UserID, Type: Type(r.CreditType), Delta: r.Delta,
		BalanceAfter: r.BalanceAfter, VersionAfter: r.VersionAfter, Reason: r.Reason,
		CreatedAt: r.CreatedAt.UTC(),
	}
	if r.IdempotencyKey != nil {
		e.IdempotencyKey = *r.IdempotencyKey
	}
	return e
}
