// Package dbq is the sqlc-generated pgx/v5 code for the queries in
// ../../queries over the schema of ../../db/migrations (queries.go,
// models.go, *.sql.go; regenerate with "make generate", never edit them).
//
// It is internal: the stores in package credits and workflows and the
// invalidation outbox (internal/outbox) are its only users, and they map its
// rows to their own types, so no generated type is part of the public API.
package dbq
