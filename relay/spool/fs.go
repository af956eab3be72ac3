package spool

import (
	"io"
	"os"
)

// FS is the set of file operations the spool performs. It exists so that
// tests can fail each step of a write (create, write, fsync, close, rename,
// directory fsync) and check that nothing half-written reaches queue/.
type FS interface {
	OpenFile(name string, flag int, perm os.FileMode) (File, error)
	Rename(oldpath, newpath string) error
	Remove(name string) error
	MkdirAll(path string, perm os.FileMode) error
	ReadDir(name string) ([]os.DirEntry, error)
	// ReadDirBatches calls fn with the directory's entries a batch at a
	// time, unsorted: a queue of 100,000 is never listed in one slice.
	ReadDirBatches(name string, fn func([]os.DirEntry)) error
	Stat(name string) (os.FileInfo, error)
	// SyncDir fsyncs a directory so that renames and removals in it
	// survive a crash (rename(2) alone is atomic but not durable).
	SyncDir(name string) error
}

// File is an open spool file.
type File interface {
	io.Reader
	io.Writer
	io.Seeker
	io.ReaderAt
	Truncate(size int64) error
	io.Closer
	Sync() error
	Stat() (os.FileInfo, error)
}

// OSFS is the real file system.
type OSFS struct{}

func (OSFS) OpenFile(name string, flag int, perm os.FileMode) (File, error) {
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return f, nil
}
func (OSFS) Rename(o, n string) error                     { return os.Rename(o, n) }
func (OSFS) Remove(name string) error                     { return os.Remove(name) }
func (OSFS) MkdirAll(path string, perm os.FileMode) error { return os.MkdirAll(path, perm) }
func (OSFS) ReadDir(name string) ([]os.DirEntry, error)   { return os.ReadDir(name) }
func (OSFS) Stat(name string) (os.FileInfo, error)        { return os.Stat(name) }
func (OSFS) ReadDirBatches(name string, fn func([]os.DirEntry)) error {
	d, err := os.Open(name)
	if err != nil {
		return err
	}
	defer d.Close() // read-only
	for {
		des, err := d.ReadDir(1024)
		fn(des)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
func (OSFS) SyncDir(name string) error {
	d, err := os.Open(name)
	if err != nil {
		return err
	}
	if err := d.Sync(); err != nil {
		_ = d.Close() // the Sync error is the one that matters
		return err
	}
	return d.Close()
}
