package spool

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/o365relay/o365relay/config/waitfor"
	"github.com/o365relay/o365relay/relay/envelope"
)

// countFS counts the file-system operations a message's life costs.
type countFS struct {
	OSFS
	mu                               sync.Mutex
	creates, opens, renames, removes int
	dirSyncs, fileSyncs, waitedSyncs int
	waiting                          bool
	// dirSynced is notified after each SyncDir is counted, so a test can
	// wait for one instead of polling.
	dirSynced waitfor.Changes
}

type countFile struct {
	File
	fs *countFS
}

func (c *countFS) OpenFile(name string, flag int, perm os.FileMode) (File, error) {
	c.mu.Lock()
	if flag&os.O_CREATE != 0 {
		c.creates++
	} else {
		c.opens++
	}
	c.mu.Unlock()
	f, err := c.OSFS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &countFile{File: f, fs: c}, nil
}
func (f *countFile) Sync() error {
	f.fs.mu.Lock()
	f.fs.fileSyncs++
	f.fs.mu.Unlock()
	return f.File.Sync()
}
func (c *countFS) Rename(o, n string) error {
	c.mu.Lock()
	c.renames++
	c.mu.Unlock()
	return c.OSFS.Rename(o, n)
}
func (c *countFS) Remove(name string) error {
	c.mu.Lock()
	c.removes++
	c.mu.Unlock()
	return c.OSFS.Remove(name)
}
func (c *countFS) SyncDir(name string) error {
	c.mu.Lock()
	c.dirSyncs++
	c.mu.Unlock()
	c.dirSynced.Notify()
	return c.OSFS.SyncDir(name)
}

// lifecycle is a delivered message's life as delivery drives it: Put, the
// record opened for the attempt (state read, attempt noted, body read),
// removed.
func lifecycle(tb testing.TB, s *Spool, env *envelope.Envelope, body []byte) {
	tb.Helper()
	if err := s.Put(env, bytes.NewReader(body)); err != nil {
		tb.Fatal(err)
	}
	a, err := s.Begin(env.ID)
	if err != nil {
		tb.Fatal(err)
	}
	st := a.Entry.State
	st.Attempts++
	st.NextAttempt = time.Now().Add(time.Minute)
	if err := a.Note(st); err != nil {
		tb.Fatal(err)
	}
	r, err := a.Body()
	if err != nil {
		tb.Fatal(err)
	}
	if got, err := io.ReadAll(r); err != nil || !bytes.Equal(got, body) {
		tb.Fatalf("body: %d bytes, %v", len(got), err)
	}
	if err := a.Close(); err != nil {
		tb.Fatal(err)
	}
	if err := s.Remove(env.ID); err != nil {
		tb.Fatal(err)
	}
}

// TestNoInodePerMessage: messages delivered one after another create one
// file between them (the first; each later Put reuses the file of the
// message delivered before it), unlink none, fsync each record once
// (before its 250) and rename it twice (into queue/, then into free/);
// before the first attempt nothing is fsynced, and a removal does not wait
// for a directory fsync. The previous format created two files per message
// (record and .state), each with its own fsync, rename and directory
// fsync, and unlinked both with a waited directory fsync.
func TestNoInodePerMessage(t *testing.T) {
	t.Parallel()
	fs := &countFS{}
	s := open_(t, t.TempDir(), func(o *Options) { o.FS = fs })
	fs.mu.Lock()
	fs.creates, fs.opens, fs.renames, fs.removes, fs.dirSyncs, fs.fileSyncs = 0, 0, 0, 0, 0, 0
	fs.mu.Unlock()
	const n = 20
	for i := range n {
		lifecycle(t, s, newEnv(i), []byte(fmt.Sprintf("Subject: %d\r\n\r\nbody\r\n", i)))
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.creates != 1 || fs.fileSyncs != n || fs.renames != 2*n || fs.removes != 0 {
		t.Errorf("per %d messages: %d files created, %d file fsyncs, %d renames, %d removals; want 1, %d, %d, 0",
			n, fs.creates, fs.fileSyncs, fs.renames, fs.removes, n, 2*n)
	}
	// Each Put after the first opens a free file; each attempt opens the
	// record once.
	if fs.opens != 2*n-1 {
		t.Errorf("%d opens of existing files for %d messages, want %d", fs.opens, n, 2*n-1)
	}
	// One directory fsync per Put (sequential Puts share none); removals
	// ride along with them or with one of their own, never more than one
	// per removal.
	if fs.dirSyncs > 2*n {
		t.Errorf("%d directory fsyncs for %d messages", fs.dirSyncs, n)
	}
	if items, _, _ := s.Stats(); items != 0 {
		t.Errorf("%d left", items)
	}
}

// TestRemovalsShareThePutsFsync: a removal's directory fsync waits for the
// next Put's (removalSyncDelay), so messages delivered one after another
// cost one directory fsync each, not two; the last removal, with no Put
// after it, still gets one. The old committer fsynced for each removal at
// once (2 per message).
func TestRemovalsShareThePutsFsync(t *testing.T) {
	t.Parallel()
	fs := &countFS{}
	s := open_(t, t.TempDir(), func(o *Options) { o.FS = fs })
	fs.mu.Lock()
	fs.dirSyncs = 0
	fs.mu.Unlock()
	const n = 20
	for i := range n {
		lifecycle(t, s, newEnv(i), []byte(fmt.Sprintf("Subject: %d\r\n\r\nbody\r\n", i)))
	}
	fs.mu.Lock()
	got := fs.dirSyncs
	fs.mu.Unlock()
	// n for the Puts; a stall of removalSyncDelay between a removal and
	// the next Put (a loaded machine) would add one.
	if got > n+n/4 {
		t.Errorf("%d directory fsyncs for %d messages delivered one after another, want about %d", got, n, n)
	}
	waitfor.On(t, &fs.dirSynced, "the last removal's directory fsync", func() bool {
		fs.mu.Lock()
		defer fs.mu.Unlock()
		return fs.dirSyncs > got
	})
}

// BenchmarkLifecycle is one delivered message's spool work (10 KB, fsync
// on, sequential): Put, Get, NoteAttempt, Body, Remove. creates/op and
// fsyncs/op are exact; ns/op is report-only on a shared machine.
func BenchmarkLifecycle(b *testing.B) {
	fs := &countFS{}
	s := open_(b, b.TempDir(), func(o *Options) { o.FS = fs })
	body := bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n"), 10<<10/66)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		env := &envelope.Envelope{ID: envelope.NewID(time.Now()), To: []string{"a@example.org"}, Mailbox: "relay@example.com", Received: time.Now()}
		_ = i
		lifecycle(b, s, env, body)
	}
	b.StopTimer()
	fs.mu.Lock()
	defer fs.mu.Unlock()
	b.ReportMetric(float64(fs.creates)/float64(b.N), "creates/op")
	b.ReportMetric(float64(fs.fileSyncs+fs.dirSyncs)/float64(b.N), "fsyncs/op")
}

// BenchmarkOpen is the start of a daemon over a spool of n queued
// messages: what stands between a restart and readiness.
func BenchmarkOpen(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprint("queued=", n), func(b *testing.B) {
			dir := b.TempDir()
			s := open_(b, dir, func(o *Options) { o.Fsync = false })
			for i := range n {
				env := &envelope.Envelope{ID: envelope.NewID(t0.Add(time.Duration(i) * time.Millisecond)), To: []string{"a@example.org"}}
				if err := s.Put(env, bytes.NewReader([]byte("Subject: x\r\n\r\nbody\r\n"))); err != nil {
					b.Fatal(err)
				}
			}
			if err := s.Close(); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for range b.N {
				s2, err := Open(Options{Dir: dir})
				if err != nil {
					b.Fatal(err)
				}
				if items, _, _ := s2.Stats(); items != n {
					b.Fatalf("%d items", items)
				}
				if err := s2.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestCloseSyncsAWaitingRemoval: a removal still waiting for a Put to share
// its directory fsync with gets one at Close.
func TestCloseSyncsAWaitingRemoval(t *testing.T) {
	t.Parallel()
	fs := &countFS{}
	s := open_(t, t.TempDir(), func(o *Options) { o.FS = fs })
	lifecycle(t, s, newEnv(0), []byte("Subject: 0\r\n\r\nbody\r\n"))
	fs.mu.Lock()
	before := fs.dirSyncs
	fs.mu.Unlock()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	// The removal's own fsync may have come already (a stall longer than
	// removalSyncDelay); otherwise Close made one.
	if fs.dirSyncs == before && before < 2 {
		t.Errorf("no directory fsync for the removal (%d in all)", fs.dirSyncs)
	}
}
