package spool

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"hash/crc32"
	"io"
)

// State blocks. A record's mutable delivery state is appended to the record
// itself, after the message trailer, instead of living in a separate file
// (see docs/spool.md):
//
//	state   JSON of State
//	footer  uint32 length of the JSON, uint64 msgEnd (the offset just past
//	        the message trailer), uint32 CRC-32C of JSON, length and msgEnd,
//	        "O365STA\n"
//
// The newest state is the last block, found from the end of the file with
// one read. A block cut short by a crash (a torn append) fails its checksum;
// the reader then takes the last intact block before it, or the trailer (no
// state yet: a fresh message). msgEnd locates the body's trailer without
// reading the body.
const (
	stateMarker     = "O365STA\n"
	stateFooterSize = 4 + 8 + 4 + 8
	tailRead        = 1 << 10 // one read from the end covers a typical state block
	maxStateBlock   = 1 << 20 // a state (recipient replies) larger than this is refused
	maxTailScan     = 8 << 20 // how far back a torn tail is searched
)

// appendStateBlock encodes st as a block for a record whose message part
// ends at msgEnd.
func appendStateBlock(b []byte, st *State, msgEnd int64) ([]byte, error) {
	j, err := json.Marshal(st)
	if err != nil {
		return nil, err
	}
	if len(j) > maxStateBlock {
		return nil, corruptf("state of %d bytes exceeds %d", len(j), maxStateBlock)
	}
	start := len(b)
	b = append(b, j...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(j)))
	b = binary.BigEndian.AppendUint64(b, uint64(msgEnd))
	sum := crc32.Checksum(b[start:], castagnoli)
	b = binary.BigEndian.AppendUint32(b, sum)
	return append(b, stateMarker...), nil
}

// tail is what the end of a record says: where its message part ends, the
// body length its trailer records, and the newest state (nil: none yet).
type tail struct {
	msgEnd int64
	n      int64 // body length from the trailer
	sum    uint32
	state  *State
}

// readTail parses the end of a record of size bytes whose header is hl bytes
// long, reading from ra.
func readTail(ra io.ReaderAt, size, hl int64) (tail, error) {
	off := max(size-tailRead, 0)
	buf := make([]byte, size-off)
	if _, err := ra.ReadAt(buf, off); err != nil && err != io.EOF {
		return tail{}, err
	}
	if t, ok := parseTailAt(buf, off, size, hl); ok {
		return t, nil
	}
	if low, ok := footerReach(buf, size); ok && low < off && low >= 0 {
		// A state block larger than the first read, or blocks between it
		// and the trailer: read back to what the footer points at.
		buf2 := make([]byte, size-low)
		if _, err := ra.ReadAt(buf2, low); err != nil && err != io.EOF {
			return tail{}, err
		}
		if t, ok := parseTailAt(buf2, low, size, hl); ok {
			return t, nil
		}
	}
	// A torn append: search further back for the last intact block.
	off = max(size-maxTailScan, 0)
	buf = make([]byte, size-off)
	if _, err := ra.ReadAt(buf, off); err != nil && err != io.EOF {
		return tail{}, err
	}
	for hi := int64(len(buf)); hi > 0; {
		if t, ok := parseTailAt(buf[:hi], off, off+hi, hl); ok {
			return t, nil
		}
		// The next candidate end: just after an earlier marker.
		if hi = candidateEnd(buf, hi); hi < 0 {
			break
		}
	}
	return tail{}, corruptf("no intact trailer or state block at the end")
}

// footerReach returns how far back a state footer at the end of buf (which
// ends at size) reaches: the start of its message trailer or of its JSON,
// whichever is earlier.
func footerReach(buf []byte, size int64) (int64, bool) {
	if !bytes.HasSuffix(buf, []byte(stateMarker)) || len(buf) < stateFooterSize {
		return 0, false
	}
	f := buf[len(buf)-stateFooterSize:]
	jl := int64(binary.BigEndian.Uint32(f[0:4]))
	msgEnd := int64(binary.BigEndian.Uint64(f[4:12]))
	if jl > maxStateBlock || msgEnd > size || size-msgEnd > maxTailScan {
		return 0, false
	}
	return min(msgEnd-trailerSize, size-stateFooterSize-jl), true
}

// candidateEnd returns the largest offset below hi at which an intact
// state block or trailer could end (just past a marker and, for the
// trailer, its length and checksum), -1 if there is none.
func candidateEnd(buf []byte, hi int64) int64 {
	for k := hi - 1; k > 0; {
		i := int64(bytes.LastIndex(buf[:k], []byte(stateMarker)))
		j := int64(bytes.LastIndex(buf[:k], []byte(endMarker)))
		if i < 0 && j < 0 {
			return -1
		}
		if j > i {
			if e := j + trailerSize; e < hi {
				return e
			}
			k = j + int64(len(endMarker)) - 1 // look before this marker next
			continue
		}
		return i + int64(len(stateMarker))
	}
	return -1
}

// parseTailAt tries to read a record ending at end (buf holds the bytes
// [off, end)): an intact state block or an intact message trailer.
func parseTailAt(buf []byte, off, end, hl int64) (tail, bool) {
	if bytes.HasSuffix(buf, []byte(stateMarker)) && len(buf) >= stateFooterSize {
		f := buf[len(buf)-stateFooterSize:]
		jl := int64(binary.BigEndian.Uint32(f[0:4]))
		msgEnd := int64(binary.BigEndian.Uint64(f[4:12]))
		sum := binary.BigEndian.Uint32(f[12:16])
		start := int64(len(buf)) - stateFooterSize - jl
		if jl > maxStateBlock || start < 0 || msgEnd < hl+trailerSize || msgEnd > end-stateFooterSize-jl {
			return tail{}, false
		}
		if crc32.Checksum(buf[start:int64(len(buf))-12], castagnoli) != sum {
			return tail{}, false
		}
		var st State
		if json.Unmarshal(buf[start:start+jl], &st) != nil {
			return tail{}, false
		}
		t, ok := trailerAt(buf, off, msgEnd, hl)
		if !ok {
			return tail{}, false
		}
		t.state = &st
		return t, true
	}
	return trailerAt(buf, off, end, hl)
}

// trailerAt reads the message trailer that ends at msgEnd, if buf holds it.
func trailerAt(buf []byte, off, msgEnd, hl int64) (tail, bool) {
	s := msgEnd - trailerSize - off
	if s < 0 || msgEnd-off > int64(len(buf)) {
		return tail{}, false
	}
	n, sum, err := parseTrailer(buf[s : s+trailerSize])
	if err != nil || hl+n+trailerSize != msgEnd {
		return tail{}, false
	}
	return tail{msgEnd: msgEnd, n: n, sum: sum}, true
}
