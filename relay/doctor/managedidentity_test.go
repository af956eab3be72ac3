package doctor

import (
	"strings"
	"testing"

	"github.com/o365relay/o365relay/relay/exchangetest"
	"github.com/o365relay/o365relay/relay/relaytest"
	"github.com/o365relay/o365relay/token"
	"github.com/o365relay/o365relay/token/mitest"
)

// The managed identity of the imitated VM.
var vmIdentity = mitest.Identity{
	ClientID: "5a5a5a5a-0000-4000-8000-0000000000c1", ObjectID: "5a5a5a5a-0000-4000-8000-0000000000d1",
	ResourceID: "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/mail/providers/Microsoft.Compute/virtualMachines/relay-vm",
	Roles:      []string{RoleSendAsApp},
}

// miFixture points the shared fixture's relay at a fake managed-identity
// endpoint of src whose tokens the shared Entra ID signs, with a private
// fake Exchange. MSAL reads the process environment, so these tests set it
// and do not run in parallel.
func miFixture(t *testing.T, src mitest.Source, mod func(*mitest.Options), mailboxes map[string]exchangetest.Mailbox) (*fixture, *mitest.Server) {
	t.Helper()
	f := sharedFixture(t)
	id := vmIdentity
	o := mitest.Options{Source: src, Entra: f.cloud.Entra, SystemAssigned: &id}
	if mod != nil {
		mod(&o)
	}
	mi := mitest.Start(t, o)
	mi.SetEnv(t)
	if mailboxes == nil {
		mailboxes = map[string]exchangetest.Mailbox{relaytest.Mailbox: granted(vmIdentity.ClientID)}
	}
	f.exchange(mailboxes, nil)
	delete(f.flags, "client_certificate_path")
	delete(f.flags, "client_id")
	delete(f.flags, "tenant_id")
	delete(f.flags, "authority_host")
	f.flags["credential"] = "managed_identity"
	f.opts.ManagedIdentityHTTPClient = mi.Client()
	return f, mi
}

// Everything right on an Azure VM: no clock check (nothing is signed), the
// credential is the IMDS endpoint, the token is the identity's, and the
// Exchange AUTH succeeds.
func TestManagedIdentityAllGood(t *testing.T) {
	f, mi := miFixture(t, mitest.IMDS, nil, nil)
	rep := f.run()
	if !rep.OK {
		t.Fatalf("not OK: %+v", rep.Failed())
	}
	for name, want := range map[string][]string{
		"configuration": {"managed identity (system-assigned)", "tenant (from the token)"},
		"credential":    {"IMDS (Azure VM)", "http://169.254.169.254/metadata/identity/oauth2/token", "no key material"},
		"claims":        {vmIdentity.ClientID, vmIdentity.ObjectID, RoleSendAsApp},
		"auth":          {"accepted (235)"},
	} {
		c := rep.Find(name)
		if c == nil || c.Status != OK {
			t.Errorf("%s: %+v", name, c)
			continue
		}
		for _, w := range want {
			if !strings.Contains(c.Message, w) {
				t.Errorf("%s message lacks %q: %s", name, w, c.Message)
			}
		}
	}
	if c := rep.Find("clock"); c.Status != Skip || !strings.Contains(c.Message, "signs no client assertion") {
		t.Errorf("clock: %s %s", c.Status, c.Message)
	}
	if mi.Issued() != 1 {
		t.Errorf("%d tokens issued", mi.Issued())
	}
}

// Not on Azure: nothing answers at IMDS's address (here: the fake's port,
// closed). The token check fails with "no managed identity endpoint" and
// the fix tells how to check for IMDS and what to do off Azure.
func TestManagedIdentityNoEndpoint(t *testing.T) {
	f, mi := miFixture(t, mitest.IMDS, nil, nil)
	if err := mi.Close(); err != nil {
		t.Fatal(err)
	}
	rep := f.run()
	want(t, rep, 3, "token", nil, []string{"no managed identity endpoint answered at http://169.254.169.254", "not an Azure VM"},
		[]string{"curl -s -H Metadata:true", "azcmagent connect", "O365RELAY_CREDENTIAL=certificate"})
}

// An Arc-enabled server whose agent is not running.
func TestManagedIdentityArcAgentMissing(t *testing.T) {
	f, mi := miFixture(t, mitest.AppService, nil, nil)
	gone := mi.Addr()
	t.Setenv("IDENTITY_HEADER", "")
	t.Setenv("IDENTITY_ENDPOINT", "http://"+gone+"/metadata/identity/oauth2/token")
	t.Setenv("IMDS_ENDPOINT", "http://"+gone)
	if err := mi.Close(); err != nil {
		t.Fatal(err)
	}
	rep := f.run()
	if c := rep.Find("credential"); c.Details["source"] != "Azure Arc" {
		t.Errorf("credential: %+v", c)
	}
	want(t, rep, 3, "token", nil, []string{"no managed identity endpoint", "(Azure Arc)"},
		[]string{"systemctl status himdsd", "azcmagent connect"})
}

// The VM has no system-assigned identity, and a user-assigned one named
// by client ID is not attached: IMDS says "Identity not found".
func TestManagedIdentityNotAssigned(t *testing.T) {
	t.Run("system-assigned off", func(t *testing.T) {
		f, _ := miFixture(t, mitest.IMDS, func(o *mitest.Options) { o.SystemAssigned = nil }, nil)
		rep := f.run()
		want(t, rep, 3, "token", nil, []string{"Identity not found", "system-assigned identity of this VM is off"},
			[]string{"az vm identity assign --resource-group <group> --name <vm>", "System assigned → On"})
	})
	t.Run("user-assigned not attached", func(t *testing.T) {
		f, _ := miFixture(t, mitest.IMDS, nil, nil)
		f.flags["client_id"] = "0000dead-0000-4000-8000-000000000000"
		rep := f.run()
		want(t, rep, 3, "token", nil, []string{"user-assigned, client ID 0000dead-0000-4000-8000-000000000000", "not assigned to this VM"},
			[]string{"az vm identity assign", "--identities", "az identity show"})
	})
}

// The identity's token has no SMTP.SendAsApp: its service principal has no
// app role assignment. The claims warn with the Microsoft Graph commands
// (no API permissions page for a managed identity), and Exchange refuses
// AUTH; the auth fix adds the Exchange steps with the identity's IDs.
func TestManagedIdentityWithoutRole(t *testing.T) {
	f, _ := miFixture(t, mitest.IMDS, func(o *mitest.Options) {
		id := vmIdentity
		id.Roles = nil
		o.SystemAssigned = &id
	}, nil)
	rep := f.run()
	c := rep.Find("claims")
	if c.Status != Warn || !strings.Contains(c.Message, "no app role assignment on Office 365 Exchange Online") {
		t.Errorf("claims: %s %s", c.Status, c.Message)
	}
	graph := []string{
		"Connect-MgGraph -TenantId " + f.cloud.Entra.Tenant(),
		"appId eq '" + token.ExchangeOnlineAppID + "'",
		"$_.Value -eq 'SMTP.SendAsApp'",
		"New-MgServicePrincipalAppRoleAssignment -ServicePrincipalId " + vmIdentity.ObjectID + " -PrincipalId " + vmIdentity.ObjectID + " -ResourceId $exo.Id -AppRoleId $role.Id",
	}
	for _, w := range graph {
		if !strings.Contains(c.Fix, w) {
			t.Errorf("claims fix lacks %q:\n%s", w, c.Fix)
		}
	}
	if strings.Contains(c.Fix, "API permissions →") {
		t.Errorf("claims fix sends a managed identity to the API permissions page:\n%s", c.Fix)
	}
	want(t, rep, 6, "auth", nil, []string{"535 5.7.3", "no app role assignment"},
		append(graph, "New-ServicePrincipal -AppId "+vmIdentity.ClientID+" -ObjectId "+vmIdentity.ObjectID+" -Organization "+f.cloud.Entra.Tenant()))
}

// The Exchange steps: the role is there, but Exchange does not know the
// identity's service principal or it has no permission on the mailbox.
// The fix names the identity's client ID and object ID from the token.
func TestManagedIdentityExchangeSteps(t *testing.T) {
	f, _ := miFixture(t, mitest.AppService, nil, map[string]exchangetest.Mailbox{relaytest.Mailbox: {}})
	rep := f.run()
	c := want(t, rep, 6, "auth", []int{5, 6}, []string{"535 5.7.3"}, []string{
		"Connect-ExchangeOnline -Organization " + f.cloud.Entra.Tenant(),
		"New-ServicePrincipal -AppId " + vmIdentity.ClientID + " -ObjectId " + vmIdentity.ObjectID + " -Organization " + f.cloud.Entra.Tenant(),
		"Add-MailboxPermission -Identity " + relaytest.Mailbox + " -User " + vmIdentity.ObjectID + " -AccessRights FullAccess",
		"managed identity's client ID",
	})
	if strings.Contains(c.Fix, "App registrations") {
		t.Errorf("auth fix names App registrations for a managed identity:\n%s", c.Fix)
	}
}
