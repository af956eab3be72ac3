package delivery

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/spool"
)

// No log line carries the body, even when the forwarder panics with it.
func TestLogsNeverCarryBody(t *testing.T) {
	t.Parallel()
	const secretBody = "Subject: hi\r\n\r\nTOPSECRET-BODY-LINE\r\n"
	core, logs := observer.New(zapcore.DebugLevel)
	dir := t.TempDir()
	sp, err := spool.Open(spool.Options{Dir: dir, Fsync: true, Clock: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := sp.Close(); err != nil {
			t.Error(err)
		}
	}()
	fw := &fake{steps: []step{
		func(_ context.Context, _ *envelope.Envelope, b []byte) (*envelope.Result, error) { panic(string(b)) },
		fails(temp), fails(perm),
	}}
	s, err := New(withSettings(Options{Spool: sp, Forwarder: fw, Clock: func() time.Time { return t0 }, Logger: zap.New(core), Rand: func() float64 { return 0.5 }}))
	if err != nil {
		t.Fatal(err)
	}
	env := &envelope.Envelope{ID: envelope.NewID(t0), To: []string{"a@example.org"}, Mailbox: "relay@example.com", Received: t0}
	if err := sp.Put(env, bytes.NewReader([]byte(secretBody))); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := s.DeliverNow(context.Background(), env.ID); err != nil {
			t.Fatal(err)
		}
	}
	if fw.n() != 3 || logs.Len() == 0 {
		t.Fatalf("%d calls, %d log lines", fw.n(), logs.Len())
	}
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	for _, e := range logs.All() {
		buf, err := enc.EncodeEntry(e.Entry, e.Context)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(buf.String(), "TOPSECRET") {
			t.Errorf("body in log line: %s", buf.String())
		}
	}
}
