// Package azuresetup owns the tenant side of an installation: the
// PowerShell script that performs the seven Azure steps (numbered and
// titled by config/azurestep, the table the hints, the doctor and the
// README use; docs/azure.md explains each), and the certificate the app
// registration authenticates with (docs/install.md, The Azure side).
package azuresetup

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/mail"
	"regexp"
	"strconv"
	"strings"

	"github.com/o365relay/o365relay/config/azurestep"
)

// ExchangeAppID is the appId of the Office 365 Exchange Online service
// principal, the same in every tenant; SMTP.SendAsApp is one of its app
// roles, looked up by value (its id is not hard-coded).
const ExchangeAppID = "00000002-0000-0ff1-ce00-000000000000"

// RoleSendAsApp is the app role (and the RBAC for Applications role
// 'Application SMTP.SendAsApp') that lets an app authenticate to SMTP.
const RoleSendAsApp = "SMTP.SendAsApp"

// Options are the inputs of the setup script.
type Options struct {
	// TenantID is the directory (tenant) ID or a verified domain; required.
	TenantID string
	// ClientID is an existing app registration's Application (client) ID;
	// empty creates (or finds) the app named AppName.
	ClientID string
	// AppName is the app's display name; default "o365relay".
	AppName string
	// Mailboxes the relay sends as; at least one.
	Mailboxes []string
	// Certificate is the public certificate to upload (PEM); nil skips the
	// upload step (the user uploads it in the portal).
	Certificate []byte
	// RBAC uses Exchange's RBAC for Applications (a management scope over
	// the mailboxes and the role Application SMTP.SendAsApp) instead of the
	// API permission with admin consent and Add-MailboxPermission.
	RBAC bool
	// ManagedIdentity is the object (principal) ID of a managed identity
	// (an Azure VM's, an Arc server's) to authorize instead of an app
	// registration: no app and no certificate (steps 1 and 3 only look it
	// up), the role granted as an app role assignment with Graph (a managed
	// identity has no API permissions page), then steps 4 to 7 with the
	// identity's IDs.
	ManagedIdentity string
}

// Script returns the PowerShell script for the seven steps. Every value
// the user supplied appears once, as a single-quoted literal assigned to a
// variable at the top; the rest of the script is fixed text that reads
// those variables, so no value can end a literal or run as code.
func Script(o Options) (string, error) {
	if err := o.check(); err != nil {
		return "", err
	}
	return render(o)
}

func (o *Options) check() error {
	var errs []error
	if strings.TrimSpace(o.TenantID) == "" {
		errs = append(errs, errors.New("--tenant is required: the Directory (tenant) ID or a verified domain (contoso.onmicrosoft.com)"))
	}
	if len(o.Mailboxes) == 0 {
		errs = append(errs, errors.New("--mailbox is required: the mailbox the relay sends as (repeat it for several)"))
	}
	for _, m := range o.Mailboxes {
		if a, err := mail.ParseAddress(m); err != nil || a.Address != m {
			errs = append(errs, fmt.Errorf("mailbox %q is not a bare address like relay@contoso.com", m))
		}
	}
	if o.ManagedIdentity != "" {
		if !guid.MatchString(o.ManagedIdentity) {
			errs = append(errs, fmt.Errorf("--managed-identity %q is not an object ID (a GUID: the identity's Object (principal) ID, or oid in 'o365relay token')", o.ManagedIdentity))
		}
		if o.ClientID != "" || o.Certificate != nil {
			errs = append(errs, errors.New("--managed-identity takes neither --client-id nor --certificate: a managed identity has no app registration and no certificate"))
		}
	}
	for name, v := range map[string]string{"tenant": o.TenantID, "client ID": o.ClientID, "app name": o.AppName} {
		if strings.ContainsFunc(v, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			errs = append(errs, fmt.Errorf("the %s contains a control character", name))
		}
	}
	return errors.Join(errs...)
}

var guid = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// psQuote returns s as a PowerShell single-quoted string literal. Inside
// one, only the single-quote characters are special: ' and the typographic
// ‘ ’ ‚ ‛, which PowerShell treats alike (about_Quoting_Rules); each is
// doubled. $, backticks, double quotes and line breaks are literal there.
func psQuote(s string) string {
	var b strings.Builder
	b.WriteByte('\'')
	for _, r := range s {
		if isPSSingleQuote(r) {
			b.WriteRune(r)
		}
		b.WriteRune(r)
	}
	b.WriteByte('\'')
	return b.String()
}

func isPSSingleQuote(r rune) bool {
	return r == '\'' || r == '\u2018' || r == '\u2019' || r == '\u201a' || r == '\u201b'
}

// render writes the script without checking o (the tests feed it hostile
// values that check would refuse).
func render(o Options) (string, error) {
	if o.AppName == "" {
		o.AppName = "o365relay"
	}
	var certB64, thumb string
	if o.Certificate != nil {
		c, err := ReadCertificate(o.Certificate)
		if err != nil {
			return "", fmt.Errorf("certificate: %w", err)
		}
		certB64 = base64.StdEncoding.EncodeToString(c.Raw)
		thumb, _ = Thumbprints(c)
	}
	var mbx []string
	for _, m := range o.Mailboxes {
		mbx = append(mbx, psQuote(m))
	}
	var b strings.Builder
	variant := "API permission SMTP.SendAsApp with admin consent, Add-MailboxPermission"
	if o.RBAC {
		variant = "RBAC for Applications (management scope + role Application SMTP.SendAsApp)"
	}
	if o.ManagedIdentity != "" {
		variant = "a managed identity (app role assignment with Graph), " + map[bool]string{true: "RBAC for Applications", false: "Add-MailboxPermission"}[o.RBAC]
	}
	fmt.Fprintf(&b, `# o365relay: the Azure side, generated by 'o365relay setup azure'.
# Variant: %s.
# Run it in PowerShell 7 (pwsh) as an admin who may register apps, grant
# admin consent and manage Exchange Online. Every step checks before it
# changes anything and says what it did: running it again is safe.

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version 3.0

# ---- Your values ------------------------------------------------------------
$TenantId       = %s
$ClientId       = %s   # empty: find or create the app named $AppName
$IdentityObjectId = %s   # a managed identity instead of an app registration
$AppName        = %s
$Mailboxes      = @(%s)
$CertBase64     = %s   # empty: upload the certificate in the portal yourself
$CertThumbprint = %s   # SHA-1, as the portal lists it
$UseRbac        = $%t
`, variant, psQuote(o.TenantID), psQuote(o.ClientID), psQuote(o.ManagedIdentity), psQuote(o.AppName), strings.Join(mbx, ", "),
		psQuote(certB64), psQuote(thumb), o.RBAC)
	b.WriteString(fixedBody())
	return b.String(), nil
}

// fixedBody is scriptBody with its markers filled in.
func fixedBody() string { return steps().Replace(scriptBody) }

// steps fills scriptBody's markers from config/azurestep: "@@STEP n@@"
// becomes the step's announcement (Step n 'Title'), "@@STEPS@@" their
// count and "@@N AddMailboxPermission@@" that step's number.
func steps() *strings.Replacer {
	all := azurestep.All()
	r := []string{"@@STEPS@@", strconv.Itoa(len(all)), "@@N AddMailboxPermission@@", strconv.Itoa(int(azurestep.AddMailboxPermission))}
	for _, st := range all {
		r = append(r, fmt.Sprintf("@@STEP %d@@", st.Step), fmt.Sprintf("Step %d %s", st.Step, psQuote(st.Title)))
	}
	return strings.NewReplacer(r...)
}

// scriptBody is the fixed part: it reads only the variables above. Steps
// are numbered and titled from config/azurestep (func steps).
const scriptBody = `# ----------------------------------------------------------------------------

$ExchangeAppId = '` + ExchangeAppID + `'   # Office 365 Exchange Online, in every tenant
$RoleValue     = '` + RoleSendAsApp + `'
$ScopeName     = "$AppName mailboxes"

function Step([int]$N, [string]$Text) { Write-Host ''; Write-Host ("[{0}/@@STEPS@@] {1}" -f $N, $Text) -ForegroundColor Cyan }
function Did([string]$Text) { Write-Host "      changed: $Text" -ForegroundColor Yellow }
function Ok([string]$Text) { Write-Host "      ok: $Text" -ForegroundColor Green }
function OData([string]$Value) { "'" + ($Value -replace "'", "''") + "'" }

foreach ($module in 'Microsoft.Graph.Applications', 'Microsoft.Graph.Identity.SignIns', 'ExchangeOnlineManagement') {
    if (-not (Get-Module -ListAvailable -Name $module)) {
        Install-Module $module -Scope CurrentUser -Force
        Did "installed the PowerShell module $module"
    }
}
Connect-MgGraph -TenantId $TenantId -NoWelcome -Scopes 'Application.ReadWrite.All', 'AppRoleAssignment.ReadWrite.All', 'Policy.Read.All'

# ---- 1. The app registration and its Enterprise application ----------------
@@STEP 1@@
if ($IdentityObjectId) {
    $sp = Get-MgServicePrincipal -ServicePrincipalId $IdentityObjectId -ErrorAction SilentlyContinue
    if (-not $sp -or $sp.ServicePrincipalType -ne 'ManagedIdentity') { throw "$IdentityObjectId is not the object ID of a managed identity in tenant $TenantId." }
    $app = $null
    Ok "managed identity $($sp.DisplayName): object ID $($sp.Id), client ID $($sp.AppId); no app registration"
} elseif ($ClientId) {
    $app = Get-MgApplication -Filter ('appId eq ' + (OData $ClientId))
    if (-not $app) { throw "No app registration with client ID $ClientId in tenant $TenantId (AADSTS700016 would follow)." }
    Ok "app registration $($app.DisplayName), client ID $($app.AppId)"
} else {
    $app = @(Get-MgApplication -Filter ('displayName eq ' + (OData $AppName)))
    if ($app.Count -gt 1) { throw "$($app.Count) apps are named $AppName; pass --client-id to pick one." }
    if ($app.Count -eq 1) {
        $app = $app[0]
        Ok "app registration $AppName exists, client ID $($app.AppId)"
    } else {
        $app = New-MgApplication -DisplayName $AppName -SignInAudience 'AzureADMyOrg'
        Did "created the app registration $AppName, client ID $($app.AppId)"
    }
}
if (-not $IdentityObjectId) {
    $sp = Get-MgServicePrincipal -Filter ('appId eq ' + (OData $app.AppId))
    if (-not $sp) {
        $sp = New-MgServicePrincipal -AppId $app.AppId
        Did "created its Enterprise application (service principal), object ID $($sp.Id)"
    } else {
        Ok "Enterprise application object ID $($sp.Id) (not the app registration's $($app.Id))"
    }
}
$AppId = $sp.AppId

# ---- 2. SMTP.SendAsApp with admin consent ----------------------------------
@@STEP 2@@
$exo = Get-MgServicePrincipal -Filter ('appId eq ' + (OData $ExchangeAppId))
if (-not $exo) { throw 'Office 365 Exchange Online has no service principal in this tenant: is Exchange Online licensed?' }
$role = $exo.AppRoles | Where-Object { $_.Value -eq $RoleValue -and $_.AllowedMemberTypes -contains 'Application' }
if (-not $role) { throw "Office 365 Exchange Online offers no app role $RoleValue." }
if ($UseRbac) {
    Ok 'skipped: with RBAC for Applications the role is assigned in Exchange (step @@N AddMailboxPermission@@)'
} elseif ($IdentityObjectId) {
    Ok 'a managed identity has no API permissions page: the role is granted as an app role assignment'
}
if (-not $UseRbac -and -not $IdentityObjectId) {
    $access = @($app.RequiredResourceAccess)
    $entry = $access | Where-Object { $_.ResourceAppId -eq $ExchangeAppId }
    if ($entry -and ($entry.ResourceAccess | Where-Object { $_.Id -eq $role.Id -and $_.Type -eq 'Role' })) {
        Ok "the app requests $RoleValue"
    } else {
        $others = @($access | Where-Object { $_.ResourceAppId -ne $ExchangeAppId })
        $wanted = @(@($entry | ForEach-Object { $_.ResourceAccess }) | Where-Object { $_ }) + @(@{ Id = $role.Id; Type = 'Role' })
        Update-MgApplication -ApplicationId $app.Id -RequiredResourceAccess ($others + @(@{ ResourceAppId = $ExchangeAppId; ResourceAccess = $wanted }))
        Did "added the API permission Office 365 Exchange Online / $RoleValue (Application)"
    }
}
if (-not $UseRbac) {
    $granted = Get-MgServicePrincipalAppRoleAssignment -ServicePrincipalId $sp.Id -All |
        Where-Object { $_.AppRoleId -eq $role.Id -and $_.ResourceId -eq $exo.Id }
    if ($granted) {
        Ok 'admin consent granted'
    } else {
        New-MgServicePrincipalAppRoleAssignment -ServicePrincipalId $sp.Id -PrincipalId $sp.Id -ResourceId $exo.Id -AppRoleId $role.Id | Out-Null
        Did "granted admin consent for $RoleValue"
    }
}

# ---- 3. The certificate ----------------------------------------------------
@@STEP 3@@
if ($IdentityObjectId) {
    Ok 'skipped: a managed identity gets its tokens from the platform, with no certificate'
} else {
    $app = Get-MgApplication -ApplicationId $app.Id
    $thumbs = @($app.KeyCredentials | ForEach-Object { ($_.CustomKeyIdentifier | ForEach-Object { $_.ToString('X2') }) -join '' })
    if (-not $CertBase64) {
        Ok "no certificate given: upload yours under App registrations > $($app.DisplayName) > Certificates & secrets ($($thumbs.Count) there now)"
    } elseif ($thumbs -contains $CertThumbprint) {
        Ok "certificate $CertThumbprint is uploaded"
    } elseif ($thumbs.Count -gt 0) {
        # Updating keyCredentials replaces them all, and Graph does not
        # return the existing keys to send back: adding here could remove a
        # certificate in use. The portal adds without removing.
        Write-Warning "The app has $($thumbs.Count) other certificate(s). Upload the new one in the portal (App registrations > $($app.DisplayName) > Certificates & secrets > Upload certificate), thumbprint $CertThumbprint; this script does not replace existing credentials."
    } else {
        $cert = [System.Security.Cryptography.X509Certificates.X509Certificate2]::new([Convert]::FromBase64String($CertBase64))
        Update-MgApplication -ApplicationId $app.Id -KeyCredentials @(@{
            Type = 'AsymmetricX509Cert'; Usage = 'Verify'; Key = $cert.RawData
            DisplayName = "CN=$($cert.GetNameInfo('SimpleName', $false))"; EndDateTime = $cert.NotAfter.ToUniversalTime()
        })
        Did "uploaded certificate $CertThumbprint, valid until $($cert.NotAfter.ToString('yyyy-MM-dd')); Entra ID accepts it within about two minutes"
    }
}

# ---- 4. Exchange Online PowerShell -----------------------------------------
@@STEP 4@@
Connect-ExchangeOnline -ShowBanner:$false
Ok 'connected'

# ---- 5. The Enterprise application in Exchange -----------------------------
@@STEP 5@@
$exoSp = Get-ServicePrincipal -ErrorAction SilentlyContinue | Where-Object { $_.AppId -eq $AppId }
if ($exoSp -and $exoSp.ObjectId -ne $sp.Id) {
    # The classic mistake: the app registration's object ID instead of the
    # Enterprise application's. Exchange then refuses AUTH with 535 5.7.3.
    Remove-ServicePrincipal -Identity $exoSp.Identity -Confirm:$false
    Did "removed the Exchange service principal with the wrong object ID $($exoSp.ObjectId)"
    $exoSp = $null
}
if ($exoSp) {
    Ok "Exchange knows the app as object ID $($sp.Id)"
} else {
    $exoSp = New-ServicePrincipal -AppId $AppId -ObjectId $sp.Id -DisplayName $AppName
    Did "registered the app in Exchange with object ID $($sp.Id)"
}

# ---- 6. The mailboxes ------------------------------------------------------
@@STEP 6@@
if ($UseRbac) {
    $filter = ($Mailboxes | ForEach-Object { "PrimarySmtpAddress -eq '{0}'" -f ($_ -replace "'", "''") }) -join ' -or '
    $scope = Get-ManagementScope -Identity $ScopeName -ErrorAction SilentlyContinue
    if (-not $scope) {
        New-ManagementScope -Name $ScopeName -RecipientRestrictionFilter $filter | Out-Null
        Did "created the management scope '$ScopeName' over $($Mailboxes.Count) mailbox(es)"
    } elseif ($scope.RecipientFilter -ne $filter) {
        Set-ManagementScope -Identity $ScopeName -RecipientRestrictionFilter $filter
        Did "updated the management scope '$ScopeName' to $($Mailboxes.Count) mailbox(es)"
    } else {
        Ok "management scope '$ScopeName'"
    }
    $assigned = Get-ManagementRoleAssignment -Role "Application $RoleValue" -ErrorAction SilentlyContinue |
        Where-Object { $_.CustomResourceScope -eq $ScopeName -and ($_.RoleAssignee -eq $exoSp.Identity -or $_.RoleAssigneeName -eq $exoSp.Identity) }
    if ($assigned) {
        Ok "role Application $RoleValue assigned over '$ScopeName'"
    } else {
        New-ManagementRoleAssignment -App $AppId -Role "Application $RoleValue" -CustomResourceScope $ScopeName | Out-Null
        Did "assigned the role Application $RoleValue over '$ScopeName'"
    }
    foreach ($m in $Mailboxes) {
        $t = Test-ServicePrincipalAuthorization -Identity $AppId -Resource $m | Where-Object { $_.RoleName -eq "Application $RoleValue" }
        if ($t -and $t.InScope) { Ok "$m is in scope" } else { Write-Warning "$m is not in scope yet: role assignments can take up to two hours to apply." }
    }
} else {
    foreach ($m in $Mailboxes) {
        $perm = Get-MailboxPermission -Identity $m -User $sp.Id -ErrorAction SilentlyContinue |
            Where-Object { $_.AccessRights -contains 'FullAccess' -and -not $_.Deny }
        if ($perm) {
            Ok "$m allows the app FullAccess"
        } else {
            Add-MailboxPermission -Identity $m -User $sp.Id -AccessRights FullAccess | Out-Null
            Did "gave the app FullAccess to $m"
        }
    }
}

# ---- 7. SMTP AUTH ----------------------------------------------------------
@@STEP 7@@
$orgDisabled = (Get-TransportConfig).SmtpClientAuthenticationDisabled
foreach ($m in $Mailboxes) {
    $cas = Get-CASMailbox -Identity $m
    if ($cas.SmtpClientAuthenticationDisabled -eq $false) {
        Ok "SMTP AUTH is enabled for $m"
    } elseif ($cas.SmtpClientAuthenticationDisabled -eq $true -or $orgDisabled) {
        Set-CASMailbox -Identity $m -SmtpClientAuthenticationDisabled $false
        Did "enabled SMTP AUTH for $m"
    } else {
        Ok "SMTP AUTH is enabled for $m (the organization's default)"
    }
}
$defaults = Get-MgPolicyIdentitySecurityDefaultEnforcementPolicy
if ($defaults.IsEnabled) {
    Write-Warning 'Security Defaults are on and block SMTP AUTH (535 5.7.139): turn them off (Entra ID > Overview > Properties > Manage security defaults) and use Conditional Access instead.'
} else {
    Ok 'Security Defaults are off'
}

Write-Host ''
Write-Host 'Done. For the relay (/etc/o365relay/o365relay.env, or the Helm values):' -ForegroundColor Cyan
Write-Host "  AZURE_TENANT_ID=$((Get-MgContext).TenantId)"
if ($IdentityObjectId) {
    Write-Host '  O365RELAY_CREDENTIAL=managed_identity'
    Write-Host "  AZURE_CLIENT_ID=$AppId   (only for a user-assigned identity; leave it unset for the system-assigned one)"
} else {
    Write-Host "  AZURE_CLIENT_ID=$AppId"
}
Write-Host "  O365RELAY_MAILBOX=$($Mailboxes[0])"
Write-Host 'Then run: o365relay doctor' -ForegroundColor Cyan
`
