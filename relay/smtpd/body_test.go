package smtpd

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/o365relay/o365relay/relay/internal/memtest"
	"github.com/o365relay/o365relay/relay/reply"
)

func check(in string, mode LineEndings, oneByte bool) (string, error) {
	var r io.Reader = strings.NewReader(in)
	if oneByte {
		r = iotest.OneByteReader(r)
	}
	out, err := io.ReadAll(newBodyChecker(r, mode))
	return string(out), err
}

func TestBodyCheckerReadBoundariesDoNotMatter(t *testing.T) {
	t.Parallel()
	for _, in := range []string{
		"a\r\nb\r\n", "a\nb\r\n", "a\rb\r\n", "a\r", "\r\r\n", "x\r\n\r\n\n", "",
	} {
		for _, mode := range []LineEndings{RejectBareLineEndings, NormalizeBareLineEndings} {
			o1, e1 := check(in, mode, false)
			o2, e2 := check(in, mode, true)
			if (e1 == nil) != (e2 == nil) || (e1 == nil && o1 != o2) {
				t.Errorf("%q mode %d: whole %q/%v, bytewise %q/%v", in, mode, o1, e1, o2, e2)
			}
		}
	}
}

func TestBodyCheckerCRLFPassesUnchanged(t *testing.T) {
	t.Parallel()
	in := "Subject: x\r\n\r\n\x01\xff binary-ish\r\n" + strings.Repeat("y", 100000) + "\r\n"
	out, err := check(in, RejectBareLineEndings, false)
	if err != nil || out != in {
		t.Fatalf("err %v, changed=%v", err, out != in)
	}
}

func TestBodyCheckerTrailingBareCR(t *testing.T) {
	t.Parallel()
	if _, err := check("x\r", RejectBareLineEndings, false); reply.As(err) == nil || reply.As(err).Code != 550 {
		t.Fatalf("trailing bare CR: %v", err)
	}
	if out, err := check("x\r", NormalizeBareLineEndings, false); err != nil || out != "x\r\n" {
		t.Fatalf("normalise trailing CR: %q %v", out, err)
	}
}

// FuzzBodyChecker: whatever comes in, the output never has a bare CR or LF,
// normalising is idempotent, and reject mode either errors or passes the input
// through unchanged.
func FuzzBodyChecker(f *testing.F) {
	for _, s := range []string{"a\r\nb\r\n", "a\nb", "\r", "\r\n.\r\n", "Received: x\r\n\r\n", "\n.\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		norm, err := io.ReadAll(newBodyChecker(bytes.NewReader(in), NormalizeBareLineEndings))
		if err != nil && reply.As(err) == nil {
			t.Fatalf("unexpected error %v", err)
		}
		if err == nil {
			for i, b := range norm {
				if b == '\n' && (i == 0 || norm[i-1] != '\r') {
					t.Fatalf("bare LF in output %q", norm)
				}
				if b == '\r' && (i+1 >= len(norm) || norm[i+1] != '\n') {
					t.Fatalf("bare CR in output %q", norm)
				}
			}
			again, err2 := io.ReadAll(newBodyChecker(bytes.NewReader(norm), RejectBareLineEndings))
			if err2 != nil || !bytes.Equal(again, norm) {
				t.Fatalf("normalised output not accepted unchanged: %v", err2)
			}
		}
		strict, err := io.ReadAll(newBodyChecker(bytes.NewReader(in), RejectBareLineEndings))
		if err == nil && !bytes.Equal(strict, in) {
			t.Fatalf("reject mode changed an accepted body")
		}
	})
}

// BenchmarkBodyChecker is the body checker alone on a 1 MiB message of
// 78-octet CRLF lines (memtest's), in both modes.
func BenchmarkBodyChecker(b *testing.B) {
	body, err := io.ReadAll(memtest.Reader(1 << 20))
	if err != nil {
		b.Fatal(err)
	}
	for _, mode := range []LineEndings{RejectBareLineEndings, NormalizeBareLineEndings} {
		b.Run(fmt.Sprintf("mode=%d", mode), func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := io.Copy(io.Discard, newBodyChecker(bytes.NewReader(body), mode)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
