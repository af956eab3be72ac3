// Package azuresetup owns the tenant side of an installation: the seven
// Azure steps (one table that the script, and later the doctor's hints and
// the README, number from; docs/azure.md explains each), the PowerShell
// script that performs them, and the certificate the app registration
// authenticates with (docs/install.md, The Azure side).
package azuresetup

// Step is one of the Azure steps, numbered as the README's "In Azure"
// list and the doctor's hints number them.
type Step struct {
	N     int
	Title string
	// Produces is what the step leaves behind, and Mistake how its absence
	// or a mistake in it shows.
	Produces, Mistake string
}

// Steps returns the seven steps in order.
func Steps() []Step {
	return []Step{
		{1, "Register an app in Entra ID", "the Application (client) ID and the Directory (tenant) ID, and its Enterprise application (service principal)",
			"wrong client ID: AADSTS700016; wrong tenant: AADSTS90002"},
		{2, "Grant the application permission SMTP.SendAsApp of Office 365 Exchange Online, with admin consent", "the roles claim SMTP.SendAsApp in the token (not used with RBAC for Applications)",
			"no consent: a token without the role, then 535 5.7.3 from Exchange"},
		{3, "Upload the certificate to the app registration", "the thumbprint Entra ID accepts client assertions for",
			"not uploaded, another one, expired, or uploaded under two minutes ago: AADSTS700027"},
		{4, "Connect to Exchange Online PowerShell (ExchangeOnlineManagement)", "an admin session", ""},
		{5, "Register the Enterprise application in Exchange (New-ServicePrincipal)", "Exchange knows the app by the Enterprise application's object ID",
			"missing, or the app registration's object ID used instead: 535 5.7.3"},
		{6, "Let the app use each mailbox (Add-MailboxPermission, or an RBAC for Applications role assignment)", "the app may authenticate as the mailbox",
			"missing for a mailbox: 535 5.7.3 for that mailbox only"},
		{7, "Allow SMTP AUTH for each mailbox", "Exchange accepts AUTH for the mailbox",
			"disabled for the mailbox or tenant, or Security Defaults on: 535 5.7.139"},
	}
}
