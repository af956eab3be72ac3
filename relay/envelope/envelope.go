// Package envelope owns the envelope of one relayed message and its queue
// ID: the shared vocabulary of the listener, the spool, delivery and the
// Exchange client (chasquid's internal/envelope is the model).
//
// The envelope is what the SMTP transaction said about a message (RFC 5321
// §2.3.1: originator, recipients) plus what the relay decided at intake (the
// mailbox it will authenticate as). The body is never held here: it streams
// from the client into the spool and from the spool to Exchange.
//
// It is a leaf: it imports relay/reply (for a recipient's refusal in
// Result) and nothing else from the module, and no SMTP library
// (docs/architecture.md).
package envelope

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"time"

	"github.com/o365relay/o365relay/relay/reply"
)

// ID names a message in logs, the spool and replies to clients. It sorts by
// arrival time and is safe as a file name.
type ID string

var idEncoding = base32.NewEncoding("0123456789ABCDEFGHJKMNPQRSTVWXYZ").WithPadding(base32.NoPadding)

// NewID returns a fresh ID: 48 bits of milliseconds since the epoch and 64
// random bits, in Crockford base32 (23 characters, [0-9A-Z] without I L O U).
func NewID(now time.Time) ID {
	var b [14]byte
	binary.BigEndian.PutUint64(b[0:8], uint64(now.UnixMilli())<<16)
	if _, err := rand.Read(b[6:14]); err != nil {
		// crypto/rand.Read does not fail on supported platforms (Go 1.24+
		// documents that it crashes the program instead).
		panic(err)
	}
	return ID(idEncoding.EncodeToString(b[:]))
}

// Valid reports whether s could have been made by NewID; spool file names are
// checked with it before they are trusted.
func (id ID) Valid() bool {
	if len(id) != 23 {
		return false
	}
	_, err := idEncoding.DecodeString(string(id))
	return err == nil
}

// Time returns the millisecond at which NewID made id (zero if id is not
// valid): the spool orders and dates queued messages by it without reading
// them.
func (id ID) Time() time.Time {
	b, err := idEncoding.DecodeString(string(id))
	if err != nil || len(b) < 6 {
		return time.Time{}
	}
	var ms [8]byte
	copy(ms[2:], b[:6])
	return time.UnixMilli(int64(binary.BigEndian.Uint64(ms[:])))
}

// Envelope is the SMTP envelope of one message.
type Envelope struct {
	ID ID `json:"id"`
	// From is the reverse-path without angle brackets; "" is the null sender.
	From string `json:"from"`
	// To lists the forward-paths in the order the client gave them.
	To []string `json:"to"`
	// Mailbox is the Exchange Online mailbox the relay authenticates as
	// (XOAUTH2 user=) to deliver this message.
	Mailbox string `json:"mailbox"`
	// SMTPUTF8 and EightBitMIME record the client's MAIL parameters, to be
	// repeated upstream (RFC 6531 §3.4, RFC 6152 §3).
	SMTPUTF8     bool `json:"smtputf8,omitempty"`
	EightBitMIME bool `json:"8bitmime,omitempty"`
	// Received is when the relay acknowledged the message.
	Received time.Time `json:"received"`
	// Client is the remote address and Helo the HELO/EHLO name of the
	// submitting client, for logs and the Received: header.
	Client string `json:"client,omitempty"`
	Helo   string `json:"helo,omitempty"`
	// Size is the body size in bytes as stored (including any Received:
	// header the relay prepended).
	Size int64 `json:"size"`
}

// Result is what one delivery attempt achieved, recipient by recipient. A
// forwarder returns it together with an error: a nil error means the message
// data was accepted for every recipient in Accepted; a non-nil error (a
// *reply.Error with its Stage) means the transaction failed as a whole and
// applies to every recipient not listed in Rejected.
type Result struct {
	// Accepted lists the recipients Exchange took the message for.
	Accepted []string
	// Rejected maps each recipient Exchange refused at RCPT TO to its reply;
	// a 4xx there is retried for that recipient alone, a 5xx fails it.
	Rejected map[string]*reply.Error
	// Reply is Exchange's final reply to the data (its text carries
	// Exchange's own message ID), kept for the log line.
	Reply string
}
