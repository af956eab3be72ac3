package main

import (
	"fmt"
	"os"
	"syscall"

	"go.uber.org/zap/buffer"
	"go.uber.org/zap/zapcore"
)

// Under systemd the relay's stderr is a stream to journald, which reads a
// "<N>" prefix on each line as the line's syslog priority (sd-daemon(3)):
// without it every line is logged at the unit's default (info), and
// `journalctl -p warning` shows no warning. systemd says which stream is
// the journal in JOURNAL_STREAM=<device>:<inode> (systemd.exec(5)); only
// when that names our stderr — not a pipe to a container runtime or a
// terminal that merely inherited the variable — are the prefixes added.

// isJournal reports whether f is the stream JOURNAL_STREAM names.
func isJournal(f *os.File, journalStream string) bool {
	if journalStream == "" || f == nil {
		return false
	}
	var dev, ino uint64
	if n, err := fmt.Sscanf(journalStream, "%d:%d", &dev, &ino); err != nil || n != 2 {
		return false
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return false
	}
	return uint64(st.Dev) == dev && st.Ino == ino
}

// journalPriority is the syslog priority of a zap level (RFC 5424 §6.2.1):
// 7 debug, 6 info, 4 warning, 3 err, 2 crit for panics and fatal errors.
func journalPriority(l zapcore.Level) int {
	switch {
	case l <= zapcore.DebugLevel:
		return 7
	case l == zapcore.InfoLevel:
		return 6
	case l == zapcore.WarnLevel:
		return 4
	case l == zapcore.ErrorLevel:
		return 3
	}
	return 2
}

// priorityEncoder prefixes every entry of the encoder it wraps with
// "<N>". The wrapped encoder writes one line per entry (JSON escapes
// newlines; in console format a stack trace's further lines keep the
// journal's default priority).
type priorityEncoder struct {
	zapcore.Encoder
	pool buffer.Pool
}

func newPriorityEncoder(enc zapcore.Encoder) zapcore.Encoder {
	return priorityEncoder{Encoder: enc, pool: buffer.NewPool()}
}

func (e priorityEncoder) Clone() zapcore.Encoder {
	return priorityEncoder{Encoder: e.Encoder.Clone(), pool: e.pool}
}

func (e priorityEncoder) EncodeEntry(ent zapcore.Entry, fields []zapcore.Field) (*buffer.Buffer, error) {
	b, err := e.Encoder.EncodeEntry(ent, fields)
	if err != nil {
		return b, err
	}
	out := e.pool.Get()
	out.AppendByte('<')
	out.AppendInt(int64(journalPriority(ent.Level)))
	out.AppendByte('>')
	_, _ = out.Write(b.Bytes()) // a buffer's Write never fails
	b.Free()
	return out, nil
}
