package doctor

import (
	"context"
	"fmt"

	"github.com/o365relay/o365relay/config/azurestep"
	"github.com/o365relay/o365relay/relay/upstream"
)

// Check 6: AUTH XOAUTH2 succeeds for each mailbox (no mail is sent).

func (d *doctor) checkAuth(ctx context.Context) {
	if len(d.o.Mailboxes) == 0 {
		d.skip(stepAuth, "auth", "", "no mailbox is configured ("+checkRef(stepConfig)+")")
		return
	}
	type outcome struct {
		mailbox string
		err     *upstream.ProbeStep
	}
	var results []outcome
	for _, mb := range d.o.Mailboxes {
		switch {
		case d.tok == nil:
			d.skip(stepAuth, "auth", mb, "no token ("+checkRef(stepToken)+")")
			continue
		case !d.tlsOK:
			d.skip(stepAuth, "auth", mb, "the upstream TLS session failed ("+checkRef(stepUpstream)+")")
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, d.o.Timeout)
		res, err := d.up.Probe(pctx, mb)
		cancel()
		o := outcome{mailbox: mb}
		if err != nil {
			o.err = res.Failed()
			if o.err == nil {
				o.err = &upstream.ProbeStep{Name: "probe"}
			}
		}
		results = append(results, o)
	}
	anyOK := false
	for _, r := range results {
		anyOK = anyOK || r.err == nil
	}
	for _, r := range results {
		c := Check{Step: stepAuth, Name: "auth", Target: r.mailbox}
		if r.err == nil {
			c.Status = OK
			c.Message = fmt.Sprintf("AUTH XOAUTH2 as %s accepted (235); no mail was sent", r.mailbox)
			d.add(c)
			continue
		}
		c.Status = Fail
		re := r.err.Err
		if re == nil {
			c.Message = "probe failed at " + r.err.Name
			d.add(c)
			continue
		}
		c.Message = fmt.Sprintf("AUTH XOAUTH2 as %s: %s", r.mailbox, oneLine(re.Error()))
		switch {
		case re.Code == 535 && re.Enhanced == [3]int{5, 7, 139}:
			c.AzureSteps = azureSteps(azurestep.SMTPAuth)
			c.Message += " — " + upstream.AuthHint(re)
			c.Fix = "Connect-ExchangeOnline -Organization " + d.cfg.TenantID + "\n" +
				"Set-CASMailbox -Identity " + r.mailbox + " -SmtpClientAuthenticationDisabled $false\n" +
				"If SMTP AUTH is off for the whole tenant: Set-TransportConfig -SmtpClientAuthenticationDisabled $false (the per-mailbox setting wins over it).\n" +
				"Security Defaults block SMTP AUTH: Entra ID → Overview → Properties → Manage security defaults → Disabled (replace them with Conditional Access policies)."
		case re.Code == 535:
			c.Message += " — " + d.authFailureHint(anyOK)
			c.AzureSteps, c.Fix = d.authFailureFix(r.mailbox, anyOK)
		default:
			if h := upstream.AuthHint(re); h != "" {
				c.Message += " — " + h
			}
		}
		d.add(c)
	}
}

// authFailureHint narrows 535 5.7.3, which Exchange gives for every
// authorization failure, with what the doctor knows: the token's role and
// whether another mailbox worked (then the service principal is
// registered and only this mailbox's permission is missing).
func (d *doctor) authFailureHint(anyOK bool) string {
	switch {
	case d.managedIdentity() && d.claims != nil && !d.claims.HasRole(RoleSendAsApp) && !anyOK:
		return "the token has no " + RoleSendAsApp + " role (" + checkRef(stepClaims) + "): the managed identity has no app role assignment on Office 365 Exchange Online; then Exchange needs its service principal and the mailbox permission"
	case d.claims != nil && !d.claims.HasRole(RoleSendAsApp) && !anyOK:
		return "the token has no " + RoleSendAsApp + " role (" + checkRef(stepClaims) + "): admin consent was not granted (" + azurestep.SendAsAppConsent.String() + "), or, with RBAC for Applications, the role assignment is missing; then the service principal and mailbox permission (" +
			azurestep.List(azurestep.NewServicePrincipal, azurestep.AddMailboxPermission) + ")"
	case anyOK:
		return "the app authenticates as another mailbox, so its service principal is registered: this mailbox lacks Add-MailboxPermission (" + azurestep.AddMailboxPermission.String() + ")"
	}
	return "the token is valid but Exchange does not let this app use this mailbox: New-ServicePrincipal with the Enterprise application's object ID (" + azurestep.NewServicePrincipal.String() +
		") or Add-MailboxPermission for this mailbox (" + azurestep.AddMailboxPermission.String() + ") is missing"
}

func (d *doctor) authFailureFix(mailbox string, anyOK bool) ([]int, string) {
	connect := "Connect-ExchangeOnline -Organization " + d.tenantID()
	sp := "New-ServicePrincipal -AppId " + d.appID() + " -ObjectId " + d.objectID() + " -Organization " + d.tenantID()
	perm := "Add-MailboxPermission -Identity " + mailbox + " -User " + d.objectID() + " -AccessRights FullAccess"
	note := "The object ID is the Enterprise application's (service principal's)"
	if d.claims != nil && d.claims.ObjectID != "" {
		note += ", read from the token's oid claim"
	}
	note += ", not the one on the app registration's Overview page. Exchange takes a few minutes to apply a new permission; then run o365relay doctor again."
	if d.managedIdentity() {
		note = d.miExchangeNote()
	}
	if anyOK {
		return azureSteps(azurestep.AddMailboxPermission), connect + "\n" + perm + "\n" + note
	}
	steps := azureSteps(azurestep.NewServicePrincipal, azurestep.AddMailboxPermission)
	fix := ""
	if d.claims != nil && !d.claims.HasRole(RoleSendAsApp) {
		steps = azureSteps(azurestep.SendAsAppConsent, azurestep.NewServicePrincipal, azurestep.AddMailboxPermission)
		fix = d.consentFix() + "\n"
	}
	fix += "In Exchange Online PowerShell (Install-Module ExchangeOnlineManagement):\n" + connect + "\n" + sp + "\n" + perm + "\n" + note
	return steps, fix
}
