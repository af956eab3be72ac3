package spool

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"

	"github.com/o365relay/o365relay/relay/envelope"
)

// Record format of queue/<id>.msg, versions 1 and 2 (all integers
// big-endian):
//
//	magic   "O365SPL" + version byte (8 bytes)
//	envlen  uint32, length of the envelope JSON (≤ maxEnvelope)
//	env     envelope JSON (envelope.Envelope; Size is authoritative in the trailer)
//	body    the message data as received (CRLF lines, no final dot)
//	trailer "O365END\n" (8 bytes), uint64 body length, uint32 CRC-32C
//	        (Castagnoli) of everything from the magic to the end of the body
//
// The length and checksum come last because the body is streamed. Version 2
// is version 1 followed by zero or more state blocks (tail.go); version 1
// records (written before state blocks existed, their state in a .state
// file beside them) are read as they are and get state blocks appended
// when their state changes. The version byte lets the format evolve; an
// older relay refuses a version-2 record rather than misread it, and
// unknown versions are quarantined, not guessed at.
const (
	magic        = "O365SPL"
	version1     = 1
	version2     = 2
	headerFixed  = 8 + 4
	endMarker    = "O365END\n"
	trailerSize  = 8 + 8 + 4
	maxEnvelope  = 1 << 20
	copyBufferSz = 64 << 10
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ErrCorrupt is wrapped by every decoding failure: the record is not a whole,
// intact version-1 record.
var ErrCorrupt = errors.New("spool: corrupt record")

func corruptf(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, a...))
}

// encodeHeader returns magic, version, length and envelope JSON.
func encodeHeader(env *envelope.Envelope) ([]byte, error) {
	j, err := json.Marshal(env)
	if err != nil {
		return nil, err
	}
	if len(j) > maxEnvelope {
		return nil, fmt.Errorf("envelope of %d bytes exceeds %d", len(j), maxEnvelope)
	}
	b := make([]byte, 0, headerFixed+len(j))
	b = append(b, magic...)
	b = append(b, version2)
	b = binary.BigEndian.AppendUint32(b, uint32(len(j)))
	return append(b, j...), nil
}

func encodeTrailer(n int64, sum uint32) []byte {
	b := make([]byte, 0, trailerSize)
	b = append(b, endMarker...)
	b = binary.BigEndian.AppendUint64(b, uint64(n))
	return binary.BigEndian.AppendUint32(b, sum)
}

// readHeader reads and parses the header; h receives the header bytes for the
// checksum (may be nil). It returns the envelope and the header length.
func readHeader(r io.Reader, h hash.Hash32) (*envelope.Envelope, int64, error) {
	var fixed [headerFixed]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return nil, 0, corruptf("short header: %v", err)
	}
	if string(fixed[:7]) != magic {
		return nil, 0, corruptf("bad magic")
	}
	if fixed[7] != version1 && fixed[7] != version2 {
		return nil, 0, corruptf("unknown version %d", fixed[7])
	}
	n := binary.BigEndian.Uint32(fixed[8:])
	if n > maxEnvelope {
		return nil, 0, corruptf("envelope length %d", n)
	}
	j := make([]byte, n)
	if _, err := io.ReadFull(r, j); err != nil {
		return nil, 0, corruptf("short envelope: %v", err)
	}
	var env envelope.Envelope
	if err := json.Unmarshal(j, &env); err != nil {
		return nil, 0, corruptf("envelope: %v", err)
	}
	if !env.ID.Valid() {
		return nil, 0, corruptf("invalid id")
	}
	if h != nil {
		h.Write(fixed[:])
		h.Write(j)
	}
	return &env, int64(headerFixed) + int64(n), nil
}

func parseTrailer(t []byte) (int64, uint32, error) {
	if len(t) != trailerSize || string(t[:8]) != endMarker {
		return 0, 0, corruptf("bad trailer")
	}
	n := binary.BigEndian.Uint64(t[8:16])
	if n > 1<<62 {
		return 0, 0, corruptf("bad length")
	}
	return int64(n), binary.BigEndian.Uint32(t[16:]), nil
}

// Decode checks a whole record of size bytes read from r, streaming: it
// returns the envelope (with Size from the trailer) if header, length and
// checksum agree, and copies the body to body when that is not nil.
func Decode(r io.Reader, size int64, body io.Writer) (*envelope.Envelope, error) {
	h := crc32.New(castagnoli)
	env, hl, err := readHeader(r, h)
	if err != nil {
		return nil, err
	}
	n := size - hl - trailerSize
	if n < 0 {
		return nil, corruptf("truncated")
	}
	w := io.Writer(h)
	if body != nil {
		w = io.MultiWriter(h, body)
	}
	if _, err := io.CopyN(w, r, n); err != nil {
		return nil, corruptf("body: %v", err)
	}
	t := make([]byte, trailerSize)
	if _, err := io.ReadFull(r, t); err != nil {
		return nil, corruptf("short trailer: %v", err)
	}
	tn, sum, err := parseTrailer(t)
	if err != nil {
		return nil, err
	}
	if tn != n {
		return nil, corruptf("length %d, trailer says %d", n, tn)
	}
	if sum != h.Sum32() {
		return nil, corruptf("checksum mismatch")
	}
	env.Size = n
	return env, nil
}

// DecodeBytes checks a whole record file held in b (its state blocks
// included) and returns the envelope, the body and the newest state (nil:
// none yet). Fuzzing and tests use it.
func DecodeBytes(b []byte) (*envelope.Envelope, []byte, *State, error) {
	_, hl, err := readHeader(bytes.NewReader(b), nil)
	if err != nil {
		return nil, nil, nil, err
	}
	t, err := readTail(bytes.NewReader(b), int64(len(b)), hl)
	if err != nil {
		return nil, nil, nil, err
	}
	var body bytes.Buffer
	env, err := Decode(bytes.NewReader(b[:t.msgEnd]), t.msgEnd, &body)
	if err != nil {
		return nil, nil, nil, err
	}
	return env, body.Bytes(), t.state, nil
}

// Encode returns a whole record (tests, fuzz seeds, tools).
func Encode(env *envelope.Envelope, body []byte) ([]byte, error) {
	hdr, err := encodeHeader(env)
	if err != nil {
		return nil, err
	}
	h := crc32.New(castagnoli)
	h.Write(hdr)
	h.Write(body)
	out := append(hdr, body...)
	return append(out, encodeTrailer(int64(len(body)), h.Sum32())...), nil
}

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }

func binary32(b []byte) uint32 { return binary.BigEndian.Uint32(b) }
