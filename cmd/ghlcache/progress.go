package main

import (
	"io"
	"os"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// progress is a progress bar on stderr, hidden (a no-op) when stderr is not
// a terminal, so that logs and tests see only the report.
type progress struct {
	bar *progressbar.ProgressBar // nil: hidden
}

// newProgress starts a bar of total steps on stderr, if it is a terminal.
func (e *env) newProgress(total int, desc string) *progress {
	if e.terminal == nil || !e.terminal(e.stderr) {
		return &progress{}
	}
	return &progress{bar: progressbar.NewOptions(total,
		progressbar.OptionSetWriter(e.stderr),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionSetWidth(30),
		progressbar.OptionShowElapsedTimeOnFinish(),
		progressbar.OptionSetPredictTime(false),
		progressbar.OptionClearOnFinish(),
		// No throttle: callers move the bar a few hundred times at most,
		// and a throttled bar would skip a short stage's description.
	)}
}

// set moves the bar to done steps with a new description.
func (p *progress) set(done int, desc string) {
	if p.bar == nil {
		return
	}
	p.bar.Describe(desc)
	_ = p.bar.Set(done)
}

// finish clears the bar.
func (p *progress) finish() {
	if p.bar == nil {
		return
	}
	_ = p.bar.Finish()
	_ = p.bar.Clear()
}
