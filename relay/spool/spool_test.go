package spool

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/o365relay/o365relay/relay/envelope"
	"github.com/o365relay/o365relay/relay/reply"
)

var t0 = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)

func newEnv(i int) *envelope.Envelope {
	return &envelope.Envelope{
		ID: envelope.NewID(t0.Add(time.Duration(i) * time.Millisecond)), From: "app@example.com",
		To: []string{"a@example.org", "b@example.org"}, Mailbox: "relay@example.com",
		Received: t0.Add(time.Duration(i) * time.Millisecond),
	}
}

func open_(t testing.TB, dir string, mod func(*Options)) *Spool {
	t.Helper()
	o := Options{Dir: dir, Fsync: true, Clock: func() time.Time { return t0 }}
	if mod != nil {
		mod(&o)
	}
	s, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, de := range des {
		out = append(out, de.Name())
	}
	return out
}

// faultFS fails the first operation named op.
type faultFS struct {
	OSFS
	op  string
	err error
}

type faultFile struct {
	File
	fs *faultFS
}

func (f *faultFS) hit(op string) error {
	if f.op == op {
		return f.err
	}
	return nil
}

func (f *faultFS) OpenFile(name string, flag int, perm os.FileMode) (File, error) {
	if flag&os.O_CREATE != 0 {
		if err := f.hit("create"); err != nil {
			return nil, err
		}
	}
	file, err := f.OSFS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &faultFile{File: file, fs: f}, nil
}
func (f *faultFile) Write(p []byte) (int, error) {
	if err := f.fs.hit("write"); err != nil {
		return 0, err
	}
	return f.File.Write(p)
}
func (f *faultFile) Sync() error {
	if err := f.fs.hit("fsync"); err != nil {
		return err
	}
	return f.File.Sync()
}
func (f *faultFile) Close() error {
	err := f.File.Close()
	if herr := f.fs.hit("close"); herr != nil {
		return herr
	}
	return err
}
func (f *faultFS) Rename(o, n string) error {
	if err := f.hit("rename"); err != nil {
		return err
	}
	return f.OSFS.Rename(o, n)
}
func (f *faultFS) SyncDir(name string) error {
	if err := f.hit("dirsync"); err != nil {
		return err
	}
	return f.OSFS.SyncDir(name)
}

func TestPutFaultAtEachStep(t *testing.T) {
	t.Parallel()
	for _, op := range []string{"create", "write", "fsync", "close", "rename", "dirsync"} {
		for _, tc := range []struct {
			err  error
			code int
			enh  reply.EnhancedCode
		}{
			{syscall.EIO, 451, reply.EnhancedCode{4, 3, 0}},
			{syscall.ENOSPC, 452, reply.EnhancedCode{4, 3, 1}},
			{syscall.EDQUOT, 452, reply.EnhancedCode{4, 3, 1}},
		} {
			t.Run(fmt.Sprintf("%s/%v", op, tc.err), func(t *testing.T) {
				t.Parallel()
				dir := t.TempDir()
				fs := &faultFS{}
				s := open_(t, dir, func(o *Options) { o.FS = fs })
				fs.op, fs.err = op, tc.err
				err := s.Put(newEnv(1), bytes.NewReader([]byte("Subject: x\r\n\r\nbody\r\n")))
				re := reply.As(err)
				if re == nil || re.Code != tc.code || re.Enhanced != tc.enh || !errors.Is(err, tc.err) {
					t.Fatalf("Put = %v, want %d %v wrapping %v", err, tc.code, tc.enh, tc.err)
				}
				if n := names(t, filepath.Join(dir, "queue")); len(n) != 0 {
					t.Errorf("queue/ holds %v", n)
				}
				if n := names(t, filepath.Join(dir, "tmp")); len(n) != 0 {
					t.Errorf("tmp/ holds %v", n)
				}
				if items, _, _ := s.Stats(); items != 0 {
					t.Errorf("Stats items = %d", items)
				}
			})
		}
	}
}

func TestLimits(t *testing.T) {
	t.Parallel()
	s := open_(t, t.TempDir(), func(o *Options) { o.MaxItems = 1 })
	if err := s.Put(newEnv(1), bytes.NewReader([]byte("x"))); err != nil {
		t.Fatal(err)
	}
	err := s.Put(newEnv(2), bytes.NewReader([]byte("y")))
	if re := reply.As(err); re == nil || re.Code != 452 || re.Enhanced != (reply.EnhancedCode{4, 3, 1}) {
		t.Fatalf("MaxItems: %v", err)
	}
	dir := t.TempDir()
	s = open_(t, dir, func(o *Options) { o.MaxBytes = 100 })
	err = s.Put(newEnv(3), bytes.NewReader(make([]byte, 101)))
	if re := reply.As(err); re == nil || re.Code != 452 {
		t.Fatalf("MaxBytes: %v", err)
	}
	if n := names(t, filepath.Join(dir, "queue")); len(n) != 0 {
		t.Errorf("queue/ holds %v", n)
	}
	if err := s.Put(newEnv(4), bytes.NewReader(make([]byte, 100))); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(newEnv(5), bytes.NewReader([]byte("z"))); reply.As(err) == nil || reply.As(err).Code != 452 {
		t.Fatalf("full spool: %v", err)
	}
}

type failingReader struct {
	data []byte
	err  error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if len(f.data) == 0 {
		return 0, f.err
	}
	n := copy(p, f.data)
	f.data = f.data[n:]
	return n, nil
}

func TestPutBodyErrorIsReturnedAsIs(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := open_(t, dir, nil)
	tooBig := reply.New(552, reply.EnhancedCode{5, 3, 4}, "too big")
	bareLF := reply.New(550, reply.EnhancedCode{5, 6, 0}, "bare LF")
	for _, want := range []error{tooBig, bareLF, io.ErrUnexpectedEOF} {
		err := s.Put(newEnv(1), &failingReader{data: []byte("partial"), err: want})
		if err != want {
			t.Errorf("Put = %v, want %v itself", err, want)
		}
	}
	if n := names(t, filepath.Join(dir, "queue")); len(n) != 0 {
		t.Errorf("queue/ holds %v", n)
	}
	if n := names(t, filepath.Join(dir, "tmp")); len(n) != 0 {
		t.Errorf("tmp/ holds %v", n)
	}
}

func readBody(t *testing.T, s *Spool, id envelope.ID) ([]byte, error) {
	t.Helper()
	rc, err := s.Body(id)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rc)
	if cerr := rc.Close(); cerr != nil {
		t.Error(cerr)
	}
	return b, err
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	s := open_(t, t.TempDir(), nil)
	body := []byte("Subject: \xe9t\xe9\r\n\r\n\x00\x01\xff binary\r\nline\r\n")
	env := newEnv(1)
	env.SMTPUTF8, env.EightBitMIME = true, true
	if err := s.Put(env, bytes.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	if env.Size != int64(len(body)) {
		t.Errorf("Size = %d", env.Size)
	}
	e, err := s.Get(env.ID)
	if err != nil {
		t.Fatal(err)
	}
	if e.Envelope.From != env.From || len(e.Envelope.To) != 2 || !e.Envelope.SMTPUTF8 || e.Envelope.Size != env.Size || !e.Envelope.Received.Equal(env.Received) {
		t.Errorf("envelope %+v, want %+v", e.Envelope, env)
	}
	got, err := readBody(t, s, env.ID)
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("body %q, %v", got, err)
	}
	if items, n, oldest := s.Stats(); items != 1 || n < int64(len(body)) || n > int64(len(body))+1024 || !oldest.Equal(env.Received) {
		t.Errorf("Stats = %d %d %v", items, n, oldest)
	}
}

// gen yields n pseudo-random bytes without holding them.
type gen struct {
	n, x uint64
}

func (g *gen) Read(p []byte) (int, error) {
	if g.n == 0 {
		return 0, io.EOF
	}
	if uint64(len(p)) > g.n {
		p = p[:g.n]
	}
	for i := range p {
		g.x = g.x*6364136223846793005 + 1442695040888963407
		p[i] = byte(g.x >> 56)
	}
	g.n -= uint64(len(p))
	return len(p), nil
}

func TestRoundTrip20MB(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("20 MB body")
	}
	s := open_(t, t.TempDir(), func(o *Options) { o.Fsync = false })
	const n = 20 << 20
	env := newEnv(1)
	if err := s.Put(env, &gen{n: n, x: 1}); err != nil {
		t.Fatal(err)
	}
	want := crc32.New(castagnoli)
	if _, err := io.Copy(want, &gen{n: n, x: 1}); err != nil {
		t.Fatal(err)
	}
	rc, err := s.Body(env.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got := crc32.New(castagnoli)
	m, err := io.Copy(got, rc)
	if err != nil || m != n || got.Sum32() != want.Sum32() {
		t.Fatalf("read %d bytes, %v, sums %x %x", m, err, got.Sum32(), want.Sum32())
	}
}

func TestRecovery(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := open_(t, dir, nil)
	var ids []envelope.ID
	for i := range 7 {
		env := newEnv(i)
		if err := s.Put(env, bytes.NewReader([]byte(fmt.Sprintf("message %d\r\n", i)))); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, env.ID)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	q := func(id envelope.ID) string { return filepath.Join(dir, "queue", string(id)+".msg") }
	mutate := func(id envelope.ID, f func([]byte) []byte) {
		b, err := os.ReadFile(q(id))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(q(id), f(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mutate(ids[0], func(b []byte) []byte { return b[:len(b)-5] })                    // truncated
	mutate(ids[1], func(b []byte) []byte { b[len(b)-trailerSize-3] ^= 1; return b }) // bit flip in body
	mutate(ids[2], func(b []byte) []byte { return []byte("garbage garbage garbage garbage") })
	mutate(ids[3], func(b []byte) []byte { return nil })         // zero length
	mutate(ids[4], func(b []byte) []byte { b[7] = 9; return b }) // wrong version
	// tmp files: one stale, one young.
	old, young := filepath.Join(dir, "tmp", "old"), filepath.Join(dir, "tmp", "young")
	for _, p := range []string{old, young} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chtimes(old, t0.Add(-2*time.Hour), t0.Add(-2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(young, t0.Add(-time.Minute), t0.Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}

	// Open reads only the directory; each record is checked when it is
	// first read. A record whose header or tail does not parse goes to
	// corrupt/ then; a bit flip in a body is found by Body's checksum.
	s2 := open_(t, dir, nil)
	if items, _, _ := s2.Stats(); items != 7 {
		t.Errorf("items at Open = %d", items)
	}
	list, err := s2.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 3 || list[0].Envelope.ID != ids[1] || list[1].Envelope.ID != ids[5] || list[2].Envelope.ID != ids[6] {
		t.Errorf("List = %v", list)
	}
	for _, id := range []envelope.ID{ids[0], ids[2], ids[3], ids[4]} {
		if _, err := s2.Get(id); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get(%s) after quarantine: %v", id, err)
		}
	}
	corrupt := names(t, filepath.Join(dir, "corrupt"))
	if len(corrupt) != 4 {
		t.Errorf("corrupt/ = %v, want 4 files", corrupt)
	}
	if _, err := readBody(t, s2, ids[1]); !errors.Is(err, ErrCorrupt) {
		t.Errorf("body with a bit flip: %v", err)
	}
	if items, _, _ := s2.Stats(); items != 3 {
		t.Errorf("items = %d", items)
	}
	if _, err := os.Stat(old); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale tmp file kept: %v", err)
	}
	if _, err := os.Stat(young); err != nil {
		t.Errorf("young tmp file removed: %v", err)
	}
}

func TestBodyCorruptedAfterOpenFailsAtEnd(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := open_(t, dir, nil)
	env := newEnv(1)
	body := bytes.Repeat([]byte("0123456789\r\n"), 1000)
	if err := s.Put(env, bytes.NewReader(body)); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "queue", string(env.ID)+".msg")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-trailerSize-100] ^= 0x20
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := readBody(t, s, env.ID)
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("err = %v, want ErrCorrupt", err)
	}
	if len(got) != len(body) {
		t.Errorf("read %d bytes before the error, want all %d", len(got), len(body))
	}
}

func TestStateFailRetryDelete(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := open_(t, dir, nil)
	env := newEnv(1)
	if err := s.Put(env, bytes.NewReader([]byte("x\r\n"))); err != nil {
		t.Fatal(err)
	}
	e, err := s.Get(env.ID)
	if err != nil || e.State.Attempts != 0 {
		t.Fatalf("fresh state %+v %v", e, err)
	}
	st := State{Attempts: 2, NextAttempt: t0.Add(time.Hour)}
	st.Set("a@example.org", Delivered, "250 ok")
	if err := s.SetState(env.ID, st); err != nil {
		t.Fatal(err)
	}
	// A state block torn by a crash (half a block at the end): the
	// message survives with the state before it, and the next block is
	// read past it.
	rec := filepath.Join(dir, "queue", string(env.ID)+".msg")
	torn, err := appendStateBlock(nil, &State{Attempts: 9}, 0)
	if err != nil {
		t.Fatal(err)
	}
	appendFile(t, rec, torn[:len(torn)/2])
	if e, err := s.Get(env.ID); err != nil || e.State.Attempts != 2 {
		t.Fatalf("torn state: %+v %v", e, err)
	}
	if err := s.SetState(env.ID, st); err != nil {
		t.Fatal(err)
	}
	if e, err := s.Get(env.ID); err != nil || e.State.Attempts != 2 || e.State.Status("a@example.org") != Delivered {
		t.Fatalf("state after a torn block: %+v %v", e, err)
	}
	st.Set("b@example.org", Failed, "550 5.1.1 no such user")
	st.Final = "550 5.1.1 no such user"
	if err := s.Fail(env.ID, st); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(env.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after Fail: %v", err)
	}
	failed, err := s.ListFailed()
	if err != nil || len(failed) != 1 || failed[0].State.Final == "" {
		t.Fatalf("ListFailed = %+v %v", failed, err)
	}
	// The CLI, beside the daemon.
	admin, err := OpenAdmin(Options{Dir: dir, Fsync: true, Clock: func() time.Time { return t0.Add(time.Minute) }})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := admin.Close(); err != nil {
			t.Error(err)
		}
	}()
	if err := admin.Retry(env.ID); err != nil {
		t.Fatal(err)
	}
	e, err = s.Get(env.ID)
	if err != nil || e.State.Attempts != 0 || e.State.Status("a@example.org") != Delivered || e.State.Status("b@example.org") != Pending || !e.State.NextAttempt.Equal(t0.Add(time.Minute)) {
		t.Fatalf("after Retry: %+v %v", e, err)
	}
	changed, gone, err := s.Rescan()
	if err != nil || len(changed) != 1 || changed[0] != env.ID || len(gone) != 0 {
		t.Fatalf("Rescan = %v %v %v", changed, gone, err)
	}
	if err := admin.Delete(env.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(env.ID); err != nil {
		t.Errorf("Remove after Delete: %v", err)
	}
	if items, _, _ := s.Stats(); items != 0 {
		t.Errorf("items = %d", items)
	}
}

func TestLockIsExclusive(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	open_(t, dir, nil)
	if s, err := Open(Options{Dir: dir}); err == nil {
		_ = s.Close()
		t.Fatal("second Open succeeded")
	}
}

func TestConcurrentPuts(t *testing.T) {
	t.Parallel()
	s := open_(t, t.TempDir(), nil)
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for i := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- s.Put(newEnv(i), bytes.NewReader([]byte("x\r\n")))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if items, _, _ := s.Stats(); items != 32 {
		t.Errorf("items = %d", items)
	}
}

func appendFile(t *testing.T, p string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}
