package upstream

import "bytes"

// dotStuffer dot-stuffs a message for DATA (RFC 5321 §4.5.2) exactly as
// net/textproto's DotWriter does — go-smtp's DATA writer, which sent every
// body before — but a line at a time instead of a byte at a time
// through a 4 KiB buffer: a "." starting a line is doubled, a bare LF
// becomes CRLF, and end appends the end of data. FuzzDotStuffer checks
// it against DotWriter byte for byte, however the input is split.
type dotStuffer struct{ state dotState }

// dotState mirrors DotWriter's states.
type dotState uint8

const (
	dotBegin     dotState = iota // nothing written yet
	dotBeginLine                 // after a line end
	dotData                      // inside a line
	dotCR                        // just after a CR
)

// append appends b, stuffed, to dst.
func (d *dotStuffer) append(dst, b []byte) []byte {
	for len(b) > 0 {
		switch d.state {
		case dotBegin, dotBeginLine:
			d.state = dotData
			if b[0] == '.' {
				dst = append(dst, '.')
			}
			// b[0] is looked at again as data.
		case dotData:
			j := bytes.IndexByte(b, '\n')
			seg := b
			if j >= 0 {
				seg = b[:j]
			}
			k := bytes.IndexByte(seg, '\r')
			switch {
			case k < 0 && j < 0: // no line end in b
				return append(dst, b...)
			case k < 0: // a bare LF: DotWriter writes CRLF
				dst = append(append(dst, b[:j]...), '\r', '\n')
				d.state, b = dotBeginLine, b[j+1:]
			case k == j-1: // a whole line ending in CRLF
				dst = append(dst, b[:j+1]...)
				d.state, b = dotBeginLine, b[j+1:]
			default: // a CR, and no LF right after it in b
				dst = append(dst, b[:k+1]...)
				d.state, b = dotCR, b[k+1:]
			}
		case dotCR:
			// DotWriter passes the byte after a CR on without looking at
			// it again: an LF ends the line, anything else is data.
			c := b[0]
			dst = append(dst, c)
			d.state, b = dotData, b[1:]
			if c == '\n' {
				d.state = dotBeginLine
			}
		}
	}
	return dst
}

// end appends what DotWriter.Close writes: the last line's end if it has
// none, and the end of data.
func (d *dotStuffer) end(dst []byte) []byte {
	switch d.state {
	case dotBeginLine:
		return append(dst, ".\r\n"...)
	case dotCR:
		return append(dst, "\n.\r\n"...)
	}
	return append(dst, "\r\n.\r\n"...)
}
