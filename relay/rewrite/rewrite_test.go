package rewrite

import (
	"bytes"
	"crypto/rand"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func rewrite(t *testing.T, msg string) string {
	t.Helper()
	out, err := io.ReadAll(From(strings.NewReader(msg), "relay@contoso.example"))
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func TestRewriteFromKeepsDisplayNameAndOriginal(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ name, in, want string }{
		{"display name",
			"Received: from app\r\n\tby relay; date\r\nFrom: \"Billing <no-reply>\" <billing@app.example>\r\nSubject: hi\r\n\r\nbody\r\n",
			"Received: from app\r\n\tby relay; date\r\nFrom: \"Billing <no-reply>\" <relay@contoso.example>\r\nReply-To: \"Billing <no-reply>\" <billing@app.example>\r\nX-Original-From: \"Billing <no-reply>\" <billing@app.example>\r\nSubject: hi\r\n\r\nbody\r\n"},
		{"bare address, existing Reply-To kept",
			"Reply-To: desk@app.example\r\nfrom: billing@app.example\r\n\r\nbody",
			"Reply-To: desk@app.example\r\nFrom: <relay@contoso.example>\r\nX-Original-From: billing@app.example\r\n\r\nbody"},
		{"folded",
			"From: Billing\r\n <billing@app.example>\r\nTo: x@y\r\n\r\n",
			"From: Billing\r\n <relay@contoso.example>\r\nReply-To: Billing\r\n <billing@app.example>\r\nX-Original-From: Billing\r\n <billing@app.example>\r\nTo: x@y\r\n\r\n"},
		{"comment with brackets", "From: (a <b>) <c@d>\r\n\r\n", "From: (a <b>) <relay@contoso.example>\r\nReply-To: (a <b>) <c@d>\r\nX-Original-From: (a <b>) <c@d>\r\n\r\n"},
		{"list", "From: a@b, c@d\r\n\r\n", "From: <relay@contoso.example>\r\nReply-To: a@b, c@d\r\nX-Original-From: a@b, c@d\r\n\r\n"},
		{"no From", "Subject: x\r\n\r\nFrom: not a header\r\n", "Subject: x\r\n\r\nFrom: not a header\r\n"},
		{"header only", "From: <a@b>\r\n", "From: <relay@contoso.example>\r\nReply-To: <a@b>\r\nX-Original-From: <a@b>\r\n"},
	} {
		if got := rewrite(t, tc.in); got != tc.want {
			t.Errorf("%s:\n got %q\nwant %q", tc.name, got, tc.want)
		}
	}
}

// The body below the header is passed through byte for byte, whatever it
// holds (binary, lines that look like headers, long lines), and however the
// source splits its reads.
func TestRewriteFromBodyByteIdentical(t *testing.T) {
	t.Parallel()
	body := make([]byte, 3<<20)
	if _, err := rand.Read(body); err != nil {
		t.Fatal(err)
	}
	copy(body, "From: evil@x\r\n\r\n")
	hdr := "From: App <app@example.com>\r\nSubject: s\r\n\r\n"
	for _, wrap := range []func(io.Reader) io.Reader{
		func(r io.Reader) io.Reader { return r },
		iotest.OneByteReader,
		iotest.HalfReader,
	} {
		src := wrap(io.MultiReader(strings.NewReader(hdr), bytes.NewReader(body)))
		out, err := io.ReadAll(From(src, "relay@contoso.example"))
		if err != nil {
			t.Fatal(err)
		}
		i := bytes.Index(out, []byte("\r\n\r\n"))
		if i < 0 || !bytes.Equal(out[i+4:], body) {
			t.Fatalf("body changed (%d bytes out)", len(out))
		}
		if !bytes.HasPrefix(out, []byte("From: App <relay@contoso.example>\r\n")) {
			t.Errorf("header %q", out[:i])
		}
	}
}

// A header section longer than the bound is not buffered further and passes
// unchanged; a read error of the source is returned.
func TestRewriteFromBounds(t *testing.T) {
	t.Parallel()
	long := "From: a@b\r\n" + strings.Repeat("X-Pad: "+strings.Repeat("p", 990)+"\r\n", MaxHeader/990+2) + "\r\nbody"
	if got := rewrite(t, long); got != long {
		t.Error("oversized header changed")
	}
	_, err := io.ReadAll(From(iotest.ErrReader(io.ErrUnexpectedEOF), "m@x"))
	if err != io.ErrUnexpectedEOF {
		t.Errorf("err %v", err)
	}
}

// The bound is exact: a header section of MaxHeader octets, its
// empty line included, is rewritten; one octet more is not. The intake
// refuses the longer one for a rewriting sender (smtpd), relying on this.
func TestRewriteFromBoundIsExact(t *testing.T) {
	t.Parallel()
	for _, extra := range []int{-1, 0, 1} {
		head := "From: a@b\r\nX-Pad: "
		pad := MaxHeader + extra - len(head) - len("\r\n\r\n")
		msg := head + strings.Repeat("p", pad) + "\r\n\r\nbody"
		rewritten := strings.HasPrefix(rewrite(t, msg), "From: <relay@contoso.example>")
		if rewritten != (extra <= 0) {
			t.Errorf("header section of MaxHeader%+d octets: rewritten %v", extra, rewritten)
		}
	}
}

func FuzzRewriteFrom(f *testing.F) {
	f.Add([]byte("From: \"a\" <b@c>\r\n\r\nbody"))
	f.Add([]byte("From: (x\\) <y@z>\r\n\tq\r\n\r\n"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		out, err := io.ReadAll(From(bytes.NewReader(msg), "m@x"))
		if err != nil {
			t.Fatal(err)
		}
		// Whatever follows the first empty line is unchanged.
		if i := bytes.Index(msg, []byte("\r\n\r\n")); i >= 0 && !bytes.HasSuffix(out, msg[i:]) {
			t.Fatalf("body changed")
		}
	})
}
