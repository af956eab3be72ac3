package spool

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// TestWriteFuzzCorpus regenerates testdata/fuzz/FuzzDecode when
// SPOOL_WRITE_CORPUS=1; otherwise it checks the committed corpus exists.
func TestWriteFuzzCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzDecode")
	if os.Getenv("SPOOL_WRITE_CORPUS") == "" {
		des, err := os.ReadDir(dir)
		if err != nil || len(des) < 5 {
			t.Fatalf("committed corpus missing: %v", err)
		}
		return
	}
	env := newEnv(1)
	good, err := Encode(env, []byte("Subject: t\r\n\r\n\x00\xff\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	empty, err := Encode(env, nil)
	if err != nil {
		t.Fatal(err)
	}
	wrongVersion := append([]byte(nil), good...)
	wrongVersion[7] = 2
	flipped := append([]byte(nil), good...)
	flipped[len(flipped)-trailerSize-2] ^= 1
	seeds := map[string][]byte{
		"valid": good, "valid-empty": empty, "truncated": good[:len(good)-1],
		"wrong-version": wrongVersion, "bit-flip": flipped, "zero": nil,
		"huge-envlen": []byte(magic + "\x01\xff\xff\xff\xff"),
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range seeds {
		c := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
