package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// measureFsync is the floor: write a 10 KB file and fsync it (what every
// durable 250 costs at least), and the same plus rename into a directory and
// fsync of that directory (what one Put costs alone, without group commit).
func measureFsync(dir string, n int) (fsyncStats, error) {
	var st fsyncStats
	probe := filepath.Join(dir, "fsync-probe")
	q := filepath.Join(probe, "q")
	if err := os.MkdirAll(q, 0o700); err != nil {
		return st, err
	}
	defer func() { _ = os.RemoveAll(probe) }() // best effort: inside the run's directory
	data := make([]byte, 10*1024)
	for i := range data {
		data[i] = byte('a' + i%26)
	}
	for i := range n {
		name := filepath.Join(probe, fmt.Sprintf("f%d", i))
		start := time.Now()
		f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return st, err
		}
		if _, err := f.Write(data); err != nil {
			_ = f.Close() // already failing
			return st, err
		}
		if err := f.Sync(); err != nil {
			_ = f.Close() // already failing
			return st, err
		}
		if err := f.Close(); err != nil {
			return st, err
		}
		st.file = append(st.file, time.Since(start))
		if err := os.Rename(name, filepath.Join(q, fmt.Sprintf("f%d", i))); err != nil {
			return st, err
		}
		d, err := os.Open(q)
		if err != nil {
			return st, err
		}
		err = d.Sync()
		if cerr := d.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return st, err
		}
		st.put = append(st.put, time.Since(start))
	}
	return st, nil
}
