package relay

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/o365relay/o365relay/relay/status"
)

// Readiness means "mail handed to the relay now is safe": the listener is
// serving, the spool is writable and has room, and the relay is not
// draining. The token, Exchange and mailbox holds are deliberately not part
// of it: they make mail wait in the spool, which is what the spool is for;
// they are reported by Status, the metrics and the STATUS= line, and an
// unreachable Entra ID must never take the applications that send through
// the relay out of service (docs/operations.md).

// readyCheck is one readiness condition; its error text is shown to whoever
// can reach the admin port or the control socket, so it holds no secret.
type readyCheck struct {
	name string
	fn   func(context.Context) error
}

func (r *Relay) readyChecks() []readyCheck {
	return []readyCheck{
		{"listener", r.listenerReady},
		{"spool", r.spoolReady},
		{"draining", r.drainReady},
	}
}

// Readiness runs every check.
func (r *Relay) Readiness(ctx context.Context) status.Readiness {
	out := status.Readiness{OK: true}
	for _, c := range r.readyChecks() {
		err := c.fn(ctx)
		ch := status.Check{Name: c.name, OK: err == nil}
		if err != nil {
			ch.Error, out.OK = err.Error(), false
		}
		out.Checks = append(out.Checks, ch)
	}
	return out
}

func (r *Relay) listenerReady(context.Context) error {
	if !r.serving.Load() {
		return errors.New("the SMTP listener is not serving yet")
	}
	return nil
}

func (r *Relay) drainReady(context.Context) error {
	if r.draining.Load() {
		return errors.New("shutting down: new transactions get 421 4.3.2")
	}
	return nil
}

// minFreeInodes: a message needs a few inodes (record, state, temporaries).
const minFreeInodes = 16

// spoolReady checks that a message of the largest accepted size would be
// taken now: below spool_max_messages and spool_max_bytes, that much space
// (and a few inodes) free on the spool's file system, and a file can be
// written where the spool writes (permissions, read-only mounts).
func (r *Relay) spoolReady(context.Context) error {
	items, size, _ := r.sp.Stats()
	if m := r.cfg.SpoolMaxItems; m > 0 && items >= m {
		return fmt.Errorf("spool full: %d messages queued, spool_max_messages is %d; new mail gets 452 4.3.1 until delivery makes room", items, m)
	}
	if m := r.cfg.SpoolMaxBytes; m > 0 && size >= m {
		return fmt.Errorf("spool full: %d bytes queued, spool_max_bytes is %d; new mail gets 452 4.3.1 until delivery makes room", size, m)
	}
	var fs syscall.Statfs_t
	if err := syscall.Statfs(r.cfg.SpoolDir, &fs); err != nil {
		return fmt.Errorf("spool_dir %s: %w", r.cfg.SpoolDir, err)
	}
	need := max(r.cfg.MaxMessageBytes, 1<<20)
	if free := int64(fs.Bavail) * fs.Bsize; free < need {
		return fmt.Errorf("spool_dir %s: %d bytes free on its file system, less than one message of max_message_bytes (%d)", r.cfg.SpoolDir, free, need)
	}
	if fs.Files > 0 && fs.Ffree < minFreeInodes {
		return fmt.Errorf("spool_dir %s: no free inodes on its file system", r.cfg.SpoolDir)
	}
	// Prove the spool is writable now. A file of its own per probe:
	// probes run concurrently (kubelet, HEALTHCHECK, status).
	f, err := os.CreateTemp(filepath.Join(r.cfg.SpoolDir, "tmp"), ".readyz-")
	if err != nil {
		return fmt.Errorf("spool not writable: %w", err)
	}
	_, werr := f.Write([]byte("ok"))
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if rerr := os.Remove(f.Name()); werr == nil {
		werr = rerr
	}
	if werr != nil {
		return fmt.Errorf("spool not writable: %w", werr)
	}
	return nil
}
