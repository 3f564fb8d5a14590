package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pressly/goose/v3"

	"github.com/ghl-agency/ghlcache/db"
	"github.com/ghl-agency/ghlcache/internal/redact"
)

var migrateCommand = &command{
	name:    "migrate",
	summary: "apply, roll back or inspect the schema migrations",
	help: `Manage the Postgres schema (the goose migrations embedded in the binary).
A Postgres advisory lock serialises concurrent migrators.`,
	subcommands: []*command{
		{name: "up", summary: "apply every pending migration", flags: migrateFlags(migrateUp)},
		migrateDownCommand,
		{name: "status", summary: "list the migrations and whether each is applied", flags: migrateFlags(migrateStatus)},
		{name: "version", summary: "print the schema version (0: none applied)", flags: migrateFlags(migrateVersion)},
	},
}

var migrateDownCommand = &command{
	name:    "down",
	summary: "roll back the most recently applied migration (needs --yes)",
	help: `Roll back the most recently applied migration: run its Down section, which
drops the tables it created and every row in them (credit balances and
their ledger for the first migration). Without --yes, only say what it
would roll back on which database, and exit with status 2.`,
	flags: func(fs *flag.FlagSet) runFunc {
		yes := fs.Bool("yes", false, "really roll back (dropping the migration's tables and every row in them)")
		return migrateRun(func(ctx context.Context, e *env, t *migrateTarget) error { return migrateDown(ctx, e, t, *yes) })
	},
}

// migrateTarget is what a migrate subcommand works on.
type migrateTarget struct {
	p        *goose.Provider
	pool     *pgxpool.Pool
	database string // current_database()
	url      string // redacted
}

// String names the database, for messages about changing it.
func (t *migrateTarget) String() string { return fmt.Sprintf("database %q at %s", t.database, t.url) }

// migrateFlags adapts a migrate subcommand without flags of its own to a
// command's flags function.
func migrateFlags(fn func(context.Context, *env, *migrateTarget) error) func(*flag.FlagSet) runFunc {
	return func(*flag.FlagSet) runFunc { return migrateRun(fn) }
}

// migrateRun runs fn on a goose provider over the configured database.
func migrateRun(fn func(context.Context, *env, *migrateTarget) error) runFunc {
	return func(ctx context.Context, e *env, _ []string) error {
		rawURL := e.databaseURL()
		pool, err := openPool(ctx, rawURL)
		if err != nil {
			return err
		}
		defer pool.Close()
		t := &migrateTarget{pool: pool, url: redact.URL(rawURL)}
		if err := pool.QueryRow(ctx, "SELECT current_database()").Scan(&t.database); err != nil {
			return redact.Wrap(rawURL, err, "migrate")
		}
		if t.p, err = db.NewProvider(pool); err != nil {
			return err
		}
		defer t.p.Close()
		if err := fn(ctx, e, t); err != nil {
			return redact.Wrap(rawURL, err, "migrate")
		}
		return nil
	}
}

func migrateUp(ctx context.Context, e *env, t *migrateTarget) error {
	p := t.p
	fmt.Fprintln(e.stdout, t)
	results, err := p.Up(ctx)
	if pe, ok := errors.AsType[*goose.PartialError](err); ok {
		results = append(pe.Applied, pe.Failed)
	}
	for _, r := range results {
		printResult(e, r)
	}
	if err != nil {
		return err
	}
	v, err := p.GetDBVersion(ctx)
	if err != nil {
		return err
	}
	if len(results) == 0 {
		fmt.Fprintf(e.stdout, "nothing to apply; schema at version %d\n", v)
		return nil
	}
	fmt.Fprintf(e.stdout, "schema at version %d\n", v)
	return nil
}

func migrateDown(ctx context.Context, e *env, t *migrateTarget, yes bool) error {
	p := t.p
	v, err := p.GetDBVersion(ctx)
	if err != nil {
		return err
	}
	if v == 0 {
		fmt.Fprintf(e.stdout, "%s: nothing to roll back; schema at version 0\n", t)
		return nil
	}
	if !yes {
		what := fmt.Sprintf("version %d", v)
		if src := sourceOf(p, v); src != nil {
			what = path.Base(src.Path)
			if drops := t.drops(ctx, src); drops != "" {
				what += ", which drops " + drops
			}
		}
		return usagef("ghlcache migrate down", "would roll back %s on %s; add --yes to roll it back", what, t)
	}
	fmt.Fprintln(e.stdout, t)
	r, err := p.Down(ctx)
	if errors.Is(err, goose.ErrNoNextVersion) { // rolled back meanwhile by another migrator
		fmt.Fprintln(e.stdout, "nothing to roll back; schema at version 0")
		return nil
	}
	if pe, ok := errors.AsType[*goose.PartialError](err); ok {
		r = pe.Failed
	}
	if r != nil {
		printResult(e, r)
	}
	if err != nil {
		return err
	}
	if v, err = p.GetDBVersion(ctx); err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "schema at version %d\n", v)
	return nil
}

// sourceOf returns the migration of version v, nil if the binary has none.
func sourceOf(p *goose.Provider, v int64) *goose.Source {
	for _, s := range p.ListSources() {
		if s.Version == v {
			return s
		}
	}
	return nil
}

// dropTable matches a DROP TABLE statement and captures the table names.
var dropTable = regexp.MustCompile(`(?i)\bDROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?([\w."]+(?:\s*,\s*[\w."]+)*)`)

// drops lists the tables the Down section of src drops, with their rows now
// ("table credit_ledger (12 rows), table credit_balances (5 rows)"); "" if
// it cannot tell.
func (t *migrateTarget) drops(ctx context.Context, src *goose.Source) string {
	text, err := fs.ReadFile(db.Migrations(), src.Path)
	if err != nil {
		return ""
	}
	_, down, ok := strings.Cut(string(text), "-- +goose Down")
	if !ok {
		return ""
	}
	var out []string
	for _, m := range dropTable.FindAllStringSubmatch(down, -1) {
		for name := range strings.SplitSeq(m[1], ",") {
			name = strings.TrimSpace(name)
			var rows int64
			err := t.pool.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier(strings.Split(strings.ReplaceAll(name, `"`, ""), ".")).Sanitize()).Scan(&rows)
			if err != nil {
				out = append(out, "table "+name)
				continue
			}
			out = append(out, fmt.Sprintf("table %s (%d rows)", name, rows))
		}
	}
	return strings.Join(out, ", ")
}

func migrateStatus(ctx context.Context, e *env, t *migrateTarget) error {
	statuses, err := t.p.Status(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tSTATE\tAPPLIED AT\tMIGRATION")
	for _, s := range statuses {
		applied := "-"
		if s.State == goose.StateApplied {
			applied = s.AppliedAt.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", s.Source.Version, s.State, applied, path.Base(s.Source.Path))
	}
	return tw.Flush()
}

func migrateVersion(ctx context.Context, e *env, t *migrateTarget) error {
	v, err := t.p.GetDBVersion(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, v)
	return nil
}

// printResult prints one applied or rolled back migration.
func printResult(e *env, r *goose.MigrationResult) {
	verb := "applied"
	if r.Direction == "down" {
		verb = "rolled back"
	}
	if r.Error != nil {
		verb = "FAILED"
	}
	fmt.Fprintf(e.stdout, "%-11s %s (%s)\n", verb, path.Base(r.Source.Path), r.Duration.Round(time.Millisecond))
}
