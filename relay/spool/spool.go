// Package spool owns the relay's durable on-disk queue: the promise behind
// every "250" the relay gives a client.
//
// A message is durable when Put returns nil: its record (envelope, body,
// length and CRC-32C) was written to tmp/, fsynced, renamed into queue/ and
// queue/ was fsynced — Postfix's contract (style.md "Durability contract").
// Concurrent Puts share the directory fsync (group commit). The mutable
// delivery state lives beside the record in queue/<id>.state, replaced
// atomically, so a crash leaves either the old or the new state. At Open,
// records that do not parse are moved to corrupt/ (never deleted) and stale
// tmp/ files are removed. Messages that failed for good are kept in failed/.
//
// One daemon owns a spool (flock on Dir/lock); the queue CLI uses OpenAdmin,
// which takes no lock, so Retry and Delete work beside a running daemon: the
// daemon re-reads a state file before each attempt and rescans queue/.
package spool

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"

	"github.com/o365relay/o365relay/relay/message"
	"github.com/o365relay/o365relay/relay/reply"
)

// TmpMaxAge is how old a tmp/ file must be before Open removes it. Only one
// daemon writes a spool, but a queue CLI may be writing a state file beside
// it, so young files are left alone.
const TmpMaxAge = time.Hour

// Options configure a Spool.
type Options struct {
	Dir string
	// Fsync makes Put, SetState and Remove durable. Callers set it to true;
	// false exists only so benchmarks can show what durability costs.
	Fsync    bool
	MaxItems int   // 0 = unlimited
	MaxBytes int64 // 0 = unlimited
	Clock    func() time.Time
	Logger   *zap.Logger
	FS       FS // nil = OSFS
}

// Spool is an open spool directory. Its methods are safe for concurrent use.
type Spool struct {
	opts             Options
	fs               FS
	log              *zap.Logger
	tmp, queue, fail string
	corrupt          string
	lock             *os.File
	commits          chan chan error
	stop, stopped    chan struct{}
	closeOnce        sync.Once
	closeErr         error

	mu       sync.Mutex
	index    map[message.ID]indexEntry
	reserved int // Puts in progress, counted against MaxItems
	bytes    int64
	oldest   message.ID
}

type indexEntry struct {
	size     int64
	received time.Time
}

// Open creates the layout, takes the daemon lock, quarantines what does not
// parse, removes stale tmp/ files and starts the group committer.
func Open(opts Options) (*Spool, error) {
	return open(opts, true)
}

// OpenAdmin opens a spool for the queue CLI: no lock, no recovery, no tmp/
// cleanup — it may run beside the daemon. Put is not for it.
func OpenAdmin(opts Options) (*Spool, error) {
	return open(opts, false)
}

func open(opts Options, daemon bool) (*Spool, error) {
	if opts.Dir == "" {
		return nil, errors.New("spool: Dir is required")
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.FS == nil {
		opts.FS = OSFS{}
	}
	s := &Spool{
		opts: opts, fs: opts.FS, log: opts.Logger.Named("spool"),
		tmp: filepath.Join(opts.Dir, "tmp"), queue: filepath.Join(opts.Dir, "queue"),
		fail: filepath.Join(opts.Dir, "failed"), corrupt: filepath.Join(opts.Dir, "corrupt"),
		commits: make(chan chan error, 64), stop: make(chan struct{}), stopped: make(chan struct{}),
		index: map[message.ID]indexEntry{},
	}
	for _, d := range []string{s.tmp, s.queue, s.fail, s.corrupt} {
		if err := s.fs.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("spool: %w", err)
		}
	}
	if daemon {
		f, err := os.OpenFile(filepath.Join(opts.Dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("spool: lock: %w", err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			_ = f.Close() // the lock error is what matters
			return nil, fmt.Errorf("spool: %s is in use by another daemon: %w", opts.Dir, err)
		}
		s.lock = f
		if err := s.recover(); err != nil {
			_ = f.Close()
			return nil, err
		}
	} else if err := s.loadIndex(); err != nil {
		return nil, err
	}
	go s.committer()
	return s, nil
}

// recover quarantines unparseable records and removes old tmp/ files. Each
// record is checked in full (checksum included), streaming, so a bit flip is
// found at start rather than mid-delivery; that costs one sequential read of
// the queue at start.
func (s *Spool) recover() error {
	now := s.opts.Clock()
	tmps, err := s.fs.ReadDir(s.tmp)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	for _, de := range tmps {
		info, err := de.Info()
		if err != nil {
			continue // vanished meanwhile
		}
		if now.Sub(info.ModTime()) < TmpMaxAge {
			continue
		}
		if err := s.fs.Remove(filepath.Join(s.tmp, de.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("cannot remove stale tmp file", zap.String("file", de.Name()), zap.Error(err))
		} else {
			s.log.Info("removed stale tmp file", zap.String("file", de.Name()))
		}
	}
	des, err := s.fs.ReadDir(s.queue)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	moved := false
	for _, de := range des {
		name := de.Name()
		id, ok := strings.CutSuffix(name, ".msg")
		if !ok {
			if sid, isState := strings.CutSuffix(name, ".state"); isState && message.ID(sid).Valid() {
				continue // checked with its .msg
			}
			if strings.HasPrefix(name, ".") { // our own atomic-write temporaries
				if info, err := de.Info(); err == nil && now.Sub(info.ModTime()) >= TmpMaxAge {
					_ = s.fs.Remove(filepath.Join(s.queue, name)) // best effort: an abandoned state write
				}
				continue
			}
			s.quarantine(name, errors.New("unexpected file"))
			moved = true
			continue
		}
		p := filepath.Join(s.queue, name)
		env, err := s.verify(p)
		if err == nil && string(env.ID) != id {
			err = corruptf("envelope id %q in file %q", env.ID, name)
		}
		if err != nil {
			s.quarantine(name, err)
			if _, serr := s.fs.Stat(filepath.Join(s.queue, id+".state")); serr == nil {
				s.quarantine(id+".state", err)
			}
			moved = true
			continue
		}
		s.add(env)
	}
	// Orphaned state files (their .msg was removed between two steps).
	for _, de := range des {
		if sid, ok := strings.CutSuffix(de.Name(), ".state"); ok {
			if _, known := s.index[message.ID(sid)]; !known {
				if _, err := s.fs.Stat(filepath.Join(s.queue, de.Name())); err == nil {
					_ = s.fs.Remove(filepath.Join(s.queue, de.Name())) // best effort: it describes nothing
				}
			}
		}
	}
	if moved {
		if err := s.syncDir(s.queue); err != nil {
			return fmt.Errorf("spool: %w", err)
		}
		if err := s.syncDir(s.corrupt); err != nil {
			return fmt.Errorf("spool: %w", err)
		}
	}
	s.publish()
	return nil
}

func (s *Spool) quarantine(name string, why error) {
	quarantined.Inc()
	err := s.fs.Rename(filepath.Join(s.queue, name), filepath.Join(s.corrupt, name))
	s.log.Error("queue file does not parse; moved to corrupt/", zap.String("file", name), zap.NamedError("reason", why), zap.NamedError("move_error", err))
}

// loadIndex builds the index from headers only (OpenAdmin).
func (s *Spool) loadIndex() error {
	des, err := s.fs.ReadDir(s.queue)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	for _, de := range des {
		id, ok := strings.CutSuffix(de.Name(), ".msg")
		if !ok || !message.ID(id).Valid() {
			continue
		}
		if env, err := s.readEnvelope(filepath.Join(s.queue, de.Name())); err == nil {
			s.add(env)
		}
	}
	s.publish()
	return nil
}

func (s *Spool) verify(p string) (*message.Envelope, error) {
	f, err := s.fs.OpenFile(p, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close() // read-only: a Close error cannot lose data
	info, err := f.Stat()
	if err != nil {
		return nil, err
	}
	return Decode(f, info.Size(), nil)
}

// readEnvelope reads header and trailer only, not the body.
func (s *Spool) readEnvelope(p string) (*message.Envelope, error) {
	f, err := s.fs.OpenFile(p, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close() // read-only
	info, err := f.Stat()
	if err != nil {
		return nil, err
	}
	env, hl, err := readHeader(io.LimitReader(f, info.Size()), nil)
	if err != nil {
		return nil, err
	}
	if info.Size()-hl < trailerSize {
		return nil, corruptf("truncated")
	}
	if _, err := f.Seek(info.Size()-trailerSize, io.SeekStart); err != nil {
		return nil, err
	}
	t := make([]byte, trailerSize)
	if _, err := io.ReadFull(f, t); err != nil {
		return nil, corruptf("trailer: %v", err)
	}
	n, _, err := parseTrailer(t)
	if err != nil {
		return nil, err
	}
	if n != info.Size()-hl-trailerSize {
		return nil, corruptf("length mismatch")
	}
	env.Size = n
	return env, nil
}

// add and remove keep Stats incremental. Callers hold mu or are in open.
func (s *Spool) add(env *message.Envelope) {
	if _, ok := s.index[env.ID]; ok {
		return
	}
	s.index[env.ID] = indexEntry{size: env.Size, received: env.Received}
	s.bytes += env.Size
	if s.oldest == "" || env.ID < s.oldest {
		s.oldest = env.ID
	}
}

func (s *Spool) drop(id message.ID) {
	e, ok := s.index[id]
	if !ok {
		return
	}
	delete(s.index, id)
	s.bytes -= e.size
	if id == s.oldest {
		// IDs sort by arrival time; a linear scan only when the oldest
		// leaves, not on every Stats call.
		s.oldest = ""
		for k := range s.index {
			if s.oldest == "" || k < s.oldest {
				s.oldest = k
			}
		}
	}
}

func (s *Spool) publish() {
	itemsGauge.Set(float64(len(s.index)))
	bytesGauge.Set(float64(s.bytes))
	if s.oldest == "" {
		oldestGauge.Set(0)
	} else {
		oldestGauge.Set(float64(s.index[s.oldest].received.Unix()))
	}
}

// Stats reports queue depth, body bytes and the oldest receipt time (zero
// when empty), from the in-memory index.
func (s *Spool) Stats() (items int, bytes int64, oldest time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.oldest != "" {
		oldest = s.index[s.oldest].received
	}
	return len(s.index), s.bytes, oldest
}

// committer batches directory fsyncs: every request that arrived while the
// previous fsync ran shares the next one (group commit). File fsyncs stay
// per file, in the callers.
func (s *Spool) committer() {
	defer close(s.stopped)
	for {
		var batch []chan error
		select {
		case <-s.stop:
			return
		case c := <-s.commits:
			batch = append(batch, c)
		}
	drain:
		for {
			select {
			case c := <-s.commits:
				batch = append(batch, c)
			default:
				break drain
			}
		}
		err := s.fs.SyncDir(s.queue)
		for _, c := range batch {
			c <- err
		}
	}
}

// syncQueue makes completed renames/removals in queue/ durable.
func (s *Spool) syncQueue() error {
	if !s.opts.Fsync {
		return nil
	}
	c := make(chan error, 1)
	select {
	case s.commits <- c:
	case <-s.stop:
		return errors.New("spool closed")
	}
	select {
	case err := <-c:
		return err
	case <-s.stopped:
		return errors.New("spool closed")
	}
}

func (s *Spool) syncDir(d string) error {
	if !s.opts.Fsync {
		return nil
	}
	return s.fs.SyncDir(d)
}

var (
	enhStorage = smtp.EnhancedCode{4, 3, 1} // RFC 3463 X.3.1 mail system full
	enhLocal   = smtp.EnhancedCode{4, 3, 0} // RFC 3463 X.3.0 other mail system status
)

func storageError(err error) *reply.Error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		putFailures.WithLabelValues("nospace").Inc()
		return reply.Wrap(err, 452, enhStorage, "Insufficient system storage")
	}
	putFailures.WithLabelValues("io").Inc()
	return reply.Wrap(err, 451, enhLocal, "Local error in processing; message not accepted, try again later")
}

func limitError(why string) *reply.Error {
	putFailures.WithLabelValues("limit").Inc()
	return reply.Wrap(errors.New(why), 452, enhStorage, "Insufficient system storage")
}

// bodyReader remembers whether an error came from the body (the client)
// rather than from the disk.
type bodyReader struct {
	r   io.Reader
	err error
	n   int64
	max int64 // 0 = unlimited
}

var errTooBig = errors.New("spool byte limit reached")

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.n += int64(n)
	if err != nil && err != io.EOF {
		b.err = err
	}
	if b.max > 0 && b.n > b.max {
		b.err = errTooBig
		return n, errTooBig
	}
	return n, err
}

// Put makes the message durable under queue/<env.ID>.msg and sets env.Size.
// It returns nil only when the record is written, fsynced, renamed and the
// directory fsynced. Otherwise nothing is left in queue/ or tmp/ and the
// error is a *reply.Error (452 4.3.1 for full disks and limits, 451 4.3.0
// for other I/O faults) — or, if the body reader failed, that reader's own
// error, so the client sees the reply intake chose (e.g. 552 5.3.4).
func (s *Spool) Put(env *message.Envelope, body io.Reader) (err error) {
	start := time.Now()
	if !env.ID.Valid() {
		return reply.Wrap(fmt.Errorf("invalid id %q", env.ID), 451, enhLocal, "Local error in processing")
	}
	s.mu.Lock()
	if s.opts.MaxItems > 0 && len(s.index)+s.reserved >= s.opts.MaxItems {
		s.mu.Unlock()
		return limitError("spool item limit reached")
	}
	var room int64
	if s.opts.MaxBytes > 0 {
		room = s.opts.MaxBytes - s.bytes
		if room <= 0 {
			s.mu.Unlock()
			return limitError("spool byte limit reached")
		}
	}
	s.reserved++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.reserved--
		s.mu.Unlock()
	}()

	env.Size = 0
	hdr, err := encodeHeader(env)
	if err != nil {
		return reply.Wrap(err, 451, enhLocal, "Local error in processing")
	}
	tmp := filepath.Join(s.tmp, string(env.ID))
	final := filepath.Join(s.queue, string(env.ID)+".msg")
	f, err := s.fs.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return storageError(err)
	}
	closed, renamed := false, false
	defer func() {
		if err == nil {
			return
		}
		if !closed {
			_ = f.Close() // already failing; the file is removed next
		}
		if renamed {
			_ = s.fs.Remove(final) // best effort: a leftover is a duplicate, not a loss
		} else {
			_ = s.fs.Remove(tmp)
		}
	}()
	h := crc32.New(castagnoli)
	w := io.MultiWriter(f, h)
	if _, err = w.Write(hdr); err != nil {
		return storageError(err)
	}
	br := &bodyReader{r: body, max: room}
	buf := make([]byte, copyBufferSz)
	n, err := io.CopyBuffer(w, struct{ io.Reader }{br}, buf)
	if br.err == errTooBig {
		return limitError("spool byte limit reached")
	}
	if br.err != nil {
		putFailures.WithLabelValues("body").Inc()
		err = br.err
		return err
	}
	if err != nil {
		return storageError(err)
	}
	if _, err = f.Write(encodeTrailer(n, h.Sum32())); err != nil {
		return storageError(err)
	}
	if s.opts.Fsync {
		if err = f.Sync(); err != nil {
			return storageError(err)
		}
	}
	closed = true
	if err = f.Close(); err != nil {
		return storageError(err)
	}
	if err = s.fs.Rename(tmp, final); err != nil {
		return storageError(err)
	}
	renamed = true
	if err = s.syncQueue(); err != nil {
		return storageError(err)
	}
	env.Size = n
	s.mu.Lock()
	s.add(env)
	s.publish()
	s.mu.Unlock()
	putDuration.Observe(time.Since(start).Seconds())
	return nil
}

func (s *Spool) msgPath(dir string, id message.ID) string {
	return filepath.Join(dir, string(id)+".msg")
}
func (s *Spool) statePath(dir string, id message.ID) string {
	return filepath.Join(dir, string(id)+".state")
}

// ErrNotFound is returned for an ID that is not in the spool (any more).
var ErrNotFound = errors.New("spool: no such message")

func checkID(id message.ID) error {
	if !id.Valid() {
		return fmt.Errorf("%w: invalid id %q", ErrNotFound, id)
	}
	return nil
}

func (s *Spool) readState(dir string, id message.ID) State {
	var st State
	b, err := s.readFile(s.statePath(dir, id))
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			s.log.Error("cannot read state; treating as fresh", zap.String("id", string(id)), zap.Error(err))
		}
		return State{}
	}
	if err := json.Unmarshal(b, &st); err != nil {
		// The message itself is intact; losing its retry counters is the
		// lesser evil (it may be retried early, it is not lost).
		s.log.Error("state file does not parse; treating as fresh", zap.String("id", string(id)), zap.Error(err))
		return State{}
	}
	return st
}

func (s *Spool) readFile(p string) ([]byte, error) {
	f, err := s.fs.OpenFile(p, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close() // read-only
	var b bytes.Buffer
	if _, err := io.Copy(&b, io.LimitReader(f, maxEnvelope)); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// writeState replaces dir/<id>.state atomically: write a dot-temporary in
// the same directory, fsync, rename over, then fsync the directory.
func (s *Spool) writeState(dir string, id message.ID, st State) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, fmt.Sprintf(".%s.state.%d", id, time.Now().UnixNano()))
	f, err := s.fs.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err = f.Write(b); err == nil && s.opts.Fsync {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = s.fs.Rename(tmp, s.statePath(dir, id))
	}
	if err != nil {
		_ = s.fs.Remove(tmp) // already failing
		return err
	}
	if dir == s.queue {
		return s.syncQueue()
	}
	return s.syncDir(dir)
}

// SetState durably replaces the state of a queued message.
func (s *Spool) SetState(id message.ID, st State) error {
	if err := checkID(id); err != nil {
		return err
	}
	if _, err := s.fs.Stat(s.msgPath(s.queue, id)); err != nil {
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err := s.writeState(s.queue, id, st); err != nil {
		return fmt.Errorf("spool: state of %s: %w", id, err)
	}
	return nil
}

// Get returns the envelope and current state of a queued message, reading
// the state file afresh (the CLI may have changed it).
func (s *Spool) Get(id message.ID) (*Entry, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	return s.get(s.queue, id)
}

func (s *Spool) get(dir string, id message.ID) (*Entry, error) {
	env, err := s.readEnvelope(s.msgPath(dir, id))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, err
	}
	return &Entry{Envelope: env, State: s.readState(dir, id)}, nil
}

// Body streams a queued message's body. The reader returns an error wrapping
// ErrCorrupt instead of io.EOF when length or checksum do not match, so a
// forwarder aborts the transaction instead of sending the final dot.
func (s *Spool) Body(id message.ID) (io.ReadCloser, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	f, err := s.fs.OpenFile(s.msgPath(s.queue, id), os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, err
	}
	info, err := f.Stat()
	if err != nil {
		_ = f.Close() // read-only
		return nil, err
	}
	h := crc32.New(castagnoli)
	_, hl, err := readHeader(f, h)
	if err != nil {
		_ = f.Close() // read-only
		return nil, err
	}
	n := info.Size() - hl - trailerSize
	if n < 0 {
		_ = f.Close() // read-only
		return nil, corruptf("truncated")
	}
	return &bodyStream{f: f, h: h, left: n, n: n}, nil
}

type bodyStream struct {
	f    File
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
		if _, err := io.ReadFull(b.f, t); err != nil {
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
	n, err := b.f.Read(p)
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

func (b *bodyStream) Close() error { return b.f.Close() }

// Remove deletes a delivered message (.msg and .state) durably. A message
// already gone (deleted by the CLI) is not an error.
func (s *Spool) Remove(id message.ID) error {
	if err := checkID(id); err != nil {
		return err
	}
	if err := s.removeFiles(s.queue, id); err != nil {
		return err
	}
	s.mu.Lock()
	s.drop(id)
	s.publish()
	s.mu.Unlock()
	return s.syncQueue()
}

func (s *Spool) removeFiles(dir string, id message.ID) error {
	// The .msg goes first: a crash in between leaves an orphaned .state,
	// which Open discards. The other order could leave a .msg without its
	// .state, which would be retried as fresh, attempts reset.
	for _, p := range []string{s.msgPath(dir, id), s.statePath(dir, id)} {
		if err := s.fs.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("spool: remove %s: %w", id, err)
		}
	}
	return nil
}

// Fail moves a message to failed/ with its final state (st.Final and the
// per-recipient replies say why). The state is written there first, so the
// record in failed/ always has its reasons.
func (s *Spool) Fail(id message.ID, st State) error {
	if err := checkID(id); err != nil {
		return err
	}
	if _, err := s.fs.Stat(s.msgPath(s.queue, id)); err != nil {
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err := s.writeState(s.fail, id, st); err != nil {
		return fmt.Errorf("spool: fail %s: %w", id, err)
	}
	if err := s.fs.Rename(s.msgPath(s.queue, id), s.msgPath(s.fail, id)); err != nil {
		return fmt.Errorf("spool: fail %s: %w", id, err)
	}
	if err := s.syncDir(s.fail); err != nil {
		return fmt.Errorf("spool: fail %s: %w", id, err)
	}
	if err := s.fs.Remove(s.statePath(s.queue, id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("spool: fail %s: %w", id, err)
	}
	s.mu.Lock()
	s.drop(id)
	s.publish()
	s.mu.Unlock()
	return s.syncQueue()
}

// List returns the queued messages (envelope and state), oldest first,
// reading headers and trailers only, never bodies.
func (s *Spool) List() ([]Entry, error) { return s.list(s.queue) }

// ListFailed returns the messages in failed/.
func (s *Spool) ListFailed() ([]Entry, error) { return s.list(s.fail) }

func (s *Spool) list(dir string) ([]Entry, error) {
	des, err := s.fs.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	var out []Entry
	for _, de := range des {
		id, ok := strings.CutSuffix(de.Name(), ".msg")
		if !ok || !message.ID(id).Valid() {
			continue
		}
		e, err := s.get(dir, message.ID(id))
		if errors.Is(err, ErrNotFound) {
			continue // removed meanwhile
		}
		if err != nil {
			s.log.Warn("cannot read queued message", zap.String("id", id), zap.Error(err))
			continue
		}
		out = append(out, *e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Envelope.ID < out[j].Envelope.ID })
	return out, nil
}

// Rescan re-reads the directory listing of queue/ (not the files) and
// returns every queued ID with its state file's modification time (zero if
// it has none), bringing Stats up to date with changes made by the CLI. The
// scheduler uses it to find new entries and entries the CLI retried.
func (s *Spool) Rescan() (map[message.ID]time.Time, error) {
	des, err := s.fs.ReadDir(s.queue)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	out := map[message.ID]time.Time{}
	for _, de := range des {
		if id, ok := strings.CutSuffix(de.Name(), ".msg"); ok && message.ID(id).Valid() {
			if _, seen := out[message.ID(id)]; !seen {
				out[message.ID(id)] = time.Time{}
			}
		}
		if id, ok := strings.CutSuffix(de.Name(), ".state"); ok && message.ID(id).Valid() {
			if info, err := de.Info(); err == nil {
				out[message.ID(id)] = info.ModTime()
			}
		}
	}
	for id := range out {
		if _, err := s.fs.Stat(s.msgPath(s.queue, id)); err != nil {
			delete(out, id) // orphaned state
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for id := range s.index {
		if _, ok := out[id]; !ok {
			s.drop(id)
		}
	}
	for id := range out {
		if _, ok := s.index[id]; !ok {
			if env, err := s.readEnvelope(s.msgPath(s.queue, id)); err == nil {
				s.add(env)
			}
		}
	}
	s.publish()
	return out, nil
}

// Retry makes a message due now. A queued message gets NextAttempt = now in
// its state file; a failed one is moved back into queue/ with fresh counters
// (recipients already delivered stay delivered, failed ones become pending).
func (s *Spool) Retry(id message.ID) error {
	if err := checkID(id); err != nil {
		return err
	}
	now := s.opts.Clock()
	if _, err := s.fs.Stat(s.msgPath(s.queue, id)); err == nil {
		st := s.readState(s.queue, id)
		st.NextAttempt = now
		return s.SetState(id, st)
	}
	if _, err := s.fs.Stat(s.msgPath(s.fail, id)); err != nil {
		return fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	old := s.readState(s.fail, id)
	st := State{NextAttempt: now}
	for r, rs := range old.Recipients {
		if rs.Status == Delivered {
			st.Set(r, Delivered, rs.Reply)
		}
	}
	// State first: a .msg in queue/ must never appear with the old final
	// state. A crash after this leaves a harmless orphaned state.
	if err := s.writeState(s.queue, id, st); err != nil {
		return fmt.Errorf("spool: retry %s: %w", id, err)
	}
	if err := s.fs.Rename(s.msgPath(s.fail, id), s.msgPath(s.queue, id)); err != nil {
		return fmt.Errorf("spool: retry %s: %w", id, err)
	}
	if err := s.syncQueue(); err != nil {
		return fmt.Errorf("spool: retry %s: %w", id, err)
	}
	if err := s.fs.Remove(s.statePath(s.fail, id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("spool: retry %s: %w", id, err)
	}
	if env, err := s.readEnvelope(s.msgPath(s.queue, id)); err == nil {
		s.mu.Lock()
		s.add(env)
		s.publish()
		s.mu.Unlock()
	}
	return s.syncDir(s.fail)
}

// Delete removes a message from queue/ or failed/. If the daemon is
// delivering it, its later Remove finds nothing — harmless.
func (s *Spool) Delete(id message.ID) error {
	if err := checkID(id); err != nil {
		return err
	}
	found := false
	for _, dir := range []string{s.queue, s.fail} {
		if _, err := s.fs.Stat(s.msgPath(dir, id)); err == nil {
			found = true
			if err := s.removeFiles(dir, id); err != nil {
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

// Close stops the committer and releases the lock.
func (s *Spool) Close() error {
	s.closeOnce.Do(func() {
		close(s.stop)
		<-s.stopped
		if s.lock != nil {
			s.closeErr = s.lock.Close() // closing the fd releases the flock
		}
	})
	return s.closeErr
}

// Quarantine moves a queued message whose record turned out corrupt (its
// body failed the checksum during delivery) to corrupt/, where an operator
// can inspect it: it is never deleted, and never retried as if whole.
func (s *Spool) Quarantine(id message.ID, why error) error {
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
