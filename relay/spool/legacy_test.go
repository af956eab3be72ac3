package spool

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/o365relay/o365relay/relay/envelope"
)

// copyTree copies testdata into a temporary directory.
func copyTree(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o700)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

// TestReadsVersion1Spool: a spool written by the previous version (records
// of version 1, state in .state files beside them; testdata/v1spool was
// written by that code) is read as it is — nothing queued is lost on
// upgrade — and its records take state blocks from then on.
func TestReadsVersion1Spool(t *testing.T) {
	t.Parallel()
	dir := copyTree(t, "testdata/v1spool")
	s := open_(t, dir, nil)
	const fresh, deferred, failed = envelope.ID("06H241PA022TM2KB1PWHWX8"), envelope.ID("06H241PA047XVVD5ESM1HMG"), envelope.ID("06H241PA09W46F919QDZSXG")
	if items, _, _ := s.Stats(); items != 2 {
		t.Fatalf("items = %d, want 2", items)
	}
	want := "Subject: v1\r\n\r\nmessage from the previous version\r\n"
	for _, id := range []envelope.ID{fresh, deferred} {
		if got, err := readBody(t, s, id); err != nil || string(got) != want {
			t.Errorf("body of %s: %q %v", id, got, err)
		}
	}
	e, err := s.Get(fresh)
	if err != nil || e.State.Attempts != 0 || e.Envelope.Size != int64(len(want)) {
		t.Errorf("fresh: %+v %v", e, err)
	}
	e, err = s.Get(deferred)
	if err != nil || e.State.Attempts != 2 || e.State.Status("a@example.org") != Delivered || e.State.LastError == "" {
		t.Fatalf("deferred: %+v %v", e, err)
	}
	st := e.State
	st.Attempts = 3
	if err := s.SetState(deferred, st); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "queue", string(deferred)+".state")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the version-1 state file stays after a durable state block: %v", err)
	}
	if e, err := s.Get(deferred); err != nil || e.State.Attempts != 3 || e.State.Status("a@example.org") != Delivered {
		t.Errorf("after SetState: %+v %v", e, err)
	}
	if got, err := readBody(t, s, deferred); err != nil || string(got) != want {
		t.Errorf("body after a state block: %q %v", got, err)
	}
	fl, err := s.ListFailed()
	if err != nil || len(fl) != 1 || fl[0].Envelope.ID != failed || fl[0].State.Final == "" {
		t.Fatalf("ListFailed = %+v %v", fl, err)
	}
	if err := s.Retry(failed); err != nil {
		t.Fatal(err)
	}
	e, err = s.Get(failed)
	if err != nil || e.State.Attempts != 0 || e.State.Status("a@example.org") != Pending || e.State.Final != "" {
		t.Errorf("retried: %+v %v", e, err)
	}
	if names := names(t, filepath.Join(dir, "failed")); len(names) != 0 {
		t.Errorf("failed/ after Retry: %v", names)
	}
	for _, id := range []envelope.ID{fresh, deferred, failed} {
		if err := s.Remove(id); err != nil {
			t.Fatal(err)
		}
	}
	if names := names(t, filepath.Join(dir, "queue")); len(names) != 0 {
		t.Errorf("queue/ after Remove: %v", names)
	}
}

// TestLargeStateBlock: a state block larger than the first read from the
// end (500 recipients' replies) and a body larger than it are read back.
func TestLargeStateBlock(t *testing.T) {
	t.Parallel()
	s := open_(t, t.TempDir(), nil)
	env := newEnv(1)
	body := bytes.Repeat([]byte("0123456789abcdef\r\n"), 10000)
	if err := s.Put(env, bytes.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	st := State{Attempts: 1}
	for i := range 500 {
		st.Set(fmt.Sprintf("user%d@example.org", i), Pending, "451 4.7.500 Server busy, please try again later")
	}
	if err := s.SetState(env.ID, st); err != nil {
		t.Fatal(err)
	}
	st.Attempts = 2
	if err := s.NoteAttempt(env.ID, st); err != nil {
		t.Fatal(err)
	}
	e, err := s.Get(env.ID)
	if err != nil || e.State.Attempts != 2 || len(e.State.Recipients) != 500 || e.Envelope.Size != int64(len(body)) {
		t.Fatalf("%+v %v", e, err)
	}
	if got, err := readBody(t, s, env.ID); err != nil || !bytes.Equal(got, body) {
		t.Fatalf("body: %d bytes, %v", len(got), err)
	}
}
