package upstream

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/o365relay/o365relay/relay/exchangetest"
)

// TestNoSecretsInLogs runs failing and succeeding deliveries with debug
// logging on both sides and checks no token or XOAUTH2 payload is logged.
func TestNoSecretsInLogs(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zapcore.DebugLevel)
	log := zap.New(core)
	e := newEnv(t, setup{
		badToks: 1,
		fake:    func(o *exchangetest.Options) { o.Logger = log.Named("fake") },
		client:  func(o *Options) { o.Logger = log.Named("client") },
	})
	first, err := e.tokens.Token(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.Deliver(ctxT(t), testEnv(), strings.NewReader(simpleBody)); err != nil {
		t.Fatal(err)
	}
	e.fake.Inject(exchangetest.Fault{Stage: "mail", Drop: true})
	if _, err := e.client.Deliver(ctxT(t), testEnv(), strings.NewReader(simpleBody)); err != nil {
		t.Fatal(err)
	}
	if logs.Len() == 0 {
		t.Fatal("nothing was logged; the test would prove nothing")
	}
	secrets := []string{first.Value.Reveal(), e.tokens.current().Reveal(), "auth=Bearer", "hello\r\n"}
	for _, entry := range logs.All() {
		text := entry.Message
		for k, v := range entry.ContextMap() {
			text += " " + k + "=" + toString(v)
		}
		for _, s := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("log entry contains a secret: %.80q", text)
			}
		}
	}
}

func toString(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	if e, ok := v.(error); ok {
		return e.Error()
	}
	return ""
}

func TestCollectors(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewPedanticRegistry()
	for _, c := range Collectors() {
		if err := reg.Register(c); err != nil {
			t.Fatal(err)
		}
	}
	countReply("auth", 535)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "o365relay_upstream_") {
			t.Errorf("metric %s not named o365relay_upstream_*", mf.GetName())
		}
	}
	if len(mfs) == 0 {
		t.Error("no metrics gathered")
	}
}
