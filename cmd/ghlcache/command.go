package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/ghl-agency/ghlcache/internal/redact"
)

// A command is one node of the command tree: a leaf that runs, or a group
// (migrate, cache) that dispatches to its subcommands. Every command accepts
// the global flags and --help.
//
// To add a command, write it in a file of its own and list it in [commands]
// (or in its group's subcommands).
type command struct {
	name    string
	args    string // synopsis of the positional arguments, e.g. "<key>"
	summary string // one line, shown in the parent's list
	help    string // shown by --help under the synopsis; optional

	// flags registers the command's own flags on fs and returns the function
	// that runs it with them. Leaves only; nil for a group.
	flags func(fs *flag.FlagSet) runFunc
	// subcommands makes the command a group.
	subcommands []*command
}

// runFunc runs a command with its positional arguments (flags parsed).
type runFunc func(ctx context.Context, env *env, args []string) error

// commands is the top of the command tree.
var commands = []*command{
	migrateCommand,
	healthCommand,
	demoCommand,
	benchCommand,
	cacheCommand,
	outboxCommand,
}

// env is what every command gets: the global settings and the output streams.
type env struct {
	stdout, stderr io.Writer
	global         globalFlags
	lookupEnv      func(string) (string, bool) // os.LookupEnv
	terminal       func(io.Writer) bool        // isTerminal: whether to draw progress bars on stderr
	// demoHook, if set, is called as the demo reaches each stage (see
	// demoStage); tests use it to order faults without sleeping.
	demoHook func(stage string)
	// containers starts the services the demo misses (startContainers when
	// nil); tests replace it.
	containers containerStarter
	// defaults, when set, replace the default URLs (tests point them at
	// closed ports).
	defaults struct{ databaseURL, redisURL string }
}

// usageError is a mistake in the command line; it exits with code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// run runs the command line args (without the program name). It returns nil
// after --help.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	e := &env{stdout: stdout, stderr: stderr, lookupEnv: os.LookupEnv, terminal: isTerminal}
	return e.run(ctx, args)
}

// run runs args with e's streams, environment and hooks.
func (e *env) run(ctx context.Context, args []string) error {
	root := &command{
		name:        "ghlcache",
		summary:     "operate a ghlcache deployment",
		help:        rootHelp,
		subcommands: commands,
	}
	err := e.dispatch(ctx, root, "ghlcache", args)
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		err = fmt.Errorf("interrupted: %w", err)
	}
	// A last guard: whatever path an error took, its text carries neither
	// URL's password.
	msg := err.Error()
	for _, u := range []string{e.databaseURL(), e.redisURL(), e.global.redisURL.value, e.getenv("REDIS_URL")} {
		msg = redact.String(msg, u)
	}
	return redact.WithText(msg, err)
}

const rootHelp = `ghlcache is the command line of the ghlcache library, a read-through cache
for user credit balances and workflow definitions in front of Postgres, with
Redis as the shared cache.

Global flags may be given before the command or after it.`

// report writes err (if any) to stderr as one line and returns the process
// exit code: 0 success, 2 usage error, 1 any other failure.
func report(stderr io.Writer, err error) int {
	if err == nil {
		return 0
	}
	var le *linesError
	if errors.As(err, &le) {
		for _, l := range le.lines {
			fmt.Fprintln(stderr, l)
		}
		return 1
	}
	fmt.Fprintf(stderr, "ghlcache: %s\n", oneLine(err.Error()))
	var ue *usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

// oneLine folds a multi-line error text (goose and pgx sometimes produce
// them) into one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// dispatch parses args for cmd (path is its full name, "ghlcache migrate")
// and runs it, or, for a group, the subcommand its first argument names.
func (e *env) dispatch(ctx context.Context, cmd *command, path string, args []string) error {
	fs := flag.NewFlagSet(path, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned and reported once, by report
	e.global.register(fs)
	var runner runFunc
	if cmd.flags != nil {
		runner = cmd.flags(fs)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(e.stdout, cmd, path, fs)
			return nil
		}
		return usagef(path, "%v", err)
	}
	rest := fs.Args()

	if cmd.subcommands == nil {
		if cmd.args == "" && len(rest) > 0 {
			return usagef(path, "unexpected argument %q", rest[0])
		}
		return runner(ctx, e, rest)
	}
	if len(rest) == 0 {
		if cmd.name == "ghlcache" {
			printUsage(e.stderr, cmd, path, fs)
		}
		return usagef(path, "missing command, want one of: %s", names(cmd.subcommands))
	}
	if rest[0] == "help" { // "ghlcache help", "ghlcache help migrate up"
		return e.dispatch(ctx, cmd, path, append(rest[1:], "--help"))
	}
	for _, sub := range cmd.subcommands {
		if sub.name == rest[0] {
			return e.dispatch(ctx, sub, path+" "+sub.name, rest[1:])
		}
	}
	return usagef(path, "unknown command %q, want one of: %s", rest[0], names(cmd.subcommands))
}

// usagef returns a usage error that names the command and where its help is.
func usagef(path, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if name, ok := strings.CutPrefix(path, "ghlcache "); ok {
		msg = name + ": " + msg
	}
	return &usageError{msg: fmt.Sprintf("%s (see %q)", msg, path+" --help")}
}

func names(cmds []*command) string {
	s := make([]string, len(cmds))
	for i, c := range cmds {
		s[i] = c.name
	}
	return strings.Join(s, ", ")
}

// printUsage writes cmd's help: synopsis, description, subcommands, flags.
func printUsage(w io.Writer, cmd *command, path string, fs *flag.FlagSet) {
	var b strings.Builder
	switch {
	case cmd.subcommands != nil:
		fmt.Fprintf(&b, "Usage: %s [flags] <command> [flags]\n", path)
	case cmd.args != "":
		fmt.Fprintf(&b, "Usage: %s [flags] %s\n", path, cmd.args)
	default:
		fmt.Fprintf(&b, "Usage: %s [flags]\n", path)
	}
	if text := cmp.Or(cmd.help, cmd.summary); text != "" {
		fmt.Fprintf(&b, "\n%s\n", strings.TrimSpace(text))
	}
	if cmd.subcommands != nil {
		b.WriteString("\nCommands:\n")
		for _, sub := range cmd.subcommands {
			fmt.Fprintf(&b, "  %-10s %s\n", sub.name, sub.summary)
		}
	}
	b.WriteString("\nFlags:\n")
	fs.VisitAll(func(f *flag.Flag) {
		typ, usage := flag.UnquoteUsage(f)
		fmt.Fprintf(&b, "  --%s", f.Name)
		if typ != "" {
			fmt.Fprintf(&b, " %s", typ)
		}
		fmt.Fprintf(&b, "\n      %s", usage)
		if _, global := f.Value.(*urlFlag); !global && f.DefValue != "" && f.DefValue != "false" {
			fmt.Fprintf(&b, " (default %s)", f.DefValue)
		}
		b.WriteString("\n")
	})
	b.WriteString("  --help\n      show this help\n")
	if cmd.subcommands != nil {
		fmt.Fprintf(&b, "\nRun \"%s <command> --help\" for a command's flags.\n", path)
	}
	_, _ = io.WriteString(w, b.String())
}
