package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"path"
	"text/tabwriter"
	"time"

	"github.com/pressly/goose/v3"

	"github.com/ghl-agency/ghlcache/db"
)

var migrateCommand = &command{
	name:    "migrate",
	summary: "apply, roll back or inspect the schema migrations",
	help: `Manage the Postgres schema (the goose migrations embedded in the binary).
A Postgres advisory lock serialises concurrent migrators.`,
	subcommands: []*command{
		{name: "up", summary: "apply every pending migration", flags: migrateFlags(migrateUp)},
		{name: "down", summary: "roll back the most recently applied migration", flags: migrateFlags(migrateDown)},
		{name: "status", summary: "list the migrations and whether each is applied", flags: migrateFlags(migrateStatus)},
		{name: "version", summary: "print the schema version (0: none applied)", flags: migrateFlags(migrateVersion)},
	},
}

// migrateFlags adapts a migrate subcommand to a command's flags function: it
// has no flags of its own; it gets a goose provider on the database.
func migrateFlags(fn func(context.Context, *env, *goose.Provider) error) func(*flag.FlagSet) runFunc {
	return func(*flag.FlagSet) runFunc {
		return func(ctx context.Context, e *env, _ []string) error {
			rawURL := e.databaseURL()
			pool, err := openPool(ctx, rawURL)
			if err != nil {
				return err
			}
			defer pool.Close()
			p, err := db.NewProvider(pool)
			if err != nil {
				return err
			}
			defer p.Close()
			if err := fn(ctx, e, p); err != nil {
				return wrapURL(rawURL, err, "migrate")
			}
			return nil
		}
	}
}

func migrateUp(ctx context.Context, e *env, p *goose.Provider) error {
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

func migrateDown(ctx context.Context, e *env, p *goose.Provider) error {
	r, err := p.Down(ctx)
	if errors.Is(err, goose.ErrNoNextVersion) {
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
	v, err := p.GetDBVersion(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stdout, "schema at version %d\n", v)
	return nil
}

func migrateStatus(ctx context.Context, e *env, p *goose.Provider) error {
	statuses, err := p.Status(ctx)
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

func migrateVersion(ctx context.Context, e *env, p *goose.Provider) error {
	v, err := p.GetDBVersion(ctx)
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
