// Package spool owns the relay's durable on-disk queue: the promise behind
// every "250" the relay gives a client.
//
// A message is durable when Put returns nil: its record (envelope, body,
// length and CRC-32C) was written to tmp/, fsynced, renamed into
// queue/<id>.msg and queue/ was fsynced — Postfix's contract. Concurrent
// Puts share the directory fsync (group commit). The mutable delivery state
// is appended to the record itself (state blocks, tail.go), so a message is
// one file from its 250 to its removal; a spool written by the previous
// version (state beside the record in queue/<id>.state) is read as it is.
// Removals are batched: Remove unlinks at once and the directory fsync
// that makes it durable is shared with the next commit. Messages that
// failed for good are kept in failed/, records that do not parse are moved
// to corrupt/ (never deleted) when they are first read.
//
// Open reads the directory, not the records: a spool of 100,000 messages
// opens in a fraction of a second. docs/spool.md gives the format and the
// crash reasoning.
//
// One daemon owns a spool (flock on Dir/lock); the queue CLI uses OpenAdmin,
// which takes no lock, so Retry and Delete work beside a running daemon: the
// daemon re-reads a record's state before each attempt and rescans queue/.
package spool

import (
	"container/heap"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/o365relay/o365relay/relay/envelope"
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
	Logger   *zap.Logger // used as given; the caller names it (relay.New: "spool")
	FS       FS          // nil = OSFS
}

// Spool is an open spool directory. Its methods are safe for concurrent use.
type Spool struct {
	opts             Options
	fs               FS
	log              *zap.Logger
	tmp, queue, fail string
	corrupt, freeDir string
	lock             *os.File
	commits          chan chan error
	later            chan struct{} // a removal waits for the next directory fsync
	stop, stopped    chan struct{}
	closeOnce        sync.Once
	closeErr         error

	mu       sync.Mutex
	index    map[envelope.ID]indexEntry
	ages     idHeap // IDs by age, with entries already dropped left in
	reserved int    // Puts in progress, counted against MaxItems
	bytes    int64
	gen      uint32   // Rescan generation
	free     []string // reusable record files in free/ (recycle.go)
	freeing  int      // retirements into free/ in progress
	// putting holds the IDs whose Put is under way: between its rename
	// into queue/ and its index entry, Rescan must not take the record
	// for one added from outside (it would schedule it, and a worker
	// could deliver it before the Put's caller does).
	putting map[envelope.ID]struct{}
}

// indexEntry is small and held by value: a daemon with 100,000 messages
// queued keeps 100,000 of them.
type indexEntry struct {
	size int64
	// mod is the record's modification time (Unix ns) seen by the last
	// Rescan; self says the daemon itself wrote the record since (Put, a
	// state block), so a new time is not news to the scheduler.
	mod int64
	// gen is the Rescan that last saw the record.
	gen uint32
	// legacy: the record may have its state in a version-1 .state file.
	legacy, self bool
}

// Open creates the layout, takes the daemon lock, removes stale tmp/ files,
// indexes queue/ and starts the group committer.
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
		opts: opts, fs: opts.FS, log: opts.Logger,
		tmp: filepath.Join(opts.Dir, "tmp"), queue: filepath.Join(opts.Dir, "queue"),
		fail: filepath.Join(opts.Dir, "failed"), corrupt: filepath.Join(opts.Dir, "corrupt"),
		freeDir: filepath.Join(opts.Dir, "free"),
		commits: make(chan chan error, 64), later: make(chan struct{}, 1),
		stop: make(chan struct{}), stopped: make(chan struct{}),
		index: map[envelope.ID]indexEntry{}, putting: map[envelope.ID]struct{}{},
	}
	dirs := []string{s.tmp, s.queue, s.fail, s.corrupt}
	if daemon {
		dirs = append(dirs, s.freeDir) // only the daemon writes records
	}
	for _, d := range dirs {
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
	} else if err := s.scanQueue(false); err != nil {
		return nil, err
	}
	go s.committer()
	return s, nil
}

// recover removes old tmp/ files and indexes queue/. Records are not read
// here: each is checked in full when it is first used (Get parses header
// and tail, Body checks length and checksum before the final dot), and one
// that does not parse is moved to corrupt/ then. A record in queue/ was
// renamed there only after its fsync, so a crash cannot leave one half
// written; what the check catches is damage from outside.
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
	if err := s.loadFree(); err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	return s.scanQueue(true)
}

// scanQueue builds the index from queue/'s listing and the records' sizes
// (no record is opened). The daemon also quarantines names that are not
// ours, removes old state-write temporaries and state files whose record
// is gone.
func (s *Spool) scanQueue(daemon bool) error {
	now := s.opts.Clock()
	states := map[envelope.ID]bool{}
	moved := false
	err := s.fs.ReadDirBatches(s.queue, func(des []os.DirEntry) {
		for _, de := range des {
			name := de.Name()
			if id, ok := strings.CutSuffix(name, ".msg"); ok && envelope.ID(id).Valid() {
				info, err := de.Info()
				if err != nil {
					continue // removed meanwhile
				}
				s.add(envelope.ID(id), info.Size(), info.ModTime())
				continue
			}
			if id, ok := strings.CutSuffix(name, ".state"); ok && envelope.ID(id).Valid() {
				states[envelope.ID(id)] = true
				continue
			}
			if !daemon {
				continue
			}
			if strings.HasPrefix(name, ".") { // a version-1 state write's temporary
				if info, err := de.Info(); err == nil && now.Sub(info.ModTime()) >= TmpMaxAge {
					_ = s.fs.Remove(filepath.Join(s.queue, name)) // best effort: an abandoned state write
				}
				continue
			}
			s.quarantine(name, errors.New("unexpected file"))
			moved = true
		}
	})
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	for id := range states {
		if e, ok := s.index[id]; ok {
			e.legacy = true
			s.index[id] = e
		} else if daemon {
			_ = s.fs.Remove(s.statePath(s.queue, id)) // best effort: it describes nothing
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

// add and drop keep Stats incremental. Callers hold mu or are in open.
// add indexes a record; a zero mod (Put) marks it as written by us.
func (s *Spool) add(id envelope.ID, size int64, mod time.Time) {
	if _, ok := s.index[id]; ok {
		return
	}
	e := indexEntry{size: size, self: mod.IsZero(), gen: s.gen}
	if !mod.IsZero() {
		e.mod = mod.UnixNano()
	}
	s.index[id] = e
	s.bytes += size
	s.ages.push(id)
}

func (s *Spool) drop(id envelope.ID) {
	e, ok := s.index[id]
	if !ok {
		return
	}
	delete(s.index, id)
	s.bytes -= e.size
	if s.ages.Len() > 2*len(s.index)+1024 {
		// Dropped IDs behind an old one that stays (a held message) would
		// pile up: rebuild, amortised O(1) per drop.
		s.ages = s.ages[:0]
		for k := range s.index {
			s.ages = append(s.ages, k)
		}
		heap.Init(&s.ages)
	}
}

// oldestLocked returns the oldest queued ID ("" when empty), popping IDs
// that left: amortised O(log n) per removal instead of a scan.
func (s *Spool) oldestLocked() envelope.ID {
	for s.ages.Len() > 0 {
		if id := s.ages.min(); s.has(id) {
			return id
		}
		s.ages.popMin()
	}
	return ""
}

func (s *Spool) publish() {
	itemsGauge.Set(float64(len(s.index)))
	bytesGauge.Set(float64(s.bytes))
	if id := s.oldestLocked(); id == "" {
		oldestGauge.Set(0)
	} else {
		oldestGauge.Set(float64(id.Time().Unix()))
	}
}

func (s *Spool) has(id envelope.ID) bool {
	_, ok := s.index[id]
	return ok
}

// Stats reports queue depth, record bytes and the oldest receipt time (zero
// when empty), from the in-memory index. Bytes are the records' file sizes
// (body plus envelope and state), read from the directory at Open.
func (s *Spool) Stats() (items int, bytes int64, oldest time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if id := s.oldestLocked(); id != "" {
		oldest = id.Time()
	}
	return len(s.index), s.bytes, oldest
}

// IDs returns the queued IDs from the index, oldest first, without I/O.
func (s *Spool) IDs() []envelope.ID {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]envelope.ID, 0, len(s.index))
	for id := range s.index {
		out = append(out, id)
	}
	sortIDs(out)
	return out
}

// Close stops the committer (after a last directory fsync for removals
// still waiting for one) and releases the lock.
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

func (s *Spool) msgPath(dir string, id envelope.ID) string {
	return filepath.Join(dir, string(id)+".msg")
}
func (s *Spool) statePath(dir string, id envelope.ID) string {
	return filepath.Join(dir, string(id)+".state")
}

// ErrNotFound is returned for an ID that is not in the spool (any more).
var ErrNotFound = errors.New("spool: no such message")

func checkID(id envelope.ID) error {
	if !id.Valid() {
		return fmt.Errorf("%w: invalid id %q", ErrNotFound, id)
	}
	return nil
}
