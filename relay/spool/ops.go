package spool

import (
	"errors"
	"fmt"
	"os"

	"github.com/o365relay/o365relay/relay/envelope"
)

// appendState appends a state block to dir/<id>.msg; with durable it is
// fsynced before appendState returns. The record's message part is not
// touched. A record written by the previous version keeps its .state file
// until a durable block supersedes it (removed then, best effort: the
// block wins over the file either way).
func (s *Spool) appendState(dir string, id envelope.ID, st State, durable, legacy bool) error {
	rec, err := s.openRecord(dir, id, os.O_RDWR|os.O_APPEND)
	if err != nil {
		return err
	}
	b, err := appendStateBlock(nil, &st, rec.tail.msgEnd)
	if err == nil {
		// O_APPEND: two writers (the daemon, the CLI) never overwrite
		// each other's block; one torn by an earlier crash stays behind
		// the new one, harmlessly (readTail reads from the end).
		_, err = rec.f.Write(b)
	}
	if err == nil && durable && s.opts.Fsync {
		err = rec.f.Sync()
	}
	if cerr := rec.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if dir == s.queue && s.lock != nil {
		s.mu.Lock()
		if e, ok := s.index[id]; ok {
			e.self = true
			s.index[id] = e
		}
		s.mu.Unlock()
	}
	if legacy && durable {
		if err := s.fs.Remove(s.statePath(dir, id)); err == nil || errors.Is(err, os.ErrNotExist) {
			s.mu.Lock()
			if e, ok := s.index[id]; ok && dir == s.queue {
				e.legacy = false
				s.index[id] = e
			}
			s.mu.Unlock()
		}
	}
	return nil
}

// SetState durably records the state of a queued message: appended to its
// record and fsynced.
func (s *Spool) SetState(id envelope.ID, st State) error { return s.setState(id, st, true) }

// NoteAttempt records the state of a queued message without waiting for
// the disk: it survives the relay's own crash (the page cache keeps it),
// and a power failure loses at most this note, so the attempt is made
// again. Delivery notes each attempt before it starts (Attempt.Note does
// the same on an open record), so a message whose delivery kills the
// process is not retried in a hot loop.
func (s *Spool) NoteAttempt(id envelope.ID, st State) error { return s.setState(id, st, false) }

func (s *Spool) setState(id envelope.ID, st State, durable bool) error {
	if err := checkID(id); err != nil {
		return err
	}
	if err := s.appendState(s.queue, id, st, durable, s.isLegacy(id)); err != nil {
		if errors.Is(err, ErrNotFound) {
			return err
		}
		return fmt.Errorf("spool: state of %s: %w", id, err)
	}
	return nil
}

// Remove deletes a delivered message. It returns once the record is gone
// from queue/ (unlinked, or kept in free/ for the next Put to reuse); the
// directory fsync that makes the removal durable is shared with the next
// commit (a removal lost to a power failure only means the
// message is delivered again). A message already gone (deleted by the CLI)
// is not an error.
func (s *Spool) Remove(id envelope.ID) error {
	if err := checkID(id); err != nil {
		return err
	}
	s.mu.Lock()
	e := s.index[id]
	s.mu.Unlock()
	if err := s.retire(s.queue, id, e.size); err != nil {
		return fmt.Errorf("spool: remove %s: %w", id, err)
	}
	if e.legacy {
		if err := s.fs.Remove(s.statePath(s.queue, id)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("spool: remove %s: %w", id, err)
		}
	}
	s.mu.Lock()
	s.drop(id)
	s.publish()
	s.mu.Unlock()
	s.syncQueueLater()
	return nil
}

func (s *Spool) removeFiles(dir string, id envelope.ID, legacy bool) error {
	// The record goes first: a crash in between leaves an orphaned
	// version-1 .state, which Open discards.
	if err := s.fs.Remove(s.msgPath(dir, id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("spool: remove %s: %w", id, err)
	}
	if legacy {
		if err := s.fs.Remove(s.statePath(dir, id)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("spool: remove %s: %w", id, err)
		}
	}
	return nil
}

// Fail moves a message to failed/ with its final state (st.Final and the
// per-recipient replies say why): the state is appended and fsynced first,
// so the record in failed/ always has its reasons.
func (s *Spool) Fail(id envelope.ID, st State) error {
	if err := checkID(id); err != nil {
		return err
	}
	legacy := s.isLegacy(id)
	if err := s.appendState(s.queue, id, st, true, legacy); err != nil {
		if errors.Is(err, ErrNotFound) {
			return err
		}
		return fmt.Errorf("spool: fail %s: %w", id, err)
	}
	if err := s.fs.Rename(s.msgPath(s.queue, id), s.msgPath(s.fail, id)); err != nil {
		return fmt.Errorf("spool: fail %s: %w", id, err)
	}
	if err := s.syncDir(s.fail); err != nil {
		return fmt.Errorf("spool: fail %s: %w", id, err)
	}
	if legacy {
		if err := s.fs.Remove(s.statePath(s.queue, id)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("spool: fail %s: %w", id, err)
		}
	}
	s.mu.Lock()
	s.drop(id)
	s.publish()
	s.mu.Unlock()
	return s.syncQueue()
}

// Retry makes a message due now. A queued message gets NextAttempt = now;
// a failed one is moved back into queue/ with fresh counters (recipients
// already delivered stay delivered, failed ones become pending).
func (s *Spool) Retry(id envelope.ID) error {
	if err := checkID(id); err != nil {
		return err
	}
	now := s.opts.Clock()
	if e, err := s.get(s.queue, id, s.legacyIn(s.queue, id)); err == nil {
		st := e.State
		st.NextAttempt = now
		return s.appendState(s.queue, id, st, true, s.legacyIn(s.queue, id))
	}
	legacy := s.legacyIn(s.fail, id)
	old, err := s.get(s.fail, id, legacy)
	if err != nil {
		return err
	}
	st := State{NextAttempt: now}
	for r, rs := range old.State.Recipients {
		if rs.Status == Delivered {
			st.Set(r, Delivered, rs.Reply)
		}
	}
	// The fresh state first, durably, in failed/: the record must never
	// appear in queue/ with its old final state.
	if err := s.appendState(s.fail, id, st, true, legacy); err != nil {
		return fmt.Errorf("spool: retry %s: %w", id, err)
	}
	if err := s.fs.Rename(s.msgPath(s.fail, id), s.msgPath(s.queue, id)); err != nil {
		return fmt.Errorf("spool: retry %s: %w", id, err)
	}
	if err := s.syncQueue(); err != nil {
		return fmt.Errorf("spool: retry %s: %w", id, err)
	}
	if info, err := s.fs.Stat(s.msgPath(s.queue, id)); err == nil {
		s.mu.Lock()
		s.add(id, info.Size(), info.ModTime())
		s.publish()
		s.mu.Unlock()
	}
	return s.syncDir(s.fail)
}

// legacyIn reports whether dir holds a version-1 state file for id (the
// index knows only queue/, and the CLI may run beside an older daemon).
func (s *Spool) legacyIn(dir string, id envelope.ID) bool {
	_, err := s.fs.Stat(s.statePath(dir, id))
	return err == nil
}

// Delete removes a message from queue/ or failed/. If the daemon is
// delivering it, its later Remove finds nothing — harmless.
func (s *Spool) Delete(id envelope.ID) error {
	if err := checkID(id); err != nil {
		return err
	}
	found := false
	for _, dir := range []string{s.queue, s.fail} {
		if _, err := s.fs.Stat(s.msgPath(dir, id)); err == nil {
			found = true
			if err := s.removeFiles(dir, id, true); err != nil {
				return err
			}
			if err := s.syncDir(dir); err != nil {
				return err
			}
		}
	}
	if !found {
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	s.mu.Lock()
	s.drop(id)
	s.publish()
	s.mu.Unlock()
	return nil
}

// Quarantine moves a queued message whose record turned out corrupt (it
// does not parse, or its body failed the checksum during delivery) to
// corrupt/, where an operator can inspect it: it is never deleted, and
// never retried as if whole.
func (s *Spool) Quarantine(id envelope.ID, why error) error {
	if err := checkID(id); err != nil {
		return err
	}
	if _, err := s.fs.Stat(s.msgPath(s.queue, id)); err != nil {
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	s.quarantine(string(id)+".msg", why)
	if _, err := s.fs.Stat(s.msgPath(s.queue, id)); err == nil {
		return fmt.Errorf("spool: could not move %s to corrupt/", id)
	}
	if _, err := s.fs.Stat(s.statePath(s.queue, id)); err == nil {
		s.quarantine(string(id)+".state", why)
	}
	s.mu.Lock()
	s.drop(id)
	s.publish()
	s.mu.Unlock()
	if err := s.syncDir(s.corrupt); err != nil {
		return err
	}
	return s.syncQueue()
}
