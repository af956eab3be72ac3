package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/o365relay/o365relay/relay/control"
	"github.com/o365relay/o365relay/relay/spool"
)

// openAdmin reaches the spool in dir the way the queue command must: through
// the running daemon's control socket, so that the daemon makes every change
// at once and as its own user; only when no daemon holds the spool's lock
// does the command open the spool itself (holding the lock meanwhile, so a
// daemon starting then waits for no one: it fails to lock and its service
// manager starts it again). It never creates a spool: a missing directory
// is an error naming spool_dir.
func openAdmin(ctx context.Context, dir string) (control.Admin, func() error, error) {
	if err := spoolExists(dir); err != nil {
		return nil, nil, err
	}
	c, err := control.Dial(ctx, control.SocketPath(dir))
	if err == nil {
		return c, c.Close, nil
	}
	if !errors.Is(err, control.ErrNoDaemon) {
		return nil, nil, fmt.Errorf("%w; run this command as the relay's user (README, Operating it)", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("spool_dir %s: %w (has a relay ever run with it?)", dir, err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = lock.Close() // the lock error is what matters
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, nil, fmt.Errorf("a relay daemon holds spool_dir %s, but its control socket %s does not answer; see its log", dir, control.SocketPath(dir))
		}
		return nil, nil, fmt.Errorf("spool_dir %s: lock: %w", dir, err)
	}
	opts := spool.Options{Dir: dir, Fsync: true}
	if fs := ownerFS(dir); fs != nil {
		opts.FS = fs
	}
	sp, err := spool.OpenExisting(opts)
	if err != nil {
		_ = lock.Close()
		return nil, nil, fmt.Errorf("spool_dir %s: %w", dir, err)
	}
	closeFn := func() error {
		err := sp.Close()
		if cerr := lock.Close(); err == nil { // closing releases the flock
			err = cerr
		}
		return err
	}
	return &control.SpoolAdmin{Spool: sp}, closeFn, nil
}

// spoolExists refuses a spool_dir that does not exist, naming the setting:
// run without the service's environment, the command would otherwise look
// at the default path and report an empty queue.
func spoolExists(dir string) error {
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("spool_dir %s does not exist (nothing was created): give the relay's spool_dir with --spool-dir, O365RELAY_SPOOL_DIR or --config, as the daemon has it", dir)
	case err != nil:
		return fmt.Errorf("spool_dir %s: %w", dir, err)
	case !fi.IsDir():
		return fmt.Errorf("spool_dir %s is not a directory", dir)
	}
	return nil
}

// ownerFS returns, when the command runs as root on a spool owned by
// another user (the service's), a file system that gives every file the
// command creates to that owner, so the service can still read its state
// files; nil otherwise.
func ownerFS(dir string) spool.FS {
	if os.Geteuid() != 0 {
		return nil
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok || st.Uid == 0 {
		return nil
	}
	return chownFS{uid: int(st.Uid), gid: int(st.Gid)}
}

type chownFS struct {
	spool.OSFS
	uid, gid int
}

func (c chownFS) OpenFile(name string, flag int, perm os.FileMode) (spool.File, error) {
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	if flag&os.O_CREATE != 0 {
		if err := f.Chown(c.uid, c.gid); err != nil {
			_ = f.Close() // the chown error is what matters
			return nil, err
		}
	}
	return f, nil
}
