// Package azurestep is the one table of the seven steps an administrator
// takes in Entra ID and Exchange Online before the relay can send
// (docs/azure.md#the-seven-steps). The token hints, the Exchange client's
// AUTH hints, the doctor, config's errors, the setup script
// (relay/azuresetup) and the README's "In Azure" list all number from it;
// code names a step by its constant, never by its number.
//
// It is a leaf under config, the bottom layer, so that token, relay and
// config itself can import it without pointing upward
// (docs/architecture.md).
package azurestep

import (
	"fmt"
	"strconv"
	"strings"
)

// Step is one of the seven steps; its value is the number users see.
type Step int

// The steps, in the order they are done.
const (
	RegisterApp          Step = iota + 1 // the app registration and its Enterprise application
	SendAsAppConsent                     // the API permission SMTP.SendAsApp with admin consent
	Credential                           // the certificate (or secret, or federated credential) on the app
	ExchangePowerShell                   // an Exchange Online PowerShell session
	NewServicePrincipal                  // Exchange learns the Enterprise application's object ID
	AddMailboxPermission                 // the app may use each mailbox
	SMTPAuth                             // SMTP AUTH is allowed for each mailbox
)

// Info is one row of the table.
type Info struct {
	Step Step
	// Name is how a hint names the step after its number: "Azure step 3:
	// <Name>".
	Name string
	// Title is the step as the setup script announces it.
	Title string
	// Anchor is the step's section in docs/azure.md.
	Anchor string
	// Produces is what the step leaves behind, and Mistake how its absence
	// or a mistake in it shows.
	Produces, Mistake string
	// Howto is the README's "In Azure" list item (Markdown, continuation
	// lines without indentation).
	Howto string
}

// All returns the seven steps in order. It builds a fresh slice on each
// call: there is no package-level table to mutate.
func All() []Info {
	return []Info{
		{Step: RegisterApp, Name: "register the app", Anchor: "step-1-register-an-app",
			Title:    "Register an app in Entra ID",
			Produces: "the Application (client) ID and the Directory (tenant) ID, and its Enterprise application (service principal)",
			Mistake:  "wrong client ID: AADSTS700016; wrong tenant: AADSTS90002",
			Howto: "**Register an app** (Entra ID → App registrations → New registration).\n" +
				"Note the *Application (client) ID* and *Directory (tenant) ID*."},
		{Step: SendAsAppConsent, Name: "SMTP.SendAsApp with admin consent", Anchor: "step-2-smtpsendasapp-and-admin-consent",
			Title:    "Grant the application permission SMTP.SendAsApp of Office 365 Exchange Online, with admin consent",
			Produces: "the roles claim SMTP.SendAsApp in the token (not used with RBAC for Applications)",
			Mistake:  "no consent: a token without the role, then 535 5.7.3 from Exchange",
			Howto: "**API permissions → Add a permission → APIs my organization uses →\n" +
				"Office 365 Exchange Online → Application permissions → `SMTP.SendAsApp`**,\n" +
				"then **Grant admin consent**. (With Exchange *RBAC for Applications* you\n" +
				"skip this and assign the role `Application SMTP.SendAsApp` instead.)"},
		{Step: Credential, Name: "the credential under Certificates & secrets", Anchor: "step-3-upload-the-certificate",
			Title:    "Upload the certificate to the app registration",
			Produces: "the thumbprint Entra ID accepts client assertions for",
			Mistake:  "not uploaded, another one, expired, or uploaded under two minutes ago: AADSTS700027",
			Howto: "**Certificates & secrets → Certificates → Upload certificate**: the\n" +
				"`o365relay.crt` that `o365relay cert new` wrote (Entra accepts only RSA;\n" +
				"the command makes RSA 2048/3072/4096 with SHA-256). It takes a minute or\n" +
				"two to propagate."},
		{Step: ExchangePowerShell, Name: "Exchange Online PowerShell", Anchor: "step-4-exchange-online-powershell",
			Title:    "Connect to Exchange Online PowerShell (ExchangeOnlineManagement)",
			Produces: "an admin session",
			Howto:    "In PowerShell: `Install-Module ExchangeOnlineManagement; Connect-ExchangeOnline`."},
		{Step: NewServicePrincipal, Name: "New-ServicePrincipal", Anchor: "step-5-new-serviceprincipal",
			Title:    "Register the Enterprise application in Exchange (New-ServicePrincipal)",
			Produces: "Exchange knows the app by the Enterprise application's object ID",
			Mistake:  "missing, or the app registration's object ID used instead: 535 5.7.3",
			Howto: "`New-ServicePrincipal -AppId <client-id> -ObjectId <object-id>` — the\n" +
				"object ID of the **Enterprise application** (Entra ID → Enterprise\n" +
				"applications → your app), *not* the one on the app registration's page."},
		{Step: AddMailboxPermission, Name: "Add-MailboxPermission", Anchor: "step-6-add-mailboxpermission",
			Title:    "Let the app use each mailbox (Add-MailboxPermission, or an RBAC for Applications role assignment)",
			Produces: "the app may authenticate as the mailbox",
			Mistake:  "missing for a mailbox: 535 5.7.3 for that mailbox only",
			Howto: "`Add-MailboxPermission -Identity <mailbox> -User <object-id> -AccessRights FullAccess`\n" +
				"for each mailbox the relay sends as."},
		{Step: SMTPAuth, Name: "allow SMTP AUTH", Anchor: "step-7-smtp-auth-enabled",
			Title:    "Allow SMTP AUTH for each mailbox",
			Produces: "Exchange accepts AUTH for the mailbox",
			Mistake:  "disabled for the mailbox or tenant, or Security Defaults on: 535 5.7.139",
			Howto: "SMTP AUTH must be allowed for the mailbox:\n" +
				"`Set-CASMailbox <mailbox> -SmtpClientAuthenticationDisabled $false`\n" +
				"(Security Defaults turn it off tenant-wide)."},
	}
}

// Info returns the step's row; a value outside the table gives a zero Info
// with only Step set.
func (s Step) Info() Info {
	for _, i := range All() {
		if i.Step == s {
			return i
		}
	}
	return Info{Step: s}
}

// String reads "Azure step 3", the form the doctor and the hints use where
// the text around it already says what the step does.
func (s Step) String() string { return "Azure step " + strconv.Itoa(int(s)) }

// Named reads "Azure step 3: the credential under Certificates & secrets",
// for a hint that ends by naming the step to revisit.
func (s Step) Named() string { return s.String() + ": " + s.Info().Name }

// Numbers reads "5, 6": the steps' numbers, for texts that list several.
func Numbers(steps ...Step) string {
	n := make([]string, len(steps))
	for i, s := range steps {
		n[i] = strconv.Itoa(int(s))
	}
	return strings.Join(n, ", ")
}

// List reads "Azure step 3" or "Azure steps 2, 5, 6".
func List(steps ...Step) string {
	switch len(steps) {
	case 0:
		return ""
	case 1:
		return steps[0].String()
	}
	return "Azure steps " + Numbers(steps...)
}

// ReadmeList renders the README's numbered "In Azure" list.
func ReadmeList() string {
	var b strings.Builder
	for _, i := range All() {
		for n, line := range strings.Split(i.Howto, "\n") {
			if n == 0 {
				fmt.Fprintf(&b, "%d. %s\n", i.Step, line)
			} else {
				b.WriteString("   " + line + "\n")
			}
		}
	}
	return b.String()
}

// DocsTable renders docs/azure.md's table of the seven steps.
func DocsTable() string {
	var b strings.Builder
	b.WriteString("| # | step | leaves behind | a mistake shows as |\n|---|---|---|---|\n")
	for _, i := range All() {
		mistake := i.Mistake
		if mistake == "" {
			mistake = "—"
		}
		fmt.Fprintf(&b, "| %d | [%s](#%s) | %s | %s |\n", i.Step, i.Name, i.Anchor, i.Produces, mistake)
	}
	return b.String()
}
