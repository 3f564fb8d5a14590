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
// READ COMMITTED transaction: the balance row, a ledger row and, when a
// cached decorator asks for it, an outbox row naming the cache key to
// invalidate. It is safe for concurrent use.
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
// transaction. When ob is not nil, the same transaction records the
// balance's key in ob (domain OutboxDomain), so the invalidation is durable
// exactly when the change is; inv is that row (zero when no row was
// written: no outbox, or an idempotent replay).
//
// When the COMMIT's outcome is unknown (its reply was lost), change returns
// an error that Is ErrCommitUnknown together with inv: the row exists
// exactly if the change was applied, and the caller invalidates as if it was.
//
// Idempotency: a key already in the ledger returns its entry's result. Two
// racing first attempts serialise on the balance row lock and the ledger's
// unique index; the loser rolls back and returns the winner's result.
func (s *Store) change(ctx context.Context, c Change, sign int64, ob *outbox.Outbox) (_ Balance, inv outbox.Invalidation, _ error) {
	none := outbox.Invalidation{}
	if err := c.Validate(); err != nil {
		return Balance{}, none, err
	}
	op := "add"
	if sign < 0 {
		op = "deduct"
	}
	if c.IdempotencyKey != "" {
		b, found, err := s.replay(ctx, c, sign)
		if err != nil || found {
			return b, none, err
		}
	}

	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return Balance{}, none, fmt.Errorf("credits: %s: begin: %w", op, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after Commit
	q := dbq.New(tx)

	var row dbq.CreditBalance
	if sign > 0 {
		row, err = q.CreditBalanceAdd(ctx, dbq.CreditBalanceAddParams{UserID: c.UserID, CreditType: string(c.Type), Amount: c.Amount})
	} else {
		row, err = q.CreditBalanceDeduct(ctx, dbq.CreditBalanceDeductParams{UserID: c.UserID, CreditType: string(c.Type), Amount: c.Amount})
	}
	switch err = interpretError(err); {
	case sign > 0 && errors.Is(err, ErrInvalid): // out of range
		return Balance{}, none, fmt.Errorf("%w: adding %d to user %d %s would overflow the balance", ErrInvalid, c.Amount, c.UserID, c.Type)
	case errors.Is(err, errNoRow): // only a deduct's UPDATE is conditional: too little
		_ = tx.Rollback(ctx)
		if c.IdempotencyKey != "" {
			// A racing first attempt with this key may have taken the
			// credits; our UPDATE waited for its commit.
			if b, found, err := s.replay(ctx, c, sign); err != nil || found {
				return b, none, err
			}
		}
		return Balance{}, none, fmt.Errorf("%w: user %d %s has less than %d", ErrInsufficient, c.UserID, c.Type, c.Amount)
	case err != nil:
		return Balance{}, none, fmt.Errorf("credits: %s: %w", op, err)
	}

	var key *string
	if c.IdempotencyKey != "" {
		key = &c.IdempotencyKey
	}
	_, err = q.CreditLedgerInsert(ctx, dbq.CreditLedgerInsertParams{
		UserID: c.UserID, CreditType: string(c.Type), Delta: sign * c.Amount,
		BalanceAfter: row.Balance, VersionAfter: row.Version, Reason: c.Reason, IdempotencyKey: key,
	})
	switch err = interpretError(err); {
	case errors.Is(err, errNoRow): // the idempotency key won a race elsewhere
		_ = tx.Rollback(ctx)
		b, found, err := s.replay(ctx, c, sign)
		if err == nil && !found {
			err = fmt.Errorf("credits: %s: idempotency key %q vanished", op, c.IdempotencyKey)
		}
		return b, none, err
	case err != nil:
		return Balance{}, none, fmt.Errorf("credits: %s: ledger: %w", op, err)
	}
	if inv, err = ob.Record(ctx, tx, Key(c.UserID, c.Type)); err != nil {
		return Balance{}, none, fmt.Errorf("credits: %s: %w", op, err)
	}
	if err := tx.Commit(ctx); err != nil {
		if pgretry.CommitUnknown(err) {
			return Balance{}, inv, fmt.Errorf("%w: %s: %w", ErrCommitUnknown, op, err)
		}
		return Balance{}, none, fmt.Errorf("credits: %s: commit: %w", op, err)
	}
	return balanceFromRow(row), inv, nil
}

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
// What that means is each caller's to say (no change yet, too little to
// deduct, an idempotency key taken by a racing attempt, a key never used);
// it never leaves the store.
var errNoRow = errors.New("credits: no row")

// interpretError is the store's one translation of driver errors, applied
// to the result of every query: pgx.ErrNoRows becomes errNoRow and
// numeric_value_out_of_range (a balance past the bigint range) an error
// that Is ErrInvalid; any other error is returned as it is.
func interpretError(err error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return errNoRow
	}
	if pgretry.Code(err) == pgerrcode.NumericValueOutOfRange {
		return fmt.Errorf("%w: out of range: %w", ErrInvalid, err)
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
