package spool

import (
	"io"
	"os"
	"syscall"
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

// OpenFile opens with open(2) and wraps the descriptor with os.NewFile:
// os.OpenFile also offers every descriptor to the runtime's network poller,
// which costs four fcntl(2) and an epoll_ctl(2) that fails for a regular
// file or a directory — per open, and the spool opens two or three files
// per message. The errors are os.OpenFile's (*os.PathError).
func (OSFS) OpenFile(name string, flag int, perm os.FileMode) (File, error) {
	return openFile(name, flag, perm)
}

func openFile(name string, flag int, perm os.FileMode) (*os.File, error) {
	for {
		fd, err := syscall.Open(name, flag|syscall.O_CLOEXEC, uint32(perm.Perm()))
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "open", Path: name, Err: err}
		}
		return os.NewFile(uintptr(fd), name), nil
	}
}

// Rename is rename(2). os.Rename first stats the new name to refuse a
// directory there; the spool renames only into its own directories under
// names it made, and rename(2) refuses a file over a directory anyway
// (EISDIR). The error is os.Rename's type (*os.LinkError).
func (OSFS) Rename(o, n string) error {
	for {
		err := syscall.Rename(o, n)
		switch err {
		case nil:
			return nil
		case syscall.EINTR:
			continue
		}
		return &os.LinkError{Op: "rename", Old: o, New: n, Err: err}
	}
}

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
	d, err := openFile(name, os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	if err := d.Sync(); err != nil {
		_ = d.Close() // the Sync error is the one that matters
		return err
	}
	return d.Close()
}
