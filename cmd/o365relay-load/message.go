package main

import (
	"fmt"
	"strings"
)

// Envelope and header addresses. The fake Exchange lets the app's mailbox
// send only as itself (SendAs), so sender and From: are the mailbox.
const (
	loadFrom   = "relay@contoso.example"
	rcptDomain = "fabrikam.example"
)

// rcptFor is the per-message recipient: the fake Exchange records envelope
// recipients even when it discards bodies, so it is how a delivered message
// is matched to the 250 that acknowledged it.
func rcptFor(seq int) string { return fmt.Sprintf("load-%d@%s", seq, rcptDomain) }

// seqOf is the inverse of rcptFor; -1 if rcpt is not one of ours.
func seqOf(rcpt string) int {
	local, ok := strings.CutSuffix(rcpt, "@"+rcptDomain)
	if !ok {
		return -1
	}
	n, ok := strings.CutPrefix(local, "load-")
	if !ok {
		return -1
	}
	var seq int
	if _, err := fmt.Sscanf(n, "%d", &seq); err != nil {
		return -1
	}
	return seq
}

// headerLen is the fixed length of every message's header section, so that
// a message is exactly the size asked for.
const headerFmt = "From: Load <" + loadFrom + ">\r\n" +
	"To: <load@" + rcptDomain + ">\r\n" +
	"Subject: o365relay-load %010d\r\n" +
	"Message-ID: <load.%010d@contoso.example>\r\n" +
	"MIME-Version: 1.0\r\n" +
	"Content-Type: text/plain; charset=us-ascii\r\n" +
	"\r\n"

var headerLen = len(fmt.Sprintf(headerFmt, 0, 0))

// minSize holds the header and one body line.
var minSize = headerLen + 2

func header(seq int) []byte { return fmt.Appendf(nil, headerFmt, seq, seq) }

// seqOfMessageID maps a Message-ID header value back to its sequence number;
// -1 if it is not one of ours.
func seqOfMessageID(v string) int {
	var seq int
	if _, err := fmt.Sscanf(v, "<load.%010d@contoso.example>", &seq); err != nil || seq < 0 {
		return -1
	}
	return seq
}

// body returns size-headerLen bytes of 76-character CRLF lines (the shape of
// base64 attachments), shared read-only by every message of a run. It never
// starts a line with a dot, so what the relay stores is what was sent.
func body(size int) []byte {
	n := size - headerLen
	b := make([]byte, n)
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	for i := range b {
		switch col := i % 78; col {
		case 76:
			b[i] = '\r'
		case 77:
			b[i] = '\n'
		default:
			b[i] = alphabet[(i/78+col)%len(alphabet)]
		}
	}
	b[n-2], b[n-1] = '\r', '\n'
	if n >= 3 && b[n-3] == '\r' {
		b[n-3] = 'x' // no bare CR before the final CRLF
	}
	return b
}
