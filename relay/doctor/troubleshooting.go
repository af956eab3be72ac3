package doctor

import (
	"fmt"
	"slices"
	"strings"

	"github.com/o365relay/o365relay/config"
	"github.com/o365relay/o365relay/config/azurestep"
	"github.com/o365relay/o365relay/token"
)

// trouble is one row of README.md's table of doctor lines: the line, what
// is wrong, and the fix the doctor prints, which ends with the Azure steps
// it is in, as "(5, 6)". Check numbers and Azure steps come from the same
// constants the checks use, so the table cannot number differently.
type trouble struct{ line, wrong, fix string }

// in is " (N, M)": where in the Azure steps a fix belongs.
func in(steps ...azurestep.Step) string {
	if len(steps) == 0 {
		return ""
	}
	return " (" + azurestep.Numbers(steps...) + ")"
}

// explained is in(…) for the steps token.Explain names for codes.
func explained(codes ...int) string {
	var steps []azurestep.Step
	for _, c := range codes {
		if s, _ := token.Explain(c); s > 0 && !slices.Contains(steps, s) {
			steps = append(steps, s)
		}
	}
	return in(steps...)
}

// line is a doctor line as the README quotes it: "`✘ 3 token: …`".
func line(mark string, step int, text string) string {
	return fmt.Sprintf("`%s %d %s`", mark, step, text)
}

func troubles() []trouble {
	return append(setupTroubles(), exchangeTroubles()...)
}

// setupTroubles are the rows of checks 1 to 4: configuration, clock,
// credential, token and claims.
func setupTroubles() []trouble {
	tok := func(text string) string { return line("✘", stepToken, "token: "+text) }
	return []trouble{
		{line("✘", stepConfig, "configuration"), "a setting is missing, misspelt or invalid",
			"the setting by its variable or flag; tenant and client IDs are on the app's Overview page" + in(azurestep.RegisterApp)},
		{line("✘", stepConfig, "clock") + " / " + line("!", stepConfig, "clock"), "the local clock is more than 5 minutes (fail) / 1 minute (warning) off Entra ID's",
			"turn on NTP (`timedatectl set-ntp true`) — the relay's assertions are valid for 5 minutes, and Entra refuses them with `AADSTS700024`"},
		{line("✘", stepCredential, "credential: … key does not match the certificate"), "the key in the file is not the certificate's",
			"two `openssl … \\| openssl sha256` commands that must print the same hash" + in(azurestep.Credential)},
		{line("✘", stepCredential, "credential: … expired on") + " / `! … expires … in N days`", "the certificate is past its expiry / expires within 30 days",
			"the `openssl req` command for a new one and where to upload it" + in(azurestep.Credential)},
		{tok("AADSTS700016"), "wrong client ID or tenant: no such app in that tenant", "copy both IDs from the app's Overview page" + explained(700016)},
		{tok("AADSTS90002"), "the tenant does not exist (or another cloud)", "`AZURE_TENANT_ID`; national clouds need `AZURE_AUTHORITY_HOST`" + explained(90002)},
		{tok("AADSTS700027"), "the certificate is not uploaded, is another one, has expired, or was uploaded under 2 minutes ago",
			"the thumbprint the app must list under *Certificates & secrets*; **wait 2 minutes after uploading**" + explained(700027)},
		{tok("AADSTS700024"), "the client assertion is outside its time window",
			"fix the clock (see the clock line); with workload identity, the token file is stale" + explained(700024)},
		{tok("AADSTS7000215") + " / `7000222`", "the client secret is wrong (the Secret ID instead of its Value) / expired",
			"a new secret's Value, or a certificate" + explained(7000215, 7000222)},
		{tok("AADSTS70021"), "no federated credential matches the service account token",
			"issuer, subject `system:serviceaccount:<ns>:<sa>` and audience of the federated credential" + explained(70021)},
		{tok("AADSTS70011") + " / `1002012`", "wrong scope (a setting of the relay, not an Azure step)",
			"`O365RELAY_SCOPE=" + config.DefaultScope + "`" + explained(70011, 1002012)},
		{tok("AADSTS500011"), "the scope's resource is not in the tenant: wrong scope, or Office 365 Exchange Online is missing",
			"`O365RELAY_SCOPE=" + config.DefaultScope + "`; Exchange Online must be licensed in the tenant" + explained(500011)},
		{tok("no managed identity endpoint answered"), "managed identity: not an Azure VM (IMDS answers only there), the Arc agent is not installed or not running, or a firewall blocks 169.254.169.254",
			"a `curl -H Metadata:true` check of IMDS; `systemctl status himdsd` / `azcmagent connect` on Arc; otherwise a certificate"},
		{tok("Identity not found") + " (IMDS, Arc) / `Unable to load the proper Managed Identity` (App Service)", "the system-assigned identity is off, or the user-assigned one named by `AZURE_CLIENT_ID` is not attached to this resource",
			"`az vm identity assign …`, and `az identity show` to check the client ID"},
		{tok("… Azure Arc agent's challenge file"), "the relay's user cannot read `/var/opt/azcmagent/tokens`",
			"`usermod -aG himds <user>`; systemd: `SupplementaryGroups=himds`"},
		{line("!", stepClaims, "claims: … no app role assignment on Office 365 Exchange Online"), "managed identity without `SMTP.SendAsApp`",
			"the `New-MgServicePrincipalAppRoleAssignment` commands, with the identity's object ID filled in"},
		{line("!", stepClaims, "claims: the token has no SMTP.SendAsApp role"), fmt.Sprintf("admin consent was not granted — or the app uses Exchange *RBAC for Applications*, which legitimately issues tokens without the role, so this is a warning and check %d (auth) decides", stepAuth),
			"*Grant admin consent*" + in(azurestep.SendAsAppConsent) + ", or the `New-ManagementRoleAssignment -Role 'Application SMTP.SendAsApp'` path"},
		{line("✘", stepClaims, "claims"), "the token is for another audience, tenant or app", "the setting to correct"},
	}
}

// exchangeTroubles are the rows of checks 5 to 7: upstream, auth, spool
// and listener.
func exchangeTroubles() []trouble {
	auth := func(text string) string { return line("✘", stepAuth, "auth <mailbox>: "+text) }
	return []trouble{
		{line("✘", stepUpstream, "upstream: … not trusted"), "something between you and Exchange answers TLS with its own certificate (a TLS-inspecting proxy or firewall)",
			"exempt `smtp.office365.com:587` from inspection, or trust its CA via the system store or `SSL_CERT_FILE`; an `openssl s_client -starttls smtp` command to see what is presented"},
		{line("✘", stepUpstream, "upstream: cannot connect"), "port 587 blocked, wrong `O365RELAY_UPSTREAM` or DNS", "allow outbound TCP 587"},
		{auth("535 5.7.3"), "the token is valid but Exchange refuses the app for this mailbox: no admin consent, no `New-ServicePrincipal`, the wrong object ID, or no `Add-MailboxPermission`",
			"the `Connect-ExchangeOnline`, `New-ServicePrincipal` and `Add-MailboxPermission` commands with the **Enterprise application's** object ID taken from the token's `oid` claim" +
				in(azurestep.NewServicePrincipal, azurestep.AddMailboxPermission) + "; only `Add-MailboxPermission` when another mailbox already works" + in(azurestep.AddMailboxPermission) +
				"; *Grant admin consent* first when the token has no role" + in(azurestep.SendAsAppConsent)},
		{auth("535 5.7.139"), "SMTP AUTH is disabled for the mailbox or tenant, or Security Defaults block it",
			"`Set-CASMailbox -Identity <mailbox> -SmtpClientAuthenticationDisabled $false`, `Set-TransportConfig …` for the tenant, and where to turn off Security Defaults" + in(azurestep.SMTPAuth)},
		{line("✘", stepLocal, "spool"), "the spool directory is not writable (permissions, read-only mount, full disk) or not a directory", "`O365RELAY_SPOOL_DIR`, ownership"},
		{line("✘", stepLocal, "listener: … in use by another program"), "another process holds the port (a taken port is fine when this relay holds it: the doctor sees its spool lock)",
			"an `ss -ltnp` command; `O365RELAY_LISTEN`"},
	}
}

// Troubleshooting renders README.md's table of doctor lines (generated:
// UPDATE_README=1 go test ./relay/doctor -run TestReadmeTroubleshooting).
func Troubleshooting() string {
	var b strings.Builder
	b.WriteString("| doctor line | what is wrong | the fix it prints (Azure step) |\n|---|---|---|\n")
	for _, t := range troubles() {
		fmt.Fprintf(&b, "| %s | %s | %s |\n", t.line, t.wrong, t.fix)
	}
	return b.String()
}
