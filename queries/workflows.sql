-- name: WorkflowDefinitionGet :one
SELECT id, name, version, spec, created_at, updated_at
FROM workflow_definitions
WHERE id = @id::bigint;

-- name: WorkflowDefinitionInsert :one
INSERT INTO workflow_definitions (name, version, spec, created_at, updated_at)
VALUES (@name::text, 1, @spec::jsonb, now(), now())
RETURNING id, name, version, spec, created_at, updated_at;

-- name: WorkflowDefinitionUpdate :one
-- Optimistic concurrency: only the version the caller read is replaced.
UPDATE workflow_definitions
SET name = @name::text, spec = @spec::jsonb, version = version + 1, updated_at = now()
WHERE id = @id::bigint AND version = @version::bigint
RETURNING id, name, version, spec, created_at, updated_at;

-- name: WorkflowDefinitionExists :one
SELECT EXISTS (SELECT 1 FROM workflow_definitions WHERE id = @id::bigint);

-- name: WorkflowDefinitionDelete :execrows
DELETE FROM workflow_definitions WHERE id = @id::bigint;
