# Targets for developers and CI. Tools that only developers need (sqlc,
# staticcheck) run pinned through "go run pkg@version", so they never enter
# the library's go.mod.

SQLC        := go run github.com/sqlc-dev/sqlc/cmd/sqlc@v1.31.1
STATICCHECK := go run honnef.co/go/tools/cmd/staticcheck@v0.8.2
GO_TEST_FLAGS ?= -race -count=1 -timeout 20m

.DEFAULT_GOAL := help
.PHONY: help generate verify build test lint migrate

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

generate: ## regenerate the sqlc code in internal/dbq/ from queries/ and db/migrations/
	$(SQLC) generate

verify: ## fail if the committed sqlc code in internal/dbq/ differs from a fresh generate
	$(SQLC) diff

build: ## compile every package and the CLI into bin/ghlcache
	go build ./...
	go build -o bin/ghlcache ./cmd/ghlcache

test: ## run unit and integration tests (integration needs TEST_DATABASE_URL/TEST_REDIS_URL or Docker)
	go test $(GO_TEST_FLAGS) ./...

lint: ## go vet and staticcheck (2026.2.2)
	go vet ./...
	$(STATICCHECK) ./...

migrate: ## apply pending migrations to DATABASE_URL (default: local postgres)
	go run ./cmd/ghlcache migrate up
