package smtpd

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/o365relay/o365relay/relay/envelope"
)

// fuzzSink stores what it is given, like the spool, and remembers the IDs
// so the fuzz target can match every 250 to a stored message.
type fuzzSink struct {
	mu     sync.Mutex
	stored map[envelope.ID][]byte
}

func (k *fuzzSink) Submit(ctx context.Context, env *envelope.Envelope, body io.Reader) (string, error) {
	b, err := io.ReadAll(body)
	if err != nil {
		return "", err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.stored[env.ID] = b
	return "OK " + string(env.ID) + " queued", nil
}

func (k *fuzzSink) take() map[envelope.ID][]byte {
	k.mu.Lock()
	defer k.mu.Unlock()
	s := k.stored
	k.stored = map[envelope.ID][]byte{}
	return s
}

type fuzzServer struct {
	srv  *Server
	sink *fuzzSink
	logs *observer.ObservedLogs
}

// startFuzzServer runs one listener for the whole fuzzing process, with small
// limits so that fuzzed input reaches them.
func startFuzzServer(f testing.TB, mode LineEndings, mods ...func(*Options)) *fuzzServer {
	sink := &fuzzSink{stored: map[envelope.ID][]byte{}}
	core, logs := observer.New(zap.WarnLevel)
	opts := Options{
		Addr:            "127.0.0.1:0",
		AllowedNetworks: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		Hostname:        "relay.fuzz",
		Sink:            sink,
		Route: func(sender string) (string, bool) {
			return "relay@contoso.com", !strings.HasPrefix(sender, "refused")
		},
		MaxMessageBytes:    4096,
		MaxRecipients:      5,
		CommandTimeout:     2 * time.Second,
		DataTimeout:        2 * time.Second,
		MaxSessionDuration: 4 * time.Second,
		LineEndings:        mode,
		Logger:             zap.New(core),
	}
	for _, m := range mods {
		m(&opts)
	}
	s := serve(f, opts)
	return &fuzzServer{srv: s, sink: sink, logs: logs}
}

var (
	replyLine = regexp.MustCompile(`^[2-5][0-9][0-9][ -]`)
	queuedID  = regexp.MustCompile(`^250 2\.0\.0 OK (\S+) queued$`)
)

// fuzzSessionSeeds are whole client streams: ordinary sessions, the
// refusals, and the tricks (smuggling line endings, pipelining, lies in
// SIZE=, foreign protocols).
var fuzzSessionSeeds = []string{
	"EHLO app\r\nMAIL FROM:<app@contoso.com>\r\nRCPT TO:<a@example.org>\r\nDATA\r\nSubject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n",
	"HELO app\r\nMAIL FROM:<>\r\nRCPT TO:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n..dot\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n",
	"EHLO app\r\nMAIL FROM:<app@contoso.com>\r\nRCPT TO:<a@example.org>\r\nDATA\r\nSubject: x\n\nsmuggled\n.\nMAIL FROM:<evil@example.net>\r\n.\r\n",
	"EHLO app\r\nMAIL FROM:<app@contoso.com>\r\nRCPT TO:<a@example.org>\r\nDATA\r\nSubject: x\r\r\n\r\r\nb\rody\r\r\n.\r\n",
	"EHLO app\r\nMAIL FROM:<app@contoso.com> SIZE=10\r\nRCPT TO:<a@example.org>\r\nDATA\r\n" + strings.Repeat("0123456789abcdef\r\n", 300) + ".\r\nNOOP\r\n",
	"EHLO app\r\nMAIL FROM:<app@contoso.com> SIZE=99999\r\nMAIL FROM:<j\xc3\xb6rg@contoso.com>\r\nMAIL FROM:<j\xc3\xb6rg@contoso.com> SMTPUTF8\r\nRCPT TO:<b\xc3\xbccher@example.org>\r\n",
	"EHLO app\r\nMAIL FROM:<refused@example.net>\r\nRCPT TO:<a@example.org>\r\nDATA\r\nx\r\n.\r\n",
	"EHLO app\r\nMAIL FROM:<app@contoso.com>\r\nRCPT TO:<1@x.org>\r\nRCPT TO:<2@x.org>\r\nRCPT TO:<3@x.org>\r\nRCPT TO:<4@x.org>\r\nRCPT TO:<5@x.org>\r\nRCPT TO:<6@x.org>\r\n",
	"EHLO app\r\nMAIL FROM:<app@contoso.com>\r\nRCPT TO:<a@example.org>\r\nDATA\r\n" + strings.Repeat("Received: from x\r\n", 51) + "\r\nx\r\n.\r\n",
	"EHLO app\r\nMAIL FROM:<app@contoso.com>\r\nRCPT TO:<a@example.org>\r\nBDAT 5 LAST\r\nhello",
	"BOGUS\r\nMAIL\r\nRCPT TO:x\r\nEHLO\r\n",
	"GET / HTTP/1.1\r\nHost: relay\r\n\r\n",
	"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
	"EHLO " + strings.Repeat("a", 2100) + "\r\n",
	"EHLO app\r\nMAIL FROM:<app@contoso.com>\r\nRCPT TO:<a@example.org>\r\nDATA\r\nSubject: x\r\n\r\n" + strings.Repeat("y", 2100) + "\r\n.\r\n",
	"EHLO app\r\nSTARTTLS\r\nAUTH PLAIN AGFiYwBkZWY=\r\nVRFY root\r\nEXPN all\r\nHELP\r\n",
	"EHLO app\r\nMAIL FROM:<app@contoso.com>\r\nRCPT TO:<a@example.org>\r\nDATA\r\nSubject: unterminated\r\n",
}

// FuzzSession feeds a fuzzed byte stream to the listener as one client's
// whole session, over loopback TCP, and checks what must hold whatever the
// client sends:
//   - nothing panics (a contained panic is logged, and fails the target);
//   - every line the server sends is a reply line with a valid code;
//   - every "250 ... queued" names a message the sink stored, and the sink
//     stores no more messages than the client was told 354 for;
//   - a stored body has CRLF line endings only, starts with our Received:
//     header and has no more than 50 of them;
//   - the server ends the session once the client has stopped sending.
func FuzzSession(f *testing.F) {
	for _, s := range fuzzSessionSeeds {
		f.Add(false, []byte(s))
		f.Add(true, []byte(s))
	}
	servers := map[bool]*fuzzServer{
		false: startFuzzServer(f, RejectBareLineEndings),
		true:  startFuzzServer(f, NormalizeBareLineEndings),
	}
	f.Fuzz(func(t *testing.T, normalize bool, in []byte) {
		fuzzSessionOnce(t, servers[normalize], in)
	})
}

// fuzzSessionOnce runs one session and returns the reply lines.
func fuzzSessionOnce(t *testing.T, fs *fuzzServer, in []byte) []string {
	{
		fs.sink.take()
		fs.logs.TakeAll()
		c, err := net.DialTimeout("tcp", fs.srv.Addr().String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		wrote := make(chan struct{})
		go func() {
			defer close(wrote)
			// The server may close first; a failed write is fine.
			_, _ = c.Write(in)
			_ = c.(*net.TCPConn).CloseWrite()
		}()
		out, err := io.ReadAll(c)
		<-wrote
		if err != nil && !isReset(err) {
			t.Fatalf("server did not end the session: %v (said %q)", err, tail(out))
		}
		stored := fs.sink.take()

		lines := strings.Split(string(out), "\r\n")
		lines = lines[:len(lines)-1] // the last piece is unterminated or empty
		if len(lines) == 0 || !strings.HasPrefix(lines[0], "220 ") {
			if !isReset(err) {
				t.Fatalf("no greeting: %q", tail(out))
			}
		}
		go354, queued := 0, 0
		for _, l := range lines {
			if !replyLine.MatchString(l) {
				t.Fatalf("not a reply line: %q", l)
			}
			if strings.HasPrefix(l, "354 ") {
				go354++
			}
			if m := queuedID.FindStringSubmatch(l); m != nil {
				queued++
				if _, ok := stored[envelope.ID(m[1])]; !ok {
					t.Fatalf("250 for %s, which the sink did not store", m[1])
				}
			} else if strings.HasPrefix(l, "250 2.0.0 OK") {
				t.Fatalf("an acknowledgement without our queue ID: %q", l)
			}
		}
		if len(stored) > go354 {
			t.Fatalf("sink stored %d messages after %d DATA commands; server said %q", len(stored), go354, tail(out))
		}
		for id, b := range stored {
			if !bytes.HasPrefix(b, []byte("Received: from ")) {
				t.Fatalf("%s: stored body does not start with our Received: %q", id, tail(b))
			}
			for i, ch := range b {
				if ch == '\n' && (i == 0 || b[i-1] != '\r') {
					t.Fatalf("%s: bare LF stored at %d", id, i)
				}
				if ch == '\r' && (i+1 == len(b) || b[i+1] != '\n') {
					t.Fatalf("%s: bare CR stored at %d", id, i)
				}
			}
			hdr := b
			if i := bytes.Index(b, []byte("\r\n\r\n")); i >= 0 {
				hdr = b[:i]
			}
			if n := bytes.Count(hdr, []byte("\r\nReceived:")) + 1; n > maxReceived+1 {
				t.Fatalf("%s: %d Received: headers stored", id, n)
			}
		}
		for _, e := range fs.logs.All() {
			if strings.Contains(e.Message, "panic") || strings.Contains(e.Message, "sink accepted") {
				t.Fatalf("%s: %v", e.Message, e.Context)
			}
		}
		return lines
	}
}

// isReset reports a connection the server closed while the client's data
// was still unread, which TCP turns into a reset: what was said before it
// may be cut short, and that is no violation.
func isReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "broken pipe"))
}

func tail(b []byte) string {
	if len(b) > 300 {
		b = b[len(b)-300:]
	}
	return string(b)
}
