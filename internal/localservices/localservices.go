// Package localservices names the conventional Postgres and Redis of a
// developer's machine: the CLI's default URLs, and the services the tests
// fall back to when TEST_DATABASE_URL and TEST_REDIS_URL are unset.
package localservices

const (
	// DatabaseURL is Postgres on 127.0.0.1:5432 as user postgres with
	// trust authentication (no password), its postgres database.
	DatabaseURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	// RedisAddr is the local Redis's address.
	RedisAddr = "127.0.0.1:6379"
	// RedisURL is the local Redis, database 0.
	RedisURL = "redis://" + RedisAddr + "/0"
)
