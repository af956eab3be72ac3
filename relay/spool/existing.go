package spool

import (
	"fmt"
	"path/filepath"
)

// OpenExisting is OpenAdmin for a spool a daemon has used before: it
// creates nothing, so a command pointed at the wrong directory says so
// instead of opening (and creating) an empty spool and reporting it empty.
// Dir and its queue/ must exist.
func OpenExisting(opts Options) (*Spool, error) {
	fs := opts.FS
	if fs == nil {
		fs = OSFS{}
	}
	for _, d := range []string{opts.Dir, filepath.Join(opts.Dir, "queue")} {
		fi, err := fs.Stat(d)
		if err != nil {
			return nil, fmt.Errorf("spool: %w", err)
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("spool: %s is not a directory", d)
		}
	}
	return OpenAdmin(opts)
}
