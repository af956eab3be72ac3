package spool

import "errors"

// committer batches directory fsyncs of queue/: every request that arrived
// while the previous fsync ran shares the next one (group commit). Removals
// do not wait for theirs (syncQueueLater): they ride along with the next
// Put's fsync, or get one of their own when none comes. File fsyncs stay
// per file, in the callers.
func (s *Spool) committer() {
	defer close(s.stopped)
	for {
		var batch []chan error
		select {
		case <-s.stop:
			s.flushLater()
			return
		case c := <-s.commits:
			batch = append(batch, c)
		case <-s.later:
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
