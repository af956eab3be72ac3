package doctor

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
)

// Check 7: the spool directory is writable and the listen addresses are
// free or held by this relay.

func (d *doctor) checkSpool() {
	dir := d.cfg.SpoolDir
	c := Check{Step: stepLocal, Name: "spool", Target: dir}
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		parent := existingParent(dir)
		if werr := syscall.Access(parent, 2 /* W_OK */); werr != nil {
			c.Status = Fail
			c.Message = fmt.Sprintf("%s does not exist and %s is not writable for this user: %v", dir, parent, werr)
			c.Fix = fmt.Sprintf("mkdir -p %s && chown <relay user> %s && chmod 700 %s, or set O365RELAY_SPOOL_DIR to a directory this user can write (systemd: StateDirectory=).", dir, dir, dir)
		} else {
			c.Status = OK
			c.Message = fmt.Sprintf("%s does not exist yet; the relay creates it (%s is writable)", dir, parent)
		}
	case err != nil:
		c.Status, c.Message = Fail, err.Error()
		c.Fix = "Set O365RELAY_SPOOL_DIR to a directory this user can write."
	case !fi.IsDir():
		c.Status, c.Message = Fail, dir+" is not a directory"
		c.Fix = "Set O365RELAY_SPOOL_DIR to a directory."
	default:
		// Write, sync and remove a file where the spool writes (tmp/, if
		// the spool was opened before): permission, read-only mounts and a
		// full disk all show here.
		where := dir
		if st, err := os.Stat(filepath.Join(dir, "tmp")); err == nil && st.IsDir() {
			where = filepath.Join(dir, "tmp")
		}
		if err := writeProbe(where); err != nil {
			c.Status = Fail
			c.Message = fmt.Sprintf("cannot write in %s: %v", where, err)
			c.Fix = fmt.Sprintf("chown -R <relay user> %s (or fix the mount / free space), or set O365RELAY_SPOOL_DIR to a directory this user can write.", dir)
		} else {
			c.Status = OK
			c.Message = dir + " is writable"
		}
	}
	d.add(c)
}

func writeProbe(dir string) (err error) {
	f, err := os.CreateTemp(dir, ".doctor-*")
	if err != nil {
		return err
	}
	defer func() {
		if rerr := os.Remove(f.Name()); err == nil {
			err = rerr
		}
	}()
	if _, err := f.Write([]byte("o365relay doctor\n")); err != nil {
		_ = f.Close() // the write error is the one to report
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

func existingParent(dir string) string {
	p := filepath.Clean(dir)
	for {
		if _, err := os.Stat(p); err == nil {
			return p
		}
		next := filepath.Dir(p)
		if next == p {
			return p
		}
		p = next
	}
}

// checkListeners binds each listen address for a moment. A taken address is
// fine when this relay holds it: the spool's lock file is then locked by
// the running daemon (relay/spool takes an exclusive flock on spool_dir/lock
// for as long as it runs).
func (d *doctor) checkListeners() {
	type addr struct{ key, env, value string }
	addrs := []addr{{"listen", "O365RELAY_LISTEN", d.cfg.Listen}}
	if d.cfg.AdminListen != "" {
		addrs = append(addrs, addr{"admin_listen", "O365RELAY_ADMIN_LISTEN", d.cfg.AdminListen})
	}
	running := spoolLocked(d.cfg.SpoolDir)
	for _, a := range addrs {
		c := Check{Step: stepLocal, Name: "listener", Target: a.value}
		ln, err := net.Listen("tcp", a.value)
		switch {
		case err == nil:
			if cerr := ln.Close(); cerr != nil {
				c.Status, c.Message = Warn, cerr.Error()
				break
			}
			c.Status = OK
			c.Message = fmt.Sprintf("%s %s is free", a.key, a.value)
		case errors.Is(err, syscall.EADDRINUSE) && running:
			c.Status = OK
			c.Message = fmt.Sprintf("%s %s is held by the running relay (its spool %s is locked)", a.key, a.value, d.cfg.SpoolDir)
		case errors.Is(err, syscall.EADDRINUSE):
			c.Status = Fail
			c.Message = fmt.Sprintf("%s %s is in use by another program (no relay holds the spool %s)", a.key, a.value, d.cfg.SpoolDir)
			c.Fix = fmt.Sprintf("Find it with: ss -ltnp 'sport = :%s'; stop it, or set %s to a free address.", port(a.value), a.env)
		default:
			c.Status = Fail
			c.Message = fmt.Sprintf("%s %s: %v", a.key, a.value, err)
			c.Fix = fmt.Sprintf("Set %s to an address of this host (ports below 1024 need CAP_NET_BIND_SERVICE).", a.env)
		}
		d.add(c)
	}
}

func port(hostport string) string {
	_, p, err := net.SplitHostPort(hostport)
	if err != nil {
		return hostport
	}
	return p
}

// spoolLocked reports whether a daemon holds the spool's lock. The lock is
// tried without blocking and released at once; the file is not created.
func spoolLocked(dir string) bool {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR, 0)
	if err != nil {
		return false
	}
	defer func() { _ = f.Close() }() // read-only use; closing releases our lock
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return errors.Is(err, syscall.EWOULDBLOCK)
	}
	_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN) // Close would release it too
	return false
}
