package upstream

import (
	"github.com/o365relay/o365relay/config"
	"github.com/o365relay/o365relay/config/azurestep"
	"github.com/o365relay/o365relay/relay/reply"
)

// AuthHint is the one-line explanation of an Exchange Online refusal that
// is a setup problem, naming the Azure step to revisit (config/azurestep,
// docs/azure.md#the-seven-steps), or "" when err is not one. It is the
// same text `o365relay doctor` prints on its ✘ line, so the daemon's log
// line and the doctor agree; the doctor adds the commands with the user's
// IDs filled in.
//
// Exchange answers every authorization failure with the same 535 5.7.3
// (docs/exchange.md#535-573-authentication-unsuccessful), so the hint
// lists the three causes in the order they are usually found; `o365relay
// doctor` tells them apart from the token's claims and the other
// mailboxes' results.
func AuthHint(err error) string {
	re := reply.As(err)
	if re == nil {
		return ""
	}
	switch {
	case re.Code == 535 && re.Enhanced == [3]int{5, 7, 139}:
		return "SMTP AUTH is disabled for this mailbox or the tenant (or Security Defaults block it): run Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled $false, or Set-TransportConfig -SmtpClientAuthenticationDisabled $false for the tenant (" + azurestep.SMTPAuth.Named() + ")"
	case re.Code == 535:
		return "Exchange accepted no permission for this app and mailbox: grant admin consent for SMTP.SendAsApp (" + azurestep.SendAsAppConsent.String() +
			"), register the Enterprise application's object ID with New-ServicePrincipal (" + azurestep.NewServicePrincipal.String() +
			"), and Add-MailboxPermission -AccessRights FullAccess on this mailbox (" + azurestep.AddMailboxPermission.String() + "); `o365relay doctor` prints the commands"
	case re.Code == 530 && re.Enhanced == [3]int{5, 7, 57}:
		return "Exchange says the client is not authenticated: AUTH XOAUTH2 did not complete; run `o365relay doctor`"
	case re.Code == 550 && re.Enhanced == [3]int{5, 7, 60}:
		return "the envelope sender is neither the mailbox nor an address it has Send-As rights on: send as the mailbox or grant Send-As (Add-RecipientPermission -AccessRights SendAs)"
	case re.Code == 554 && re.Enhanced == [3]int{5, 2, 252}:
		return "the From: header is not an address the mailbox may send as: send as the mailbox or grant Send-As on that address"
	case re.Stage == reply.StageTLS && re.Code == 451 && re.Enhanced == [3]int{4, 7, 5}:
		return "the TLS session with Exchange failed or its certificate is not trusted: a TLS-inspecting proxy or firewall on port 587 is the usual cause (exempt the upstream host, or add its CA to SSL_CERT_FILE)"
	case re.Stage == reply.StageTLS && re.Enhanced == [3]int{5, 7, 10}:
		return "the upstream does not offer STARTTLS: check O365RELAY_UPSTREAM (" + config.DefaultUpstream + ") and that no proxy answers in its place"
	}
	return ""
}
