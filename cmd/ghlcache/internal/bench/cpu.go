package bench

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ProcessCPU returns the CPU time (user + system) this process has used.
func ProcessCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// clockTick is USER_HZ, the unit of /proc/stat: 100 on every Linux
// architecture Go supports.
const clockTick = 10 * time.Millisecond

// MachineCPU returns the busy CPU time of the whole machine (every process:
// this one, Postgres, Redis, and anyone else's) from /proc/stat, and false
// where that file is not available. Steal time (a virtual machine's CPU
// running someone else) is not counted: it is the host's load, not the
// work of the systems measured, and it swings from run to run.
func MachineCPU() (time.Duration, bool) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0, false
	}
	fields := strings.Fields(sc.Text())
	if len(fields) < 8 || fields[0] != "cpu" {
		return 0, false
	}
	var busy int64
	for i, f := range fields[1:] {
		if i == 3 || i == 4 || i == 7 { // idle, iowait, steal
			continue
		}
		if i >= 8 { // guest time is already counted in user
			break
		}
		v, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, false
		}
		busy += v
	}
	return time.Duration(busy) * clockTick, true
}

// CPUMeter measures the CPU used between Start and Stop.
type CPUMeter struct {
	proc    time.Duration
	mach    time.Duration
	hasMach bool
	wall    time.Time
}

// StartCPU starts measuring.
func StartCPU() CPUMeter {
	m, ok := MachineCPU()
	return CPUMeter{proc: ProcessCPU(), mach: m, hasMach: ok, wall: time.Now()}
}

// CPUUsage is what a CPUMeter measured.
type CPUUsage struct {
	Wall    time.Duration // elapsed time
	Process time.Duration // CPU time of this process
	Machine time.Duration // busy CPU time of the machine; 0 when unknown
}

// Stop returns the CPU used since StartCPU.
func (m CPUMeter) Stop() CPUUsage {
	u := CPUUsage{Wall: time.Since(m.wall), Process: ProcessCPU() - m.proc}
	if mach, ok := MachineCPU(); ok && m.hasMach {
		u.Machine = mach - m.mach
	}
	return u
}
