# Targets for developers and CI. Tools that only developers need (sqlc,
# staticcheck) run pinned through "go run pkg@version", so they never enter
# the library's go.mod.

SQLC        := go run github.com/sqlc-dev/sqlc/cmd/sqlc@v1.31.1
STATICCHECK := go run honnef.co/go/tools/cmd/staticcheck@v0.8.2
GO_TEST_FLAGS ?= -race -count=1 -timeout 20m

# The modules of the workspace (go.work): the library, the CLI, the
# integration tests and the example service. build, test and lint run in each.
MODULES := . cmd/ghlcache integration_test examples/service
# each runs its command in every module, stopping at the first failure.
each = set -e; for m in $(MODULES); do echo "== $$m: $(1)"; (cd $$m && $(1)); done

.DEFAULT_GOAL := help
.PHONY: help generate verify build test test-each lint migrate

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

generate: ## regenerate the sqlc code in internal/dbq/ from queries/ and db/migrations/
	$(SQLC) generate

verify: ## fail if the committed sqlc code in internal/dbq/ differs from a fresh generate
	$(SQLC) diff

build: ## compile every package of every module and the CLI into bin/ghlcache
	@$(call each,go build ./...)
	go build -o bin/ghlcache ./cmd/ghlcache

test: ## run every module's tests (services: TEST_DATABASE_URL/TEST_REDIS_URL, the local servers, or Docker)
	@go run ./integration_test/cmd/services $(MAKE) --no-print-directory test-each

# test-each runs the tests of every module with the services as they are;
# test wraps it in integration_test/cmd/services, which starts containers
# for services nothing else provides and hands their URLs to every module.
test-each:
	@$(call each,go test $(GO_TEST_FLAGS) ./...)

lint: ## go vet and staticcheck (2026.2.2) in every module
	@$(call each,go vet ./... && $(STATICCHECK) ./...)

migrate: ## apply pending migrations to DATABASE_URL (default: local postgres)
	go run ./cmd/ghlcache migrate up
