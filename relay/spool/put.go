package spool

import (
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"path/filepath"
	"syscall"
	"time"

	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/reply"
)

var (
	enhStorage = reply.EnhancedCode{4, 3, 1} // RFC 3463 X.3.1 mail system full
	enhLocal   = reply.EnhancedCode{4, 3, 0} // RFC 3463 X.3.0 other mail system status
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
func (s *Spool) Put(env *envelope.Envelope, body io.Reader) (err error) {
	start := time.Now()
	if !env.ID.Valid() {
		return reply.Wrap(fmt.Errorf("invalid id %q", env.ID), 451, enhLocal, "Local error in processing")
	}
	room, err := s.reserve(env.ID)
	if err != nil {
		return err
	}
	defer s.unreserve(env.ID)

	env.Size = 0
	hdr, err := encodeHeader(env)
	if err != nil {
		return reply.Wrap(err, 451, enhLocal, "Local error in processing")
	}
	final := filepath.Join(s.queue, string(env.ID)+".msg")
	// A file of a delivered message is reused when there is one
	// (recycle.go): creating an inode was the most expensive step here.
	tmp, f, reused, err := s.newRecordFile(env.ID)
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
		switch {
		case renamed:
			_ = s.fs.Remove(final) // best effort: a leftover is a duplicate, not a loss
		case reused:
			s.giveBack(tmp) // its content is garbage; it is still a free file
		default:
			_ = s.fs.Remove(tmp)
		}
	}()
	n, err := s.writeRecord(f, hdr, body, room, reused)
	if err != nil {
		return err
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
	s.add(env.ID, int64(len(hdr))+n+trailerSize, time.Time{})
	s.publish()
	s.mu.Unlock()
	putDuration.Observe(time.Since(start).Seconds())
	return nil
}

// reserve admits one more Put under max_items and max_bytes and returns
// the bytes left for its body (0: unlimited). The reservation holds until
// unreserve, so concurrent Puts cannot overshoot the limits together.
func (s *Spool) reserve(id envelope.ID) (room int64, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.opts.MaxItems > 0 && len(s.index)+s.reserved >= s.opts.MaxItems {
		return 0, limitError("spool item limit reached")
	}
	if s.opts.MaxBytes > 0 {
		room = s.opts.MaxBytes - s.bytes
		if room <= 0 {
			return 0, limitError("spool byte limit reached")
		}
	}
	s.reserved++
	s.putting[id] = struct{}{}
	return room, nil
}

// unreserve ends a Put's reservation, whatever its outcome.
func (s *Spool) unreserve(id envelope.ID) {
	s.mu.Lock()
	s.reserved--
	delete(s.putting, id)
	s.mu.Unlock()
}

// writeRecord writes header, body and trailer (with the body's length and
// CRC) into f and makes them durable when Fsync is on; it returns the body
// length. Its errors are Put's: a limit, the body reader's own error, or a
// storage error. Put closes, renames and cleans up.
func (s *Spool) writeRecord(f File, hdr []byte, body io.Reader, room int64, reused bool) (n int64, err error) {
	h := crc32.New(castagnoli)
	bw := getWriter(f)
	defer putWriter(bw)
	w := io.MultiWriter(bw, h)
	if _, err = w.Write(hdr); err != nil {
		return 0, storageError(err)
	}
	br := &bodyReader{r: body, max: room}
	n, err = bw.ReadFromCounting(struct{ io.Reader }{br}, h)
	if br.err == errTooBig {
		return 0, limitError("spool byte limit reached")
	}
	if br.err != nil {
		putFailures.WithLabelValues("body").Inc()
		return 0, br.err
	}
	if err != nil {
		return 0, storageError(err)
	}
	if _, err = bw.Write(encodeTrailer(n, h.Sum32())); err != nil {
		return 0, storageError(err)
	}
	if err = bw.Flush(); err != nil {
		return 0, storageError(err)
	}
	if reused {
		// Cut what a longer previous record left behind.
		if err = f.Truncate(int64(len(hdr)) + n + trailerSize); err != nil {
			return 0, storageError(err)
		}
	}
	if s.opts.Fsync {
		if err = f.Sync(); err != nil {
			return 0, storageError(err)
		}
	}
	return n, nil
}
