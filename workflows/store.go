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

// Store is the Postgres implementation of [Repo]. Each Save and Delete is
// one statement in autocommit (one round trip), which also writes the
// outbox row when a cached decorator asks for it. It is safe for concurrent
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

// save is Save, one statement in autocommit (one round trip). When ob is
// not nil, the same statement writes the definition's outbox row and inv is
// that row (also on create: a "not found" marker cached for an id must not
// hide it once it exists). When the statement's outcome is unknown (its
// reply was lost; in autocommit it is its own COMMIT), save returns an error
// that Is ErrCommitUnknown together with an inv whose row id is unknown, so
// that the caller can invalidate as if it committed — except for a create,
// whose id never arrived: its row, if it committed, is the sweeper's.
func (s *Store) save(ctx context.Context, d Definition, ob *outbox.Outbox) (_ Definition, inv outbox.Invalidation, _ error) {
	none := outbox.Invalidation{}
	spec, err := normalize(d)
	if err != nil {
		return Definition{}, none, err
	}
	// Acquire apart, so that a failure to connect (nothing sent) is never
	// taken for a statement whose outcome is unknown.
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return Definition{}, none, fmt.Errorf("workflows: save: %w", err)
	}
	defer conn.Release()
	q := dbq.New(conn)
	domain := outboxDomain(ob)
	var row dbq.WorkflowDefinition
	var outboxID int64
	if d.ID == 0 {
		arg := dbq.WorkflowDefinitionInsertParams{Name: d.Name, Spec: spec, OutboxDomain: domain}
		if domain != nil {
			head, tail := ob.FullKey(keyHead), keyTail
			arg.OutboxKeyHead, arg.OutboxKeyTail = &head, &tail
		}
		var r dbq.WorkflowDefinitionInsertRow
		r, err = q.WorkflowDefinitionInsert(ctx, arg)
		row = dbq.WorkflowDefinition{ID: r.ID, Name: r.Name, Version: r.Version, Spec: r.Spec, CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt}
		outboxID = r.OutboxID
	} else {
		var r dbq.WorkflowDefinitionUpdateRow
		r, err = q.WorkflowDefinitionUpdate(ctx, dbq.WorkflowDefinitionUpdateParams{
			ID: d.ID, Name: d.Name, Spec: spec, Version: d.Version, OutboxDomain: domain, OutboxKey: outboxKey(ob, d.ID),
		})
		switch {
		case err != nil:
		case !r.Updated && r.Present:
			return Definition{}, none, fmt.Errorf("%w: definition %d is not at version %d", ErrConflict, d.ID, d.Version)
		case !r.Updated:
			return Definition{}, none, fmt.Errorf("%w: id %d", ErrNotFound, d.ID)
		}
		row = dbq.WorkflowDefinition{ID: r.ID, Name: r.Name, Version: r.Version, Spec: r.Spec, UpdatedAt: r.UpdatedAt}
		outboxID = r.OutboxID
	}
	switch err = interpretError(err); {
	case err == nil:
	case errors.Is(err, ErrInvalid):
		return Definition{}, none, err
	case pgretry.CommitUnknown(err):
		if d.ID != 0 {
			inv = ob.Unrecorded(Key(d.ID))
		}
		return Definition{}, inv, fmt.Errorf("%w: save %d: %w", ErrCommitUnknown, d.ID, err)
	default:
		return Definition{}, none, fmt.Errorf("workflows: save: %w", err)
	}
	if outboxID != 0 {
		inv = outbox.Invalidation{ID: outboxID, Key: ob.FullKey(Key(row.ID))}
	}
	out, err := definitionFromRow(row)
	if err != nil {
		// Committed, but unreadable: still invalidate.
		return Definition{}, inv, err
	}
	return out, inv, nil
}

// delete is Delete, one statement in autocommit that also writes the
// definition's outbox row when ob is not nil and a row was deleted. Like
// save, it returns an inv with an unknown row id and an error that Is
// ErrCommitUnknown when the statement's outcome is unknown.
func (s *Store) delete(ctx context.Context, id int64, ob *outbox.Outbox) (inv outbox.Invalidation, _ error) {
	none := outbox.Invalidation{}
	if err := validateID(id); err != nil {
		return none, err
	}
	conn, err := s.pool.Acquire(ctx) // apart, as in save
	if err != nil {
		return none, fmt.Errorf("workflows: delete %d: %w", id, err)
	}
	r, err := dbq.New(conn).WorkflowDefinitionDelete(ctx, dbq.WorkflowDefinitionDeleteParams{
		ID: id, OutboxDomain: outboxDomain(ob), OutboxKey: outboxKey(ob, id),
	})
	conn.Release()
	switch err := interpretError(err); {
	case err == nil:
	case pgretry.CommitUnknown(err):
		return ob.Unrecorded(Key(id)), fmt.Errorf("%w: delete %d: %w", ErrCommitUnknown, id, err)
	default:
		return none, fmt.Errorf("workflows: delete %d: %w", id, err)
	}
	if r.Deleted == 0 {
		return none, fmt.Errorf("%w: id %d", ErrNotFound, id)
	}
	if r.OutboxID != 0 {
		inv = outbox.Invalidation{ID: r.OutboxID, Key: ob.FullKey(Key(id))}
	}
	return inv, nil
}

// outboxDomain is the outbox_domain parameter of a write: nil (no outbox
// row) for a store with no cache in front.
func outboxDomain(ob *outbox.Outbox) *string {
	if ob == nil {
		return nil
	}
	d := ob.Domain()
	return &d
}

// outboxKey is the outbox_key parameter of a write of definition id.
func outboxKey(ob *outbox.Outbox, id int64) *string {
	if ob == nil {
		return nil
	}
	k := ob.FullKey(Key(id))
	return &k
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
