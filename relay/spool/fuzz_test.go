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
		env, body, err := DecodeBytes(b)
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
		_, body2, err := DecodeBytes(rec)
		if err != nil || !bytes.Equal(body, body2) {
			t.Fatalf("re-encoded record: %v", err)
		}
	})
}
