package delivery

import (
	"context"
	"testing"
	"time"

	"github.com/o365relay/o365relay/relay/reply"
)

var conc432 = &reply.Error{Code: 432, Enhanced: reply.EnhancedCode{4, 3, 2}, Text: "Concurrent connections limit exceeded", Stage: reply.StageAuth}

// TestConnectionLimitRestores: a lowered limit grows back by one per
// RestoreAfter, up to the configured one; a 432 with nothing of ours in
// flight drops it to one and is the message's to report.
func TestConnectionLimitRestores(t *testing.T) {
	t.Parallel()
	f := setup(t, &fake{steps: []step{fails(conc432), ok}})
	f.s.o.Limits = func(string) Limits { return Limits{Connections: 3} }
	out, err := f.s.attempt(context.Background(), f.envID)
	if err != nil || out.slotRetry || len(out.Pending) != 2 {
		t.Fatalf("alone: %+v %v", out, err)
	}
	if n := f.s.ConnectionLimit("relay@example.com"); n != 1 {
		t.Fatalf("limit %d after a 432 with nothing of ours, want 1", n)
	}
	for _, want := range []int{2, 3, 3} {
		f.clk.Set(f.clk.Now().Add(time.Minute))
		if !f.s.enter("x", "relay@example.com", 3) {
			t.Fatal("enter refused")
		}
		f.s.leave("relay@example.com")
		if n := f.s.ConnectionLimit("relay@example.com"); n != want {
			t.Errorf("limit %d, want %d", n, want)
		}
	}
}
