package delivery

import "github.com/o365relay/o365relay/relay/reply"

// about is what a reply to an attempt is about, which decides what it
// does (docs/exchange.md#replies, docs/delivery-failures.md). Only a reply
// about the message or one of its recipients can fail it; a reply about
// the path to Exchange, the sending mailbox or its session holds the
// mailbox or retries, whichever command it answered (RCPT included).
type about int

const (
	aboutMessage      about = iota // the message or a recipient: its own verdict
	aboutConnections               // 432 4.3.2: more sessions for the mailbox than Exchange grants now
	aboutPath                      // before MAIL FROM (pathFailure), or 530 5.7.57: AUTH did not hold
	aboutMailboxFull               // 5xx 5.2.2 to MAIL or the data: the sending mailbox is over its quota
	aboutQuota                     // 554 5.2.0: the mailbox's daily recipient quota
	aboutSessionToken              // 501 5.5.127: the session's token expired
	aboutThrottling                // 550 5.2.251–255: Exchange throttles the sender for continuous errors
)

// replyAbout sorts re. The temporary replies with enhanced code 4.3.2 are
// about connections, except "421 4.3.2 Service not available": the
// server going away, an outage like any other.
func replyAbout(re *reply.Error) about {
	enh := re.Enhanced
	switch {
	case re.Code == 432 || (re.Temporary() && re.Code != 421 && enh == [3]int{4, 3, 2}):
		return aboutConnections
	case pathFailure(re), re.Code == 530 && enh == [3]int{5, 7, 57}:
		return aboutPath
	case sendingMailboxFull(re):
		return aboutMailboxFull
	case re.Code == 554 && enh == [3]int{5, 2, 0}:
		return aboutQuota
	case re.Code == 501 && enh == [3]int{5, 5, 127}:
		return aboutSessionToken
	case re.Code == 550 && enh[0] == 5 && enh[1] == 2 && enh[2] >= 251 && enh[2] <= 255:
		return aboutThrottling
	}
	return aboutMessage
}

// pathFailure reports a failure of the relay's path to Exchange rather
// than of a message: anything before MAIL FROM — the token, the TCP
// connection and greeting (a 5xx greeting included), EHLO, STARTTLS (not
// offered, refused), the TLS handshake and certificate, AUTH (XOAUTH2 not
// offered, or any reply to it). Like Postfix (smtp_skip_5xx_greeting,
// smtp_sasl_auth_soft_bounce, a required-TLS failure defers), the relay
// holds the mailbox and keeps its mail queued; only Exchange's replies to
// MAIL, RCPT and the end of DATA can fail a message or a recipient.
// docs/delivery-failures.md has the table.
func pathFailure(re *reply.Error) bool {
	switch re.Stage {
	case reply.StageToken, reply.StageConnect, reply.StageTLS, reply.StageAuth:
		return true
	}
	return false
}

// causeMailboxFull is the hold's cause (and metric reason) for a full
// sending mailbox.
const causeMailboxFull = "mailbox_full"

// sendingMailboxFull reports Exchange's "554 5.2.2 mailbox full;
// STOREDRV.Submission.Exception:QuotaExceededException" to MAIL or the
// data: the sending mailbox is over its storage quota (the messages it
// sends are kept in its Sent Items). Every message of the mailbox would
// get the same reply until someone makes room, and none is at fault
// (docs/exchange.md#554-522-sending-mailbox-full). At RCPT, X.2.2 is a
// recipient's mailbox, that recipient's own failure.
func sendingMailboxFull(re *reply.Error) bool {
	return !re.Temporary() && re.Enhanced == [3]int{5, 2, 2} &&
		(re.Stage == reply.StageMail || re.Stage == reply.StageData)
}
