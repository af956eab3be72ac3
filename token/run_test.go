package token

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/AzureAD/microsoft-authentication-library-for-go/apps/confidential"
	"github.com/o365relay/o365relay/config"
)

// Run's schedule — refresh ahead of expiry, back off during an outage — in
// a testing/synctest bubble: Run's timer and the source's clock are the
// bubble's, so the request times asserted are exact and hours of schedule
// take no real time. The one request is scripted (the acquire seam that
// separates an app registration from a managed identity): the requests
// themselves go to the imitation of Entra ID over real TLS in the other
// tests of this package, which a bubble cannot isolate.

// scripted is a token endpoint on the bubble's clock: each request is
// recorded and answered by answer.
type scripted struct {
	mu     sync.Mutex
	at     []time.Time
	answer func(n int) (confidential.AuthResult, error) // n counts from 1
}

func (sc *scripted) acquire(context.Context) (confidential.AuthResult, error) {
	sc.mu.Lock()
	sc.at = append(sc.at, time.Now())
	n := len(sc.at)
	sc.mu.Unlock()
	return sc.answer(n)
}

func (sc *scripted) times(start time.Time) []time.Duration {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	var out []time.Duration
	for _, at := range sc.at {
		out = append(out, at.Sub(start))
	}
	return out
}

// lifetimeToken answers every request with a new token valid for life.
func lifetimeToken(life time.Duration) func(int) (confidential.AuthResult, error) {
	return func(n int) (confidential.AuthResult, error) {
		return confidential.AuthResult{AccessToken: fmt.Sprintf("eyJ.token-%d.sig", n), ExpiresOn: time.Now().Add(life)}, nil
	}
}

// runScripted starts Run on a source whose requests sc answers. Call it
// inside the bubble.
func runScripted(t *testing.T, sc *scripted) *EntraSource {
	t.Helper()
	s, err := NewSource(Options{TenantID: "00000000-0000-0000-0000-0000000000aa", ClientID: testClientID,
		AuthorityHost: config.DefaultAuthorityHost, Scope: config.DefaultScope,
		Credential: Credential{ClientSecret: "not-sent"}})
	if err != nil {
		t.Fatal(err)
	}
	s.acquire = sc.acquire
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// A 60-minute token (Entra's usual) is refreshed with 20 minutes left
// (lead = max(10 min, L/3), at most L/2): Run fetches one at start, then
// every 40 minutes, in the background; callers get the newest token
// without a request of their own.
func TestRunRefreshesBeforeExpiry(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		sc := &scripted{answer: lifetimeToken(time.Hour)}
		start := time.Now()
		s := runScripted(t, sc)
		time.Sleep(150 * time.Minute)
		synctest.Wait()
		want := []time.Duration{0, 40 * time.Minute, 80 * time.Minute, 120 * time.Minute}
		if got := sc.times(start); !equalDurations(got, want) {
			t.Fatalf("requests at %v, want %v", got, want)
		}
		tok, err := s.Token(context.Background())
		if err != nil || tok.Value.Reveal() != "eyJ.token-4.sig" || !tok.ExpiresOn.Equal(start.Add(120*time.Minute+time.Hour)) {
			t.Errorf("Token after the background refreshes: %v (expires +%v), %v; want the fourth, until +3h", tok.Value.Reveal(), tok.ExpiresOn.Sub(start), err)
		}
		if n := len(sc.times(start)); n != 4 {
			t.Errorf("Token made a request of its own (%d requests)", n)
		}
		st := s.Status()
		if !st.HasToken || !st.LastRefresh.Equal(start.Add(120*time.Minute)) || !st.NextRefresh.Equal(start.Add(160*time.Minute)) {
			t.Errorf("status %+v", st)
		}
	})
}

// A cold relay during an outage: Run retries along the backoff, each delay
// drawn from [d/2, d] with d doubling from 1 s to the 5-minute cap, never
// faster; callers meanwhile get the last error at once, without a request;
// the first request after the outage gets a token and ends the backoff.
func TestRunBacksOffDuringOutage(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		down := true
		sc := &scripted{answer: func(n int) (confidential.AuthResult, error) {
			mu.Lock()
			defer mu.Unlock()
			if down {
				return confidential.AuthResult{}, errors.New("connection refused")
			}
			return lifetimeToken(time.Hour)(n)
		}}
		start := time.Now()
		s := runScripted(t, sc)
		time.Sleep(30 * time.Minute)
		synctest.Wait()
		got := sc.times(start)
		if got[0] != 0 {
			t.Fatalf("first request at +%v, want at once", got[0])
		}
		d := time.Second
		for i := 1; i < len(got); i++ {
			if gap := got[i] - got[i-1]; gap < d/2 || gap > d {
				t.Errorf("delay %d: %v, want within [%v, %v]", i, gap, d/2, d)
			}
			d = min(2*d, 5*time.Minute)
		}
		// 1+2+…+256 s is ~8.5 min at most; then at most 5 min apart: at
		// least 9 requests in 30 min, and no more than the halves allow.
		if len(got) < 9 || len(got) > 16 {
			t.Errorf("%d requests in 30 minutes of outage: %v", len(got), got)
		}
		n := len(got)
		if _, err := s.Token(context.Background()); err == nil || len(sc.times(start)) != n {
			t.Errorf("Token during the backoff: %v after %d requests, want the last error and no request", err, len(sc.times(start))-n)
		}
		mu.Lock()
		down = false
		mu.Unlock()
		time.Sleep(5 * time.Minute) // the longest backoff
		synctest.Wait()
		if tok, err := s.Token(context.Background()); err != nil || tok.Value.IsZero() {
			t.Fatalf("no token after the outage: %v", err)
		}
		if st := s.Status(); st.LastError != nil || !st.HasToken || len(sc.times(start)) != n+1 {
			t.Errorf("after the outage: status %+v, %d requests; want one more request, a token and no error", st, len(sc.times(start))-n)
		}
	})
}

func equalDurations(a, b []time.Duration) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
