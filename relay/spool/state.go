package spool

import (
	"time"

	"github.com/o365relay/o365relay/relay/envelope"
)

// RcptStatus is where one recipient stands.
type RcptStatus string

const (
	Pending   RcptStatus = "pending"
	Delivered RcptStatus = "delivered"
	Failed    RcptStatus = "failed"
)

// RcptState is one recipient's status and the last reply concerning it.
type RcptState struct {
	Status RcptStatus `json:"status"`
	Reply  string     `json:"reply,omitempty"`
}

// State is the mutable part of a queued message, kept in queue/<id>.state so
// the (large, immutable) .msg is never rewritten. A missing state file means
// a fresh message: no attempts, every recipient pending.
type State struct {
	Attempts     int                  `json:"attempts"`
	NextAttempt  time.Time            `json:"next_attempt"`
	FirstAttempt time.Time            `json:"first_attempt,omitzero"`
	LastAttempt  time.Time            `json:"last_attempt,omitzero"`
	LastError    string               `json:"last_error,omitempty"`
	Recipients   map[string]RcptState `json:"recipients,omitempty"`
	// Panics counts attempts that panicked (delivery gives up after 3).
	Panics int `json:"panics,omitempty"`
	// Final is the reason recorded when the message is moved to failed/.
	Final string `json:"final,omitempty"`
}

// Status returns rcpt's status; an unknown recipient is pending.
func (s *State) Status(rcpt string) RcptStatus {
	if r, ok := s.Recipients[rcpt]; ok && r.Status != "" {
		return r.Status
	}
	return Pending
}

// Set records rcpt's status and reply.
func (s *State) Set(rcpt string, st RcptStatus, reply string) {
	if s.Recipients == nil {
		s.Recipients = map[string]RcptState{}
	}
	s.Recipients[rcpt] = RcptState{Status: st, Reply: reply}
}

// Entry is a queued (or failed) message without its body.
type Entry struct {
	Envelope *envelope.Envelope
	State    State
}
