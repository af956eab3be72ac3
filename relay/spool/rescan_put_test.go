package spool

import (
	"bytes"
	"sync"
	"testing"
)

// gateFS holds the next directory fsync of queue/ until released, so a
// test can act while a Put sits between its rename into queue/ and its
// index entry.
type gateFS struct {
	OSFS
	mu      sync.Mutex
	armed   bool
	entered chan struct{}
	release chan struct{}
}

func (g *gateFS) SyncDir(name string) error {
	g.mu.Lock()
	hold := g.armed
	g.armed = false
	g.mu.Unlock()
	if hold {
		close(g.entered)
		<-g.release
	}
	return g.OSFS.SyncDir(name)
}

// TestRescanDuringPut: a Rescan that lists queue/ while a Put waits for
// its directory fsync (the record renamed in, not yet indexed) leaves the
// record to the Put. Before, it indexed the record as one added from
// outside and reported it changed, and the scheduler gave it to a worker:
// the Put's caller (ack=upstream) then found it delivered and gone and told
// the client "queued" instead of "delivered" (found by FuzzData, whose
// pipeline rescans every 30 s).
func TestRescanDuringPut(t *testing.T) {
	t.Parallel()
	g := &gateFS{entered: make(chan struct{}), release: make(chan struct{})}
	s := open_(t, t.TempDir(), func(o *Options) { o.FS = g })
	g.mu.Lock()
	g.armed = true
	g.mu.Unlock()
	env := newEnv(1)
	done := make(chan error, 1)
	go func() { done <- s.Put(env, bytes.NewReader([]byte("Subject: x\r\n\r\nbody\r\n"))) }()
	<-g.entered
	changed, gone, err := s.Rescan()
	close(g.release)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, id := range changed {
		if id == env.ID {
			t.Errorf("Rescan during the Put reported %s as changed (added from outside)", id)
		}
	}
	if len(gone) != 0 {
		t.Errorf("gone %v", gone)
	}
	if ids := s.IDs(); len(ids) != 1 || ids[0] != env.ID {
		t.Fatalf("index %v after the Put of %s", ids, env.ID)
	}
	// And the next Rescan neither reports it nor loses it.
	changed, gone, err = s.Rescan()
	if err != nil || len(changed) != 0 || len(gone) != 0 {
		t.Errorf("next Rescan: changed %v, gone %v, %v", changed, gone, err)
	}
}
