package doctor

import (
	"fmt"
	"strings"

	"github.com/o365relay/o365relay/config"
	"github.com/o365relay/o365relay/token"
)

// A managed identity changes the checklist where it has no app
// registration: no clock check (no client assertion), the credential is the
// platform's endpoint, the SMTP.SendAsApp role is granted with Microsoft
// Graph (a managed identity's service principal has no API permissions
// page), and the Exchange commands name the identity's client ID and
// object ID, which the token carries (appid, oid).

func (d *doctor) managedIdentity() bool { return d.cfg.Credential() == config.CredManagedIdentity }

// miIdentity is the identity the configuration selects.
func (d *doctor) miIdentity() token.ManagedIdentity {
	return token.ManagedIdentity{ClientID: d.cfg.ClientID, ResourceID: d.cfg.ManagedIdentityResourceID}
}

func (d *doctor) miConfigMessage() string {
	tenant := d.cfg.TenantID
	if tenant == "" {
		tenant = "(from the token)"
	}
	return fmt.Sprintf("managed identity (%s), tenant %s, mailbox %s, upstream %s",
		d.miIdentity(), tenant, strings.Join(d.o.Mailboxes, ", "), d.cfg.Upstream)
}

// checkManagedIdentity is check 2 for a managed identity: which endpoint
// MSAL will ask, from the environment. Check 3 asks it.
func (d *doctor) checkManagedIdentity() {
	c := Check{Step: stepCredential, Name: "credential"}
	source, endpoint, err := token.ManagedIdentityEndpoint()
	if err != nil {
		c.Status, c.Message = Fail, "managed identity: "+oneLine(err.Error())
		d.add(c)
		return
	}
	m := d.miIdentity()
	d.cred = &token.Credential{ManagedIdentity: &m}
	c.Status = OK
	c.Details = map[string]string{"source": source, "endpoint": endpoint, "identity": m.String()}
	c.Message = fmt.Sprintf("managed identity (%s) from %s at %s; no key material", m, source, endpoint)
	d.add(c)
}

// appID is the client ID Exchange sees: the app's, or the managed
// identity's (the token's appid; the configuration may not name it).
func (d *doctor) appID() string {
	if d.cfg.ClientID != "" {
		return d.cfg.ClientID
	}
	if d.claims != nil && d.claims.AppID != "" {
		return d.claims.AppID
	}
	return "<the managed identity's client ID>"
}

func (d *doctor) tenantID() string {
	if d.cfg.TenantID != "" {
		return d.cfg.TenantID
	}
	if d.claims != nil && d.claims.TenantID != "" {
		return d.claims.TenantID
	}
	return "<tenant ID>"
}

// miRoleFix grants SMTP.SendAsApp to a managed identity: an app role
// assignment from its service principal to Office 365 Exchange Online's,
// with the role looked up by its value (Microsoft Graph PowerShell).
func (d *doctor) miRoleFix() string {
	oid := d.objectID()
	return strings.Join([]string{
		"A managed identity has no API permissions page: assign the app role with Microsoft Graph PowerShell (Install-Module Microsoft.Graph), as a Privileged Role Administrator:",
		"Connect-MgGraph -TenantId " + d.tenantID() + " -Scopes Application.Read.All,AppRoleAssignment.ReadWrite.All",
		"$exo = Get-MgServicePrincipal -Filter \"appId eq '" + token.ExchangeOnlineAppID + "'\"",
		"$role = $exo.AppRoles | Where-Object { $_.Value -eq '" + RoleSendAsApp + "' }",
		"New-MgServicePrincipalAppRoleAssignment -ServicePrincipalId " + oid + " -PrincipalId " + oid + " -ResourceId $exo.Id -AppRoleId $role.Id",
		"The platform caches a managed identity's token (up to 24 h): the role appears in a token issued after the assignment, so the doctor may show the old one for a while.",
	}, "\n")
}

func (d *doctor) miExchangeNote() string {
	return "AppId is the managed identity's client ID and ObjectId its object (principal) ID, both read from the token (appid, oid); the portal shows them on the identity's page (user-assigned: Overview; system-assigned: the VM → Identity). Exchange takes a few minutes to apply a new permission; then run o365relay doctor again."
}
