package spool

import (
	"os"
	"sync/atomic"
	"testing"
)

type countingFS struct {
	OSFS
	n *atomic.Int64
}

type countingFile struct {
	File
	n *atomic.Int64
}

func (c countingFS) OpenFile(name string, flag int, perm os.FileMode) (File, error) {
	f, err := c.OSFS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return countingFile{f, c.n}, nil
}

func (c countingFile) Read(p []byte) (int, error) {
	n, err := c.File.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// List reads headers and trailers, never bodies.
func TestListDoesNotReadBodies(t *testing.T) {
	t.Parallel()
	var n atomic.Int64
	s := open_(t, t.TempDir(), func(o *Options) { o.FS = countingFS{n: &n}; o.Fsync = false })
	for i := range 10 {
		if err := s.Put(newEnv(i), &gen{n: 1 << 20, x: 1}); err != nil {
			t.Fatal(err)
		}
	}
	n.Store(0)
	list, err := s.List()
	if err != nil || len(list) != 10 || list[0].Envelope.Size != 1<<20 {
		t.Fatalf("List = %d entries, %v", len(list), err)
	}
	if got := n.Load(); got > 10*4096 {
		t.Errorf("List read %d bytes for 10 × 1 MiB messages", got)
	}
}
