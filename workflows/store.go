package workflows

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ghl-agency/ghlcache/internal/dbq"
	"github.com/ghl-agency/ghlcache/internal/outbox"
	"github.com/ghl-agency/ghlcache/internal/pgretry"
)

// Store is the Postgres implementation of [Repo]. It is safe for concurrent
// use.
type Store struct {
	pool *pgxpool.Pool
}

var _ Repo = (*Store)(nil)

// NewStore returns a Store on pool. The schema must be migrated (db.Migrate).
func NewStore(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

// Definition implements [Repo]. It retries once when Postgres terminated the
// connection or the query was never sent.
func (s *Store) Definition(ctx context.Context, id int64) (Definition, error) {
	if err := validateID(id); err != nil {
		return Definition{}, err
	}
	row, err := pgretry.Read(ctx, func(ctx context.Context) (dbq.WorkflowDefinition, error) {
		return dbq.New(s.pool).WorkflowDefinitionGet(ctx, id)
	})
	switch err := interpretError(err); {
	case errors.Is(err, ErrNotFound):
		return Definition{}, fmt.Errorf("%w: id %d", ErrNotFound, id)
	case err != nil:
		return Definition{}, fmt.Errorf("workflows: definition %d: %w", id, err)
	}
	return definitionFromRow(row)
}

// Save implements [Repo].
func (s *Store) Save(ctx context.Context, d Definition) (Definition, error) {
	out, _, err := s.save(ctx, d, nil)
	if err != nil {
		return Definition{}, err
	}
	return out, nil
}

// Delete implements [Repo].
func (s *Store) Delete(ctx context.Context, id int64) error {
	_, err := s.delete(ctx, id, nil)
	return err
}

// save is Save; when ob is not nil, the same transaction records the
// definition's key in ob and inv is that row (also on create: a "not
// found" marker cached for an id must not hide it once it exists). When the
// COMMIT's outcome is unknown, save returns an error that Is
// ErrCommitUnknown together with inv, so that the caller can invalidate as
// if it committed.
func (s *Store) save(ctx context.Context, d Definition, ob *outbox.Outbox) (_ Definition, inv outbox.Invalidation, _ error) {
	none := outbox.Invalidation{}
	spec, err := normalize(d)
	if err != nil {
		return Definition{}, none, err
	}
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return Definition{}, none, fmt.Errorf("workflows: save: begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after Commit
	q := dbq.New(tx)

	var row dbq.WorkflowDefinition
	if d.ID == 0 {
		row, err = q.WorkflowDefinitionInsert(ctx, dbq.WorkflowDefinitionInsertParams{Name: d.Name, Spec: spec})
	} else {
		row, err = q.WorkflowDefinitionUpdate(ctx, dbq.WorkflowDefinitionUpdateParams{Name: d.Name, Spec: spec, ID: d.ID, Version: d.Version})
	}
	switch err = interpretError(err); {
	case errors.Is(err, ErrNotFound): // the update matched no row: find out why
		exists, err := q.WorkflowDefinitionExists(ctx, d.ID)
		switch {
		case err != nil:
			return Definition{}, none, fmt.Errorf("workflows: save: %w", interpretError(err))
		case exists:
			return Definition{}, none, fmt.Errorf("%w: definition %d is not at version %d", ErrConflict, d.ID, d.Version)
		default:
			return Definition{}, none, fmt.Errorf("%w: id %d", ErrNotFound, d.ID)
		}
	case errors.Is(err, ErrInvalid):
		return Definition{}, none, err
	case err != nil:
		return Definition{}, none, fmt.Errorf("workflows: save: %w", err)
	}
	if inv, err = ob.Record(ctx, tx, Key(row.ID)); err != nil {
		return Definition{}, none, fmt.Errorf("workflows: save: %w", err)
	}
	out, err := definitionFromRow(row)
	if err != nil {
		return Definition{}, none, err
	}
	if err := tx.Commit(ctx); err != nil {
		if pgretry.CommitUnknown(err) {
			return Definition{}, inv, fmt.Errorf("%w: save %d: %w", ErrCommitUnknown, out.ID, err)
		}
		return Definition{}, none, fmt.Errorf("workflows: save: commit: %w", err)
	}
	return out, inv, nil
}

// delete is Delete, recording the definition's key in ob in the same
// transaction when ob is not nil. Like save, it returns inv with an error
// that Is ErrCommitUnknown when the COMMIT's outcome is unknown.
func (s *Store) delete(ctx context.Context, id int64, ob *outbox.Outbox) (inv outbox.Invalidation, _ error) {
	none := outbox.Invalidation{}
	if err := validateID(id); err != nil {
		return none, err
	}
	tx, err := s.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return none, fmt.Errorf("workflows: delete: begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after Commit
	n, err := dbq.New(tx).WorkflowDefinitionDelete(ctx, id)
	if err := interpretError(err); err != nil {
		return none, fmt.Errorf("workflows: delete %d: %w", id, err)
	}
	if n == 0 {
		return none, fmt.Errorf("%w: id %d", ErrNotFound, id)
	}
	if inv, err = ob.Record(ctx, tx, Key(id)); err != nil {
		return none, fmt.Errorf("workflows: delete: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		if pgretry.CommitUnknown(err) {
			return inv, fmt.Errorf("%w: delete %d: %w", ErrCommitUnknown, id, err)
		}
		return none, fmt.Errorf("workflows: delete %d: commit: %w", id, err)
	}
	return inv, nil
}

// interpretError is the store's one translation of driver errors, applied
// to the result of every query: pgx.ErrNoRows becomes ErrNotFound, and
// untranslatable_character (a \u0000 in the spec) and
// invalid_text_representation (text the jsonb column refuses) an error
// that Is ErrInvalid; any other error is returned as it is.
func interpretError(err error) error {
	switch code := pgretry.Code(err); {
	case errors.Is(err, pgx.ErrNoRows):
		return ErrNotFound
	case code == pgerrcode.UntranslatableCharacter, code == pgerrcode.InvalidTextRepresentation:
		return fmt.Errorf("%w: spec: %v", ErrInvalid, err)
	}
	return err // nil stays nil
}

// definitionFromRow maps a row to a Definition, normalised so that a cached
// copy decodes to an equal value: UTC time, compact Spec.
func definitionFromRow(r dbq.WorkflowDefinition) (Definition, error) {
	spec, err := compact(r.Spec)
	if err != nil {
		return Definition{}, fmt.Errorf("workflows: definition %d: stored spec: %w", r.ID, err)
	}
	return Definition{ID: r.ID, Name: r.Name, Version: r.Version, Spec: spec, UpdatedAt: r.UpdatedAt.UTC()}, nil
}

func compact(b []byte) (json.RawMessage, error) {
	var buf bytes.Buffer
	buf.Grow(len(b))
	if err := json.Compact(&buf, b); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
