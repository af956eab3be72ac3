package upstream

import (
	"bufio"
	"bytes"
	"net/textproto"
	"testing"
)

// dotWriterOutput is what net/textproto's DotWriter (go-smtp's DATA
// writer) writes for chunks, Close included.
func dotWriterOutput(t testing.TB, chunks [][]byte) []byte {
	var out bytes.Buffer
	bw := bufio.NewWriter(&out)
	w := textproto.NewWriter(bw).DotWriter()
	for _, c := range chunks {
		if _, err := w.Write(c); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// split cuts b at the positions the cut bytes give (a deterministic
// function of the fuzzer's input).
func split(b, cuts []byte) [][]byte {
	var out [][]byte
	for _, c := range cuts {
		if len(b) == 0 {
			break
		}
		n := int(c) % (len(b) + 1)
		out = append(out, b[:n])
		b = b[n:]
	}
	return append(out, b)
}

// FuzzDotStuffer: dotStuffer's output is DotWriter's, byte for byte, for
// any input split any way.
func FuzzDotStuffer(f *testing.F) {
	for _, s := range []string{
		"", ".", ".\r\n", "a\r\n.\r\n", "..\r\n", "a\nb\n", "\r", "\r\r\n", "a\r\r\n.b\r\n", "x\r\n.", "\n.\n",
		"Received: from x\r\n\tby y\r\n\r\n.hidden\r\n..\r\nend\r\n", "line\rbare\r\n", "\r\n\r\n.\r\n",
	} {
		f.Add([]byte(s), []byte{1, 3})
	}
	f.Fuzz(func(t *testing.T, b, cuts []byte) {
		chunks := split(b, cuts)
		want := dotWriterOutput(t, chunks)
		var d dotStuffer
		var got []byte
		for _, c := range chunks {
			got = d.append(got, c)
		}
		got = d.end(got)
		if !bytes.Equal(got, want) {
			t.Fatalf("chunks %q:\n got %q\nwant %q", chunks, got, want)
		}
	})
}

// BenchmarkDotStuff compares the line-at-a-time stuffer with DotWriter on a
// 10 KB body of 78-octet lines (report-only).
func BenchmarkDotStuff(b *testing.B) {
	body := bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef012345678901\r\n"), 10<<10/78)
	b.Run("dotStuffer", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		b.ReportAllocs()
		out := make([]byte, 0, 2*len(body)+5)
		for range b.N {
			var d dotStuffer
			out = d.end(d.append(out[:0], body))
		}
	})
	b.Run("textproto.DotWriter", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		b.ReportAllocs()
		var out bytes.Buffer
		bw := bufio.NewWriter(&out)
		for range b.N {
			out.Reset()
			w := textproto.NewWriter(bw).DotWriter()
			if _, err := w.Write(body); err != nil {
				b.Fatal(err)
			}
			if err := w.Close(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
