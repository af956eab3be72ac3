package spool

import (
	"errors"
	"time"
)

// removalSyncDelay is how long a removal's directory fsync waits for a Put
// to share one with. Under load a Put comes within milliseconds and the
// removals of the delivered messages cost no fsync of their own; a relay
// only draining its queue fsyncs the directory ten times a second instead
// of back to back. The price: a power failure may bring back the messages
// delivered in the last removalSyncDelay, which are delivered again
// (at-least-once, as before, over a longer window).
const removalSyncDelay = 100 * time.Millisecond

// committer batches directory fsyncs of queue/: every request that arrived
// while the previous fsync ran shares the next one (group commit). Removals
// do not wait for theirs (syncQueueLater): they ride along with the next
// Put's fsync, or get one of their own after removalSyncDelay when none
// comes. File fsyncs stay per file, in the callers.
func (s *Spool) committer() {
	defer close(s.stopped)
	// removals is armed while removals wait for a directory fsync.
	removals := time.NewTimer(time.Hour)
	removals.Stop()
	waiting := false
	for {
		var batch []chan error
		select {
		case <-s.stop:
			removals.Stop()
			if waiting {
				select { // for flushLater (one there already does)
				case s.later <- struct{}{}:
				default:
				}
			}
			s.flushLater()
			return
		case c := <-s.commits:
			batch = append(batch, c)
		case <-s.later:
			if !waiting {
				waiting = true
				removals.Reset(removalSyncDelay)
			}
			continue
		case <-removals.C:
		}
	drain:
		for {
			select {
			case c := <-s.commits:
				batch = append(batch, c)
			case <-s.later:
			default:
				break drain
			}
		}
		if waiting {
			waiting = false
			removals.Stop()
		}
		err := s.fs.SyncDir(s.queue)
		for _, c := range batch {
			c <- err
		}
	}
}

// flushLater gives removals still waiting their directory fsync at Close.
func (s *Spool) flushLater() {
	select {
	case <-s.later:
		if err := s.fs.SyncDir(s.queue); err != nil {
			s.log.Warn("directory fsync of removals at close failed")
		}
	default:
	}
}

// syncQueue makes completed renames/removals in queue/ durable.
func (s *Spool) syncQueue() error {
	if !s.opts.Fsync {
		return nil
	}
	c := make(chan error, 1)
	select {
	case s.commits <- c:
	case <-s.stop:
		return errors.New("spool closed")
	}
	select {
	case err := <-c:
		return err
	case <-s.stopped:
		return errors.New("spool closed")
	}
}

// syncQueueLater asks for a directory fsync of queue/ without waiting for
// it: a removal that is lost to a power failure only means a message is
// delivered again (at-least-once), which no caller needs to wait for.
func (s *Spool) syncQueueLater() {
	if !s.opts.Fsync {
		return
	}
	select {
	case s.later <- struct{}{}:
	default: // one is pending already; it covers this removal too
	}
}

func (s *Spool) syncDir(d string) error {
	if !s.opts.Fsync {
		return nil
	}
	return s.fs.SyncDir(d)
}
