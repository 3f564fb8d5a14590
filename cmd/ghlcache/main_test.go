package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ghl-agency/ghlcache/internal/testsvc"
)

// runMainEnv makes the test binary run main() instead of the tests, so that
// TestMainProcess can check exit codes and stderr of the real program.
const runMainEnv = "GHLCACHE_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
		return
	}
	os.Exit(testsvc.Main(m))
}

// password is the secret in every bad URL the tests use; it must never
// appear in anything the CLI prints or returns.
const password = "s3cret"

type result struct {
	stdout, stderr string
	err            error
	code           int // exit code main would use
}

// cli runs the command line args in-process, as main does, with a deadline.
func cli(t *testing.T, args ...string) result {
	t.Helper()
	return cliWith(t, &env{lookupEnv: os.LookupEnv, terminal: isTerminal}, args...)
}

// cliWith is cli with e's environment and hooks (its streams are the
// result's).
func cliWith(t *testing.T, e *env, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	e.stdout, e.stderr = &stdout, &stderr
	err := e.run(ctx, args)
	code := report(&stderr, err)
	return result{stdout: stdout.String(), stderr: stderr.String(), err: err, code: code}
}

// requireNoSecret fails t when the password appears in any output of r.
func requireNoSecret(t *testing.T, r result) {
	t.Helper()
	require.NotContains(t, r.stdout, password)
	require.NotContains(t, r.stderr, password)
	if r.err != nil {
		require.NotContains(t, r.err.Error(), password)
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--help"}, "Usage: ghlcache [flags] <command>"},
		{[]string{"-h"}, "Usage: ghlcache [flags] <command>"},
		{[]string{"help"}, "Usage: ghlcache [flags] <command>"},
		{[]string{"migrate", "--help"}, "Usage: ghlcache migrate [flags] <command>"},
		{[]string{"help", "migrate"}, "Usage: ghlcache migrate [flags] <command>"},
		{[]string{"migrate", "up", "--help"}, "Usage: ghlcache migrate up [flags]"},
		{[]string{"migrate", "down", "-help"}, "Usage: ghlcache migrate down [flags]"},
		{[]string{"migrate", "status", "--help"}, "Usage: ghlcache migrate status [flags]"},
		{[]string{"migrate", "version", "--help"}, "Usage: ghlcache migrate version [flags]"},
		{[]string{"health", "--help"}, "Usage: ghlcache health [flags]"},
		// Help wins over everything else on the line, without connecting.
		{[]string{"--database-url", "postgres://u:" + password + "@127.0.0.1:1/x", "health", "--help"}, "--timeout duration"},
	} {
		t.Run(strings.Join(tc.args, "_"), func(t *testing.T) {
			t.Parallel()
			r := cli(t, tc.args...)
			require.NoError(t, r.err)
			require.Equal(t, 0, r.code)
			require.Contains(t, r.stdout, tc.want)
			require.Contains(t, r.stdout, "--database-url URL")
			require.Empty(t, r.stderr)
			requireNoSecret(t, r)
		})
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "missing command"},
		{[]string{"bogus"}, `unknown command "bogus"`},
		{[]string{"--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"migrate"}, "migrate: missing command"},
		{[]string{"migrate", "sideways"}, `migrate: unknown command "sideways"`},
		{[]string{"migrate", "up", "now"}, `migrate up: unexpected argument "now"`},
		{[]string{"health", "extra"}, `health: unexpected argument "extra"`},
		{[]string{"health", "--timeout"}, "flag needs an argument: -timeout"},
		{[]string{"health", "--timeout", "soon"}, `invalid value "soon" for flag -timeout`},
		{[]string{"health", "--timeout", "0s"}, "--timeout must be positive"},
		{[]string{"health", "--no-cache=maybe"}, "invalid boolean value"},
	} {
		t.Run(strings.Join(tc.args, "_"), func(t *testing.T) {
			t.Parallel()
			r := cli(t, tc.args...)
			var ue *usageError
			require.ErrorAs(t, r.err, &ue)
			require.Equal(t, 2, r.code)
			require.Contains(t, r.err.Error(), tc.want)
			require.Contains(t, r.err.Error(), "--help")
			require.Empty(t, r.stdout)
			lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
			require.Equal(t, "ghlcache: "+r.err.Error(), lines[len(lines)-1], "the error is reported on one line")
		})
	}
}

// TestMainProcess runs the real program (this test binary, re-executed into
// main) and checks what a shell sees: exit code, stdout, one line on stderr.
func TestMainProcess(t *testing.T) {
	t.Parallel()
	badDB := "postgres://u:" + password + "@127.0.0.1:1/x"
	for _, tc := range []struct {
		name       string
		args       []string
		code       int
		wantStdout string
		wantStderr string
	}{
		{"help", []string{"--help"}, 0, "Usage: ghlcache", ""},
		{"usage", []string{"migrate", "sideways"}, 2, "", `ghlcache: migrate: unknown command "sideways"`},
		{"down", []string{"--database-url", badDB, "health", "--no-cache"}, 1, "postgres  DOWN", "ghlcache: health: postgres is down"},
		{"unparsable", []string{"migrate", "status", "--database-url", "postgres://u:" + password + "@127.0.0.1:port/x"}, 1, "",
			"ghlcache: invalid database URL <unparseable URL>: invalid port"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], tc.args...)
			cmd.Env = append(os.Environ(), runMainEnv+"=1")
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			code := 0
			if ee, ok := errors.AsType[*exec.ExitError](err); ok {
				code = ee.ExitCode()
			} else {
				require.NoError(t, err)
			}
			require.Equal(t, tc.code, code, "stderr: %s", stderr.String())
			require.Contains(t, stdout.String(), tc.wantStdout)
			requireNoSecret(t, result{stdout: stdout.String(), stderr: stderr.String()})
			if tc.wantStderr == "" {
				require.Empty(t, stderr.String())
				return
			}
			require.True(t, strings.HasPrefix(stderr.String(), tc.wantStderr), "stderr: %s", stderr.String())
			require.Equal(t, 1, strings.Count(stderr.String(), "\n"), "one line on stderr, no stack trace: %s", stderr.String())
		})
	}
}
