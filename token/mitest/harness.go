package mitest

import "strings"

// TB is the part of testing.TB that Start and SetEnv use (this package
// does not import testing: the demo may use it too).
type TB interface {
	Helper()
	Cleanup(func())
	Error(args ...any)
	Errorf(format string, args ...any)
	Fatal(args ...any)
	Setenv(key, value string)
}

// Start starts a server for a test and, at its end, fails the test for
// every violation the server saw and closes it.
func Start(t TB, o Options) *Server {
	t.Helper()
	s, err := NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if v := s.Violations(); len(v) > 0 {
			t.Errorf("managed identity endpoint saw violations: %q", v)
		}
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// SetEnv makes MSAL in this process pick the server's source: it clears
// every variable of SourceEnv and sets Env's (for the rest of the test, so
// the test cannot run in parallel).
func (s *Server) SetEnv(t TB) {
	t.Helper()
	for _, k := range SourceEnv {
		t.Setenv(k, "")
	}
	for _, kv := range s.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
}
