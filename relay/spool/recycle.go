package spool

import (
	"errors"
	"hash"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	"github.com/o365relay/o365relay/relay/envelope"
)

// Recycling record files. Creating a file costs more than anything else a
// Put does (ext4 allocates an inode, searching its bitmaps past inodes freed
// a moment ago; unlinking frees one), and a relay under load creates and
// deletes one per message. A delivered message's record is therefore
// renamed into free/ instead of unlinked, and the next Put overwrites it
// and renames it into queue/: no inode is allocated or freed.
//
// A file in free/ is never part of the queue: its content is garbage. A Put
// that reuses one writes it from the start, truncates what a longer
// predecessor left, fsyncs it and only then renames it into queue/ — the
// same order as a new file from tmp/, so the durability contract holds. A
// crash mid-Put leaves a half-written file in free/, still free (the client
// got no 250). At Open, a name in free/ whose file has another link (which a
// crash cannot leave behind on a journaling file system, but which must not
// be overwritten if it did) is unlinked instead of reused.
const (
	maxFree        = 64      // files kept for reuse
	maxFreeSize    = 1 << 20 // larger records are unlinked, not kept
	writeBufferLen = 64 << 10
)

// newRecordFile returns a file to write a new record into: a free one
// (reused) or a new one in tmp/.
func (s *Spool) newRecordFile(id envelope.ID) (path string, f File, reused bool, err error) {
	for {
		s.mu.Lock()
		n := len(s.free)
		if n == 0 {
			s.mu.Unlock()
			break
		}
		path = s.free[n-1]
		s.free = s.free[:n-1]
		s.mu.Unlock()
		if f, err = s.fs.OpenFile(path, os.O_WRONLY, 0); err == nil {
			return path, f, true, nil
		}
		_ = s.fs.Remove(path) // best effort: it cannot be reused
	}
	path = filepath.Join(s.tmp, string(id))
	f, err = s.fs.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	return path, f, false, err
}

// giveBack returns a free file a failed Put took.
func (s *Spool) giveBack(path string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.free = append(s.free, path)
}

// retire takes a delivered record out of dir: into free/ for reuse while
// there is room and it is small, else unlinked.
func (s *Spool) retire(dir string, id envelope.ID, size int64) error {
	src := s.msgPath(dir, id)
	s.mu.Lock()
	keep := s.lock != nil && dir == s.queue && size <= maxFreeSize && len(s.free)+s.freeing < maxFree
	if keep {
		s.freeing++
	}
	s.mu.Unlock()
	if keep {
		dst := filepath.Join(s.freeDir, string(id))
		err := s.fs.Rename(src, dst)
		s.mu.Lock()
		s.freeing--
		if err == nil {
			s.free = append(s.free, dst)
		}
		s.mu.Unlock()
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
	}
	if err := s.fs.Remove(src); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// loadFree lists free/ at Open.
func (s *Spool) loadFree() error {
	des, err := s.fs.ReadDir(s.freeDir)
	if err != nil {
		return err
	}
	for _, de := range des {
		p := filepath.Join(s.freeDir, de.Name())
		info, err := de.Info()
		if err != nil {
			continue
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if !de.Type().IsRegular() || !ok || st.Nlink != 1 || len(s.free) >= maxFree {
			_ = s.fs.Remove(p) // best effort: not reusable
			continue
		}
		s.free = append(s.free, p)
	}
	return nil
}

// recordWriter buffers a record on its way to the file: a record up to
// writeBufferLen goes out in one write.
type recordWriter struct {
	w   io.Writer
	buf []byte
	n   int
}

var writers = sync.Pool{New: func() any { return &recordWriter{buf: make([]byte, writeBufferLen)} }}

func getWriter(w io.Writer) *recordWriter {
	rw := writers.Get().(*recordWriter)
	rw.w, rw.n = w, 0
	return rw
}

func putWriter(rw *recordWriter) {
	rw.w = nil
	writers.Put(rw)
}

func (rw *recordWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		if rw.n == len(rw.buf) {
			if err := rw.Flush(); err != nil {
				return written, err
			}
		}
		k := copy(rw.buf[rw.n:], p)
		rw.n += k
		p = p[k:]
		written += k
	}
	return written, nil
}

// ReadFromCounting copies r into the record, feeding h, until EOF; it
// returns the bytes copied. An error from r is returned as it is.
func (rw *recordWriter) ReadFromCounting(r io.Reader, h hash.Hash32) (int64, error) {
	var total int64
	for {
		if rw.n == len(rw.buf) {
			if err := rw.Flush(); err != nil {
				return total, err
			}
		}
		m, err := r.Read(rw.buf[rw.n:])
		h.Write(rw.buf[rw.n : rw.n+m])
		rw.n += m
		total += int64(m)
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

func (rw *recordWriter) Flush() error {
	if rw.n == 0 {
		return nil
	}
	_, err := rw.w.Write(rw.buf[:rw.n])
	rw.n = 0
	return err
}
