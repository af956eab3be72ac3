package spool

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/o365relay/o365relay/relay/envelope"
)

// record is an open record: envelope, where its parts lie, its state.
type record struct {
	f    File
	size int64
	env  *envelope.Envelope
	hl   int64 // header length: the body starts here
	tail tail
}

// openRecord opens dir/<id>.msg and parses its header and tail (not the
// body). The caller closes rec.f. A record that does not parse gives an
// error wrapping ErrCorrupt.
func (s *Spool) openRecord(dir string, id envelope.ID, flag int) (*record, error) {
	f, err := s.fs.OpenFile(s.msgPath(dir, id), flag, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, err
	}
	rec, err := parseRecord(f, id)
	if err != nil {
		_ = f.Close() // the parse error is what matters
		return nil, err
	}
	return rec, nil
}

func parseRecord(f File, id envelope.ID) (*record, error) {
	info, err := f.Stat()
	if err != nil {
		return nil, err
	}
	rec := &record{f: f, size: info.Size()}
	// One read covers the fixed header and a typical envelope.
	buf := make([]byte, min(rec.size, 1<<10))
	if _, err := io.ReadFull(f, buf); err != nil {
		return nil, corruptf("short header: %v", err)
	}
	env, hl, err := parseHeaderBuf(buf, f)
	if err != nil {
		return nil, err
	}
	if env.ID != id {
		return nil, corruptf("envelope id %q in record %q", env.ID, id)
	}
	rec.env, rec.hl = env, hl
	if rec.tail, err = readTail(f, rec.size, hl); err != nil {
		return nil, err
	}
	env.Size = rec.tail.n
	return rec, nil
}

// parseHeaderBuf parses the header from buf, reading the rest of a long
// envelope from r (positioned just after buf).
func parseHeaderBuf(buf []byte, r io.Reader) (*envelope.Envelope, int64, error) {
	if len(buf) < headerFixed {
		return nil, 0, corruptf("short header")
	}
	var rest io.Reader = bytesReader(buf)
	if n := int64(binary32(buf[8:12])); int64(len(buf)) < headerFixed+n {
		rest = io.MultiReader(bytesReader(buf), r)
	}
	return readHeader(rest, nil)
}

// Get returns the envelope and current state of a queued message, reading
// the record afresh (the CLI may have changed it).
func (s *Spool) Get(id envelope.ID) (*Entry, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	return s.get(s.queue, id, s.isLegacy(id))
}

func (s *Spool) isLegacy(id envelope.ID) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.index[id].legacy
}

func (s *Spool) get(dir string, id envelope.ID, legacy bool) (*Entry, error) {
	rec, err := s.openRecord(dir, id, os.O_RDONLY)
	if errors.Is(err, ErrCorrupt) && s.lock != nil && dir == s.queue {
		// The daemon sets aside what it cannot read: kept in corrupt/
		// for an operator, never retried as if whole.
		if qerr := s.Quarantine(id, err); qerr != nil {
			return nil, errors.Join(err, qerr)
		}
		return nil, fmt.Errorf("%w: %s moved to corrupt/: %v", ErrNotFound, id, err)
	}
	if err != nil {
		return nil, err
	}
	_ = rec.f.Close() // read-only: a Close error cannot lose data
	return &Entry{Envelope: rec.env, State: s.stateOf(dir, rec, legacy)}, nil
}

// stateOf is the record's newest state block, else (a version-1 record) its
// .state file, else a fresh state.
func (s *Spool) stateOf(dir string, rec *record, legacy bool) State {
	if rec.tail.state != nil {
		return *rec.tail.state
	}
	if legacy {
		return s.readLegacyState(dir, rec.env.ID)
	}
	return State{}
}

// readLegacyState reads a version-1 state file.
func (s *Spool) readLegacyState(dir string, id envelope.ID) State {
	var st State
	f, err := s.fs.OpenFile(s.statePath(dir, id), os.O_RDONLY, 0)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			s.log.Error("cannot read state; treating as fresh", zap.String("id", string(id)), zap.Error(err))
		}
		return State{}
	}
	defer f.Close() // read-only
	b, err := io.ReadAll(io.LimitReader(f, maxEnvelope))
	if err == nil {
		err = json.Unmarshal(b, &st)
	}
	if err != nil {
		// The message itself is intact; losing its retry counters is the
		// lesser evil (it may be retried early, it is not lost).
		s.log.Error("state file does not parse; treating as fresh", zap.String("id", string(id)), zap.Error(err))
		return State{}
	}
	return st
}

// Body streams a queued message's body. The reader returns an error wrapping
// ErrCorrupt instead of io.EOF when length or checksum do not match, so a
// forwarder aborts the transaction instead of sending the final dot.
func (s *Spool) Body(id envelope.ID) (io.ReadCloser, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	rec, err := s.openRecord(s.queue, id, os.O_RDONLY)
	if err != nil {
		return nil, err
	}
	if _, err := rec.f.Seek(0, io.SeekStart); err != nil {
		_ = rec.f.Close() // read-only
		return nil, err
	}
	h := crc32.New(castagnoli)
	if _, _, err := readHeader(rec.f, h); err != nil {
		_ = rec.f.Close() // read-only
		return nil, err
	}
	return &bodyReadCloser{bodyStream{r: rec.f, h: h, left: rec.tail.n, n: rec.tail.n}, rec.f}, nil
}

type bodyReadCloser struct {
	bodyStream
	f File
}

func (b *bodyReadCloser) Close() error { return b.f.Close() }

// bodyStream reads a body of n bytes and the trailer after it from r,
// checking both.
type bodyStream struct {
	r    io.Reader
	h    hash.Hash32
	left int64
	n    int64
	err  error
}

func (b *bodyStream) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.left == 0 {
		t := make([]byte, trailerSize)
		if _, err := io.ReadFull(b.r, t); err != nil {
			b.err = corruptf("trailer: %v", err)
			return 0, b.err
		}
		tn, sum, err := parseTrailer(t)
		switch {
		case err != nil:
			b.err = err
		case tn != b.n:
			b.err = corruptf("length mismatch")
		case sum != b.h.Sum32():
			b.err = corruptf("checksum mismatch")
		default:
			b.err = io.EOF
		}
		return 0, b.err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.h.Write(p[:n])
	b.left -= int64(n)
	if err == io.EOF && b.left > 0 {
		b.err = corruptf("truncated body")
		return n, b.err
	}
	if err != nil && err != io.EOF {
		return n, err
	}
	return n, nil
}

// List returns the queued messages (envelope and state), oldest first,
// reading headers and tails only, never bodies.
func (s *Spool) List() ([]Entry, error) { return s.list(s.queue) }

// ListFailed returns the messages in failed/.
func (s *Spool) ListFailed() ([]Entry, error) { return s.list(s.fail) }

func (s *Spool) list(dir string) ([]Entry, error) {
	des, err := s.fs.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	var ids []envelope.ID
	legacy := map[envelope.ID]bool{}
	for _, de := range des {
		if id, ok := strings.CutSuffix(de.Name(), ".msg"); ok && envelope.ID(id).Valid() {
			ids = append(ids, envelope.ID(id))
		}
		if id, ok := strings.CutSuffix(de.Name(), ".state"); ok {
			legacy[envelope.ID(id)] = true
		}
	}
	sortIDs(ids)
	var out []Entry
	for _, id := range ids {
		e, err := s.get(dir, id, legacy[id])
		if errors.Is(err, ErrNotFound) {
			continue // removed meanwhile
		}
		if err != nil {
			s.log.Warn("cannot read queued message", zap.String("id", string(id)), zap.Error(err))
			continue
		}
		out = append(out, *e)
	}
	return out, nil
}

// Rescan re-reads the listing of queue/ and brings the index up to date
// with changes made by the CLI. It returns the IDs that are new or whose
// record (or version-1 state file) changed since the last Rescan other
// than by this process's own writes — the scheduler looks at those again
// — and the IDs that are gone. (A CLI change that lands between one of
// our own writes and the next Rescan is taken for ours: that message
// keeps its schedule, nothing is lost.) The listing is read in batches
// and compared with the index in place: a queue of 100,000 costs one
// lstat per record and no copy of the listing.
func (s *Spool) Rescan() (changed, gone []envelope.ID, err error) {
	s.mu.Lock()
	s.gen++
	gen := s.gen
	s.mu.Unlock()
	var states []envelope.ID
	err = s.fs.ReadDirBatches(s.queue, func(des []os.DirEntry) {
		type seen struct {
			id        envelope.ID
			size, mod int64
		}
		var batch []seen
		for _, de := range des {
			name := de.Name()
			if id, ok := strings.CutSuffix(name, ".state"); ok && envelope.ID(id).Valid() {
				states = append(states, envelope.ID(id))
				continue
			}
			id, ok := strings.CutSuffix(name, ".msg")
			if !ok || !envelope.ID(id).Valid() {
				continue
			}
			info, err := de.Info()
			if err != nil {
				continue // removed meanwhile
			}
			batch = append(batch, seen{envelope.ID(id), info.Size(), info.ModTime().UnixNano()})
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, x := range batch {
			e, ok := s.index[x.id]
			if _, p := s.putting[x.id]; !ok && p {
				continue // its Put adds it (see putting)
			}
			if !ok {
				s.add(x.id, x.size, time.Unix(0, x.mod))
				changed = append(changed, x.id)
				continue
			}
			if e.mod != x.mod {
				if !e.self {
					changed = append(changed, x.id)
				}
				e.mod = x.mod
			}
			e.self, e.gen = false, gen
			s.index[x.id] = e
		}
	})
	if err != nil {
		return nil, nil, fmt.Errorf("spool: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range states {
		if e, ok := s.index[id]; ok && !e.legacy {
			// A .state file written by an older CLI beside us.
			e.legacy = true
			s.index[id] = e
			changed = append(changed, id)
		}
	}
	for id, e := range s.index {
		if e.gen != gen {
			gone = append(gone, id)
		}
	}
	for _, id := range gone {
		s.drop(id)
	}
	s.publish()
	sortIDs(changed)
	return changed, gone, nil
}
