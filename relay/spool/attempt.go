package spool

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"

	"github.com/o365relay/o365relay/relay/envelope"
)

// Attempt is a queued message opened once for one delivery attempt: its
// state is read, the attempt noted and the body streamed through the same
// open file (three opens and parses of the record before).
type Attempt struct {
	s      *Spool
	rec    *record
	legacy bool
	closed bool
	// Entry is the message's envelope and current state.
	Entry Entry
}

// Begin opens a queued message for an attempt. Like Get, it re-reads the
// state (the CLI may have changed it), and the daemon moves a record that
// does not parse to corrupt/ (the error then wraps ErrNotFound).
func (s *Spool) Begin(id envelope.ID) (*Attempt, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	rec, err := s.openRecord(s.queue, id, os.O_RDWR|os.O_APPEND)
	if errors.Is(err, ErrCorrupt) && s.lock != nil {
		if qerr := s.Quarantine(id, err); qerr != nil {
			return nil, errors.Join(err, qerr)
		}
		return nil, fmt.Errorf("%w: %s moved to corrupt/: %v", ErrNotFound, id, err)
	}
	if err != nil {
		return nil, err
	}
	legacy := s.isLegacy(id)
	return &Attempt{s: s, rec: rec, legacy: legacy,
		Entry: Entry{Envelope: rec.env, State: s.stateOf(s.queue, rec, legacy)}}, nil
}

// Note records st before the attempt, as NoteAttempt does: appended, not
// fsynced.
func (a *Attempt) Note(st State) error {
	b, err := appendStateBlock(nil, &st, a.rec.tail.msgEnd)
	if err == nil {
		_, err = a.rec.f.Write(b)
	}
	if err != nil {
		return fmt.Errorf("spool: state of %s: %w", a.rec.env.ID, err)
	}
	a.s.mu.Lock()
	if e, ok := a.s.index[a.rec.env.ID]; ok {
		e.self = true
		a.s.index[a.rec.env.ID] = e
	}
	a.s.mu.Unlock()
	return nil
}

// Body streams the body from the open record; like Spool.Body's, it fails
// with an error wrapping ErrCorrupt instead of io.EOF when length or
// checksum do not match. It is valid until Close.
func (a *Attempt) Body() (io.Reader, error) {
	h := crc32.New(castagnoli)
	hdr := make([]byte, a.rec.hl)
	if _, err := a.rec.f.ReadAt(hdr, 0); err != nil {
		return nil, err
	}
	h.Write(hdr)
	n := a.rec.tail.n
	sr := io.NewSectionReader(a.rec.f, a.rec.hl, n+trailerSize)
	return &bodyStream{r: sr, h: h, left: n, n: n}, nil
}

// Close closes the record; it may be called more than once.
func (a *Attempt) Close() error {
	if a.closed {
		return nil
	}
	a.closed = true
	return a.rec.f.Close()
}
