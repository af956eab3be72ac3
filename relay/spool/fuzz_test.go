package spool

import (
	"bytes"
	"testing"
)

// FuzzDecode: the decoder never panics, and what it accepts re-encodes to a
// record that decodes to the same body.
func FuzzDecode(f *testing.F) {
	env := newEnv(1)
	for _, body := range [][]byte{nil, []byte("x\r\n"), {0, 0xff, '\n'}} {
		rec, err := Encode(env, body)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(rec)
	}
	f.Add([]byte(magic))
	f.Fuzz(func(t *testing.T, b []byte) {
		env, body, _, err := DecodeBytes(b)
		if err != nil {
			return
		}
		if env.Size != int64(len(body)) {
			t.Fatalf("Size %d, body %d", env.Size, len(body))
		}
		rec, err := Encode(env, body)
		if err != nil {
			t.Fatal(err)
		}
		_, body2, _, err := DecodeBytes(rec)
		if err != nil || !bytes.Equal(body, body2) {
			t.Fatalf("re-encoded record: %v", err)
		}
	})
}

// FuzzStateTail: a record with state blocks appended, then a block torn at
// any point and arbitrary bytes (what a crash mid-append leaves), still
// reads: the same body, and the newest intact state.
func FuzzStateTail(f *testing.F) {
	f.Add(uint8(0), uint16(0), []byte(nil))
	f.Add(uint8(1), uint16(10), []byte("O365STA\n"))
	f.Add(uint8(3), uint16(500), []byte("O365END\n\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, blocks uint8, cut uint16, junk []byte) {
		env := newEnv(1)
		body := []byte("Subject: x\r\n\r\nbody\r\n")
		rec, err := Encode(env, body)
		if err != nil {
			t.Fatal(err)
		}
		msgEnd := int64(len(rec))
		n := int(blocks % 8)
		for i := 1; i <= n; i++ {
			if rec, err = appendStateBlock(rec, &State{Attempts: i}, msgEnd); err != nil {
				t.Fatal(err)
			}
		}
		torn, err := appendStateBlock(nil, &State{Attempts: 99}, msgEnd)
		if err != nil {
			t.Fatal(err)
		}
		// What follows the intact blocks: the torn block, then the junk.
		// The junk may complete the torn block's marker (or the whole
		// block) or hold a block of its own: those cases have no single
		// expected state.
		after := append(append([]byte(nil), torn[:int(cut)%len(torn)]...), junk...)
		ownBlock := bytes.Contains(after, []byte(stateMarker)) || bytes.Contains(after, []byte(endMarker))
		rec = append(rec, after...)
		_, got, st, err := DecodeBytes(rec)
		if err != nil {
			if ownBlock {
				return
			}
			t.Fatalf("%d blocks, torn at %d, %d bytes of junk: %v", n, int(cut)%len(torn), len(junk), err)
		}
		if !bytes.Equal(got, body) {
			t.Fatalf("body %q", got)
		}
		if ownBlock {
			return
		}
		switch {
		case n == 0 && st != nil:
			t.Fatalf("state %+v, want none", st)
		case n > 0 && (st == nil || st.Attempts != n):
			t.Fatalf("state %+v, want attempts %d", st, n)
		}
	})
}
