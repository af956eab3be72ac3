package smtpd

import (
	"bytes"
	"io"
	"sync"
	"time"

	"github.com/o365relay/o365relay/relay/reply"
)

// The DATA phase is framed here, not by go-smtp. go-smtp's reader (v0.25.1
// data.go) loses bytes: after a line-initial "." it drops a CR that is not
// followed by LF (".\rX" arrives as "X"), and after CR CR it no longer
// sees a line end, so "\r\r\n.\r\n" never ends the data. The old
// workaround inserted a marker byte between two CRs, which reached the
// spool when the pair followed a dot. So trackedConn hands go-smtp only
// ".\r\n" for a message (go-smtp's reader then ends at once), and the
// session reads the content from dataReader, which applies RFC 5321
// §4.5.2 exactly:
//
//   - a line ends at CRLF and nowhere else (a bare CR or LF is content,
//     for the body checker to refuse or normalise);
//   - the data ends at the first line that is a single "." (the CRLF
//     before it is the last line's end, §4.1.1.4), or at a "." line at the
//     very start;
//   - a line that starts with "." and is not the end has that "." removed.
//
// So the content the session reads is exactly the client's bytes after
// dot-unstuffing, and nothing else.

// maxDataLine is the longest raw line (octets before its LF) accepted in
// DATA: go-smtp's MaxLineLength, which New sets to 2000 for commands.
const maxDataLine = 2000

type dataState uint8

const (
	atLineStart dataState = iota
	inLine
	afterCR  // in a line, just after a CR
	afterDot // a "." at the start of a line
	afterDotCR
)

// dataReader yields one message's content from the client's stream. It
// reads from trackedConn's buffer and connection, and leaves what follows
// the end of data in the buffer for the next command.
type dataReader struct {
	c     *trackedConn
	state dataState
	n     int64   // content octets so far
	max   int64   // refuse content beyond this (0: no limit)
	line  int     // raw octets since the last LF
	done  bool    // the end-of-data line was read
	err   error   // sticky: a read error or a refusal
	buf   *[]byte // read buffer, from c.bufs while the message is read
}

func newDataReader(c *trackedConn, max int64) *dataReader {
	return &dataReader{c: c, max: max}
}

// errDataTooLarge is go-smtp's reply to a message over the size limit
// (RFC 1870 §6: X.3.4), kept word for word.
var errDataTooLarge = reply.New(552, reply.EnhancedCode{5, 3, 4}, "Maximum message size exceeded")

// Read returns content. A message over the size limit or with a line over
// maxDataLine gets its reply as the error; a network error or timeout
// comes as itself.
func (d *dataReader) Read(p []byte) (int, error) {
	for {
		if d.err != nil {
			return 0, d.err
		}
		if d.done {
			return 0, io.EOF
		}
		if len(p) == 0 {
			return 0, nil
		}
		if len(d.c.inbuf) == 0 {
			if err := d.fill(); err != nil {
				d.err = err
				continue
			}
		}
		in := d.c.inbuf
		used, n := d.frame(in, p)
		d.c.inbuf = in[used:]
		if !d.countLines(in[:used]) {
			d.err = errLineTooLong
			continue
		}
		if d.done {
			d.release()
		}
		d.n += int64(n)
		if d.max > 0 && d.n > d.max {
			d.err = errDataTooLarge
			continue
		}
		if n > 0 {
			return n, nil
		}
	}
}

// discard reads to the end of data, whatever was refused: what follows it
// is the client's next command. Only a read error stops it.
func (d *dataReader) discard() error {
	var scratch [4096]byte
	for !d.done {
		if d.err != nil && reply.As(d.err) == nil {
			return d.err
		}
		if len(d.c.inbuf) == 0 {
			if err := d.fill(); err != nil {
				d.err = err
				return err
			}
		}
		used, _ := d.frame(d.c.inbuf, scratch[:])
		d.c.inbuf = d.c.inbuf[used:]
	}
	d.release()
	return nil
}

// dataBuf is the read size during DATA: larger than the command buffer,
// for fewer reads of a big message, and enough for a typical message in
// one read.
const dataBuf = 32 << 10

// newDataBufs is the pool of DATA read buffers a Server's sessions share
// (see dataReader.release): a buffer per message was most of what the
// intake allocated, and the garbage collector's work grows with it.
func newDataBufs() *sync.Pool {
	return &sync.Pool{New: func() any {
		b := make([]byte, dataBuf)
		return &b
	}}
}

// release gives the read buffer back once the message has been read. What
// the client sent after the end of data (pipelined commands) is still to
// be read as commands: it is copied out of the buffer first.
func (d *dataReader) release() {
	if d.buf == nil {
		return
	}
	c := d.c
	if len(c.inbuf) > 0 {
		c.inbuf = append([]byte(nil), c.inbuf...)
	} else {
		c.inbuf = nil
	}
	if c.bufs != nil {
		c.bufs.Put(d.buf)
	}
	d.buf = nil
}

// fill reads more of the client's stream into the connection's buffer
// (which is empty), under the same session limit as Read.
func (d *dataReader) fill() error {
	c := d.c
	if c.readErr != nil {
		err := c.readErr
		c.readErr = nil
		return err
	}
	if c.maxSession > 0 && time.Since(c.started) > c.maxSession {
		c.writeAndClose("421 4.4.2 Session too long, closing connection\r\n")
		return io.ErrUnexpectedEOF
	}
	if d.buf == nil {
		if c.bufs != nil {
			d.buf = c.bufs.Get().(*[]byte)
		} else {
			b := make([]byte, dataBuf)
			d.buf = &b
		}
	}
	buf := *d.buf
	n, err := c.readConn(buf)
	c.inbuf = buf[:n]
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		if n == 0 {
			return err
		}
		c.readErr = err
	}
	return nil
}

// frame moves content from in to out until out is full, in is used up or
// the end of data is read; it returns the input octets used and the
// content octets written. Runs inside a line are copied whole (up to the
// next CR); only line starts and CRs are looked at one by one.
func (d *dataReader) frame(in, out []byte) (used, n int) {
	i := 0
	for i < len(in) && n < len(out) && !d.done {
		switch d.state {
		case inLine:
			seg := in[i:min(len(in), i+len(out)-n)]
			k := bytes.IndexByte(seg, '\r')
			if k < 0 {
				n += copy(out[n:], seg)
				i += len(seg)
				continue
			}
			n += copy(out[n:], seg[:k+1])
			i += k + 1
			d.state = afterCR
		case afterCR:
			b := in[i]
			out[n] = b
			n, i = n+1, i+1
			switch b {
			case '\n':
				d.state = atLineStart
			case '\r':
			default:
				d.state = inLine
			}
		case atLineStart:
			if in[i] == '.' {
				i++
				d.state = afterDot
				continue
			}
			d.state = inLine
		case afterDot:
			if in[i] == '\r' {
				i++
				d.state = afterDotCR
				continue
			}
			d.state = inLine // the dot is removed
		case afterDotCR:
			if in[i] == '\n' {
				i++
				d.done = true
				continue
			}
			// ".\r" and more: the dot is removed, the CR is content.
			out[n] = '\r'
			n++
			d.state = afterCR
		}
	}
	return i, n
}

// countLines adds the raw octets b to the current line's length and
// reports whether every line stayed within maxDataLine.
func (d *dataReader) countLines(b []byte) bool {
	for {
		j := bytes.IndexByte(b, '\n')
		if j < 0 {
			d.line += len(b)
			return d.line <= maxDataLine
		}
		if d.line+j > maxDataLine {
			return false
		}
		d.line, b = 0, b[j+1:]
	}
}
