package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/o365relay/o365relay/relay/relaytest"
)

// relayPkg is built when no -binary is given; `go build` resolves it from the
// module the current directory is in.
const relayPkg = "github.com/o365relay/o365relay/cmd/o365relay"

func buildRelay(ctx context.Context, dir string, stderr io.Writer) (string, error) {
	bin := filepath.Join(dir, "o365relay")
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, relayPkg)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		fmt.Fprint(stderr, out.String())
		return "", fmt.Errorf("go build %s (run from the repository, or pass -binary): %w", relayPkg, err)
	}
	return bin, nil
}

// child is the relay running as a separate process, so that its memory is
// its own and is read from /proc.
type child struct {
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	logPath string
	smtp    string
	admin   string
	once    sync.Once
	stopErr error
}

// freeAddr returns a loopback address that was free a moment ago.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	return addr, l.Close()
}

// startChild starts the relay; extraEnv entries override the defaults.
func startChild(ctx context.Context, bin, dir string, cloud *relaytest.Cloud, cfg config, extraEnv ...string) (*child, error) {
	smtpAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	adminAddr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, "relay.log")
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	// Room for every idle and sending client, so the run measures the
	// relay, not its connection cap.
	maxConns := max(1000, cfg.Idle+cfg.Clients+16)
	cmd := exec.Command(bin, "serve")
	cmd.Env = append([]string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + dir,
		"O365RELAY_LISTEN=" + smtpAddr,
		"O365RELAY_ADMIN_LISTEN=" + adminAddr,
		"O365RELAY_SPOOL_DIR=" + filepath.Join(dir, "spool"),
		"O365RELAY_HOSTNAME=o365relay-load.localhost",
		"O365RELAY_LOG_LEVEL=" + cfg.LogLevel,
		"O365RELAY_ACK=" + cfg.Ack,
		"O365RELAY_MAX_CONNECTIONS=" + strconv.Itoa(maxConns),
	}, cloud.Env()...)
	if !cfg.Paced {
		cmd.Env = append(cmd.Env, "O365RELAY_MAILBOX_RATE=0", "O365RELAY_MAILBOX_DAILY_RECIPIENTS=0")
	}
	// The Go runtime's own settings reach the relay, so that a run can
	// measure it under GOGC, GOMEMLIMIT or GOMAXPROCS as an admin sets them.
	for _, k := range []string{"GOGC", "GOMEMLIMIT", "GOMAXPROCS", "GODEBUG"} {
		if v, ok := os.LookupEnv(k); ok {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	cmd.Env = append(cmd.Env, extraEnv...) // exec keeps the last value of a key
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		_ = logf.Close() // the start error matters
		return nil, err
	}
	_ = logf.Close() // the child has its own descriptor; ours is not written
	c := &child{cmd: cmd, done: make(chan struct{}), logPath: logPath, smtp: smtpAddr, admin: adminAddr}
	go func() {
		c.waitErr = cmd.Wait()
		close(c.done)
	}()
	if err := c.waitReady(ctx); err != nil {
		tail := c.logTail(2000)
		_ = c.stop() // the readiness error is the one to report
		return nil, fmt.Errorf("%w\nrelay log:\n%s", err, tail)
	}
	return c, nil
}

// waitReady polls /readyz: the listener serves and the spool takes mail
// (not the token: the first messages may wait in the spool for it).
func (c *child) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	hc := &http.Client{Timeout: 2 * time.Second}
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.admin+"/readyz", nil)
		if err != nil {
			return err
		}
		if resp, err := hc.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body) // drained for reuse; content not needed
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-c.done:
			return fmt.Errorf("relay exited before it was ready: %v", c.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("relay not ready after %s: %w", readyTimeout, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// stop sends SIGTERM and waits for a clean exit (SIGKILL after 60 s).
func (c *child) stop() error {
	c.once.Do(func() {
		select {
		case <-c.done:
		default:
			if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
				c.stopErr = err
			}
			select {
			case <-c.done:
			case <-time.After(60 * time.Second):
				_ = c.cmd.Process.Kill() // it ignored SIGTERM; the error below says so
				<-c.done
				c.stopErr = errors.New("relay did not stop within 60 s of SIGTERM")
				return
			}
		}
		if c.waitErr != nil {
			c.stopErr = fmt.Errorf("relay exit: %w", c.waitErr)
		}
	})
	return c.stopErr
}

func (c *child) logTail(n int) string {
	b, err := os.ReadFile(c.logPath)
	if err != nil {
		return err.Error()
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// memory returns VmRSS and VmHWM (peak RSS of the process's life) in bytes.
func (c *child) memory() (rss, hwm int64, err error) { return procMemory(c.pid()) }

func procMemory(pid int) (rss, hwm int64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close() // read-only
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/%d/status %s: %w", pid, k, err)
		}
		if k == "VmRSS" {
			rss = kb << 10
		} else {
			hwm = kb << 10
		}
	}
	if err := sc.Err(); err != nil {
		return 0, 0, err
	}
	if rss == 0 {
		return 0, 0, fmt.Errorf("/proc/%d/status has no VmRSS", pid)
	}
	return rss, hwm, nil
}

// cpuTime is user+system CPU time from /proc/<pid>/stat (fields 14 and 15,
// in clock ticks of 1/100 s, the value of USER_HZ on Linux).
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("unexpected /proc stat format")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("unexpected /proc stat format")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(ut+st) * 10 * time.Millisecond, nil
}

// rssSampler records the highest VmRSS seen while it runs.
type rssSampler struct {
	pid   int
	stopc chan struct{}
	done  chan struct{}
	peak  int64
}

func startSampler(pid int) *rssSampler {
	s := &rssSampler{pid: pid, stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		t := time.NewTicker(sampleEvery)
		defer t.Stop()
		for {
			if rss, _, err := procMemory(pid); err == nil && rss > s.peak {
				s.peak = rss
			}
			select {
			case <-s.stopc:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *rssSampler) stop() int64 {
	close(s.stopc)
	<-s.done
	return s.peak
}
