package doctor

import (
	"fmt"
	"strings"
	"time"

	"github.com/o365relay/o365relay/config"
	"github.com/o365relay/o365relay/config/azurestep"
	"github.com/o365relay/o365relay/token"
)

// Check 4: the token's claims, and the fixes that grant the role and
// name the service principal.

// exchangeAppID is Office 365 Exchange Online's application ID, which some
// tokens carry as aud instead of the resource URI.
const exchangeAppID = "00000002-0000-0ff1-ce00-000000000000"

// RoleSendAsApp is the application permission SMTP AUTH with client
// credentials needs (azurestep.SendAsAppConsent,
// docs/azure.md#step-2-smtpsendasapp-and-admin-consent).
const RoleSendAsApp = "SMTP.SendAsApp"

func (d *doctor) checkClaims() {
	if d.tok == nil {
		d.skip(stepClaims, "claims", "", "no token ("+checkRef(stepToken)+")")
		return
	}
	c := Check{Step: stepClaims, Name: "claims"}
	cl, err := token.ParseClaims(*d.tok)
	if err != nil {
		c.Status, c.Message = Warn, "the token cannot be decoded ("+err.Error()+"); Exchange decides in "+checkRef(stepAuth)
		d.add(c)
		return
	}
	d.claims = &cl
	c.Details = map[string]string{"aud": strings.Join(cl.Audience, ","), "tid": cl.TenantID, "appid": cl.AppID, "oid": cl.ObjectID, "roles": strings.Join(cl.Roles, ","),
		"exp": cl.ExpiresAt.UTC().Format(time.RFC3339)}
	wantAud := strings.TrimSuffix(d.cfg.Scope, "/.default")
	var problems, fixes []string
	if !contains(cl.Audience, wantAud) && !contains(cl.Audience, exchangeAppID) {
		problems = append(problems, fmt.Sprintf("audience is %s, not Exchange Online (%s)", strings.Join(cl.Audience, ","), wantAud))
		fixes = append(fixes, "Set O365RELAY_SCOPE to "+config.DefaultScope+" (the default).")
	}
	if isGUID(d.cfg.TenantID) && !strings.EqualFold(cl.TenantID, d.cfg.TenantID) {
		problems = append(problems, fmt.Sprintf("tenant is %s, not AZURE_TENANT_ID %s", cl.TenantID, d.cfg.TenantID))
		fixes = append(fixes, "Set AZURE_TENANT_ID to the Directory (tenant) ID of the tenant the mailboxes are in.")
	}
	if cl.AppID != "" && d.cfg.ClientID != "" && !strings.EqualFold(cl.AppID, d.cfg.ClientID) {
		problems = append(problems, fmt.Sprintf("app is %s, not AZURE_CLIENT_ID %s", cl.AppID, d.cfg.ClientID))
	}
	summary := fmt.Sprintf("aud %s, tenant %s, app %s, service principal object ID (oid) %s, roles [%s], expires %s",
		strings.Join(cl.Audience, ","), cl.TenantID, cl.AppID, orUnknown(cl.ObjectID), strings.Join(cl.Roles, " "), cl.ExpiresAt.UTC().Format(time.RFC3339))
	switch {
	case len(problems) > 0:
		c.Status = Fail
		c.Message = strings.Join(problems, "; ") + " (" + summary + ")"
		c.Fix = strings.Join(fixes, "\n")
	case !cl.HasRole(RoleSendAsApp) && d.managedIdentity():
		c.Status = Warn
		c.Message = "the token has no " + RoleSendAsApp + " role: the managed identity's service principal has no app role assignment on Office 365 Exchange Online (a managed identity has no API permissions page) — unless Exchange RBAC for Applications is used (" + checkRef(stepAuth) + " shows whether Exchange accepts the token) (" + summary + ")"
		c.Fix = d.consentFix()
	case !cl.HasRole(RoleSendAsApp):
		c.Status = Warn
		c.AzureSteps = azureSteps(azurestep.SendAsAppConsent)
		c.Message = "the token has no " + RoleSendAsApp + " role: admin consent for the API permission was not granted — unless the app uses Exchange RBAC for Applications, which legitimately issues tokens without it (" + checkRef(stepAuth) + " shows whether Exchange accepts the token) (" + summary + ")"
		c.Fix = d.consentFix() + "\nOr, with Exchange RBAC for Applications (no API permission), assign the role instead:\n" + d.rbacFix()
	default:
		c.Status = OK
		c.Message = summary
	}
	d.add(c)
}

func (d *doctor) consentFix() string {
	if d.managedIdentity() {
		return d.miRoleFix()
	}
	return "Entra ID → App registrations → " + d.cfg.ClientID + " → API permissions → Add a permission → APIs my organization uses → Office 365 Exchange Online → Application permissions → SMTP.SendAsApp, then Grant admin consent for the tenant (or open " + config.DefaultAuthorityHost + d.cfg.TenantID + "/adminconsent?client_id=" + d.cfg.ClientID + ")."
}

func (d *doctor) rbacFix() string {
	return "Connect-ExchangeOnline -Organization " + d.tenantID() + "\n" +
		"New-ServicePrincipal -AppId " + d.appID() + " -ObjectId " + d.objectID() + " -Organization " + d.tenantID() + "\n" +
		"New-ManagementRoleAssignment -Role 'Application SMTP.SendAsApp' -App " + d.appID() + " -CustomResourceScope <management scope containing the mailboxes>"
}

// objectID is the Enterprise application's (service principal's) object
// ID: the token's oid claim is exactly that, so the user need not find it
// in the portal (where the app registration's own, different object ID is
// the one shown first — the usual mistake, docs/azure.md#step-5-new-serviceprincipal).
func (d *doctor) objectID() string {
	if d.claims != nil && d.claims.ObjectID != "" {
		return d.claims.ObjectID
	}
	if d.managedIdentity() {
		return "<object (principal) ID on the managed identity's Identity page>"
	}
	return "<object ID from Entra ID → Enterprise applications → " + d.cfg.ClientID + ">"
}

func orUnknown(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if strings.EqualFold(strings.TrimSuffix(x, "/"), strings.TrimSuffix(v, "/")) {
			return true
		}
	}
	return false
}

func isGUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, r := range s {
		switch i {
		case 8, 13, 18, 23:
			if r != '-' {
				return false
			}
		default:
			if !strings.ContainsRune("0123456789abcdefABCDEF", r) {
				return false
			}
		}
	}
	return true
}
