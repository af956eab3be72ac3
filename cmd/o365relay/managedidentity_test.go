package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/o365relay/o365relay/relay/exchangetest"
	"github.com/o365relay/o365relay/relay/relaytest"
	"github.com/o365relay/o365relay/relay/status"
	"github.com/o365relay/o365relay/token/mitest"
)

// The managed identity of the imitated VM, server or app: its tokens carry
// its client ID as appid, and the fake Exchange lets only that app use the
// mailbox.
var e2eIdentity = mitest.Identity{
	ClientID: "5a5a5a5a-0000-4000-8000-0000000000e1", ObjectID: "5a5a5a5a-0000-4000-8000-0000000000f1",
	ResourceID: "/subscriptions/0b1f6471-1bf0-4dda-aec3-cb9272f09590/resourceGroups/mail/providers/Microsoft.ManagedIdentity/userAssignedIdentities/o365relay",
	Roles:      []string{exchangetest.RoleSendAsApp},
}

// miCloud is a fake Microsoft 365 whose mailbox is granted to the managed
// identity (and not to the app registration), and a fake endpoint of src.
func miCloud(t *testing.T, src mitest.Source, mod func(*mitest.Options)) (*relaytest.Cloud, *mitest.Server) {
	t.Helper()
	cloud, err := relaytest.New(relaytest.Options{Dir: t.TempDir(), Exchange: func(o *exchangetest.Options) {
		o.Mailboxes[relaytest.Mailbox] = exchangetest.Mailbox{Apps: []string{e2eIdentity.ClientID}}
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cloud.Close(); err != nil {
			t.Error(err)
		}
	})
	id := e2eIdentity
	o := mitest.Options{Source: src, Entra: cloud.Entra, SystemAssigned: &id}
	if mod != nil {
		mod(&o)
	}
	return cloud, mitest.Start(t, o)
}

// miEnv is a relay's environment for a managed identity: the cloud's
// upstream and mailbox, no app registration (no tenant, client ID,
// certificate or authority), and the endpoint's variables.
func miEnv(t *testing.T, cloud *relaytest.Cloud, mi *mitest.Server, extra ...string) (env []string, smtpAddr, adminAddr, spool string) {
	t.Helper()
	spool = t.TempDir()
	env, smtpAddr, adminAddr = relayEnv(t, cloud, spool)
	env = without(env, "AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_AUTHORITY_HOST")
	env = append(env, "O365RELAY_CREDENTIAL=managed_identity")
	env = append(env, mi.Env()...)
	return append(env, extra...), smtpAddr, adminAddr, spool
}

// checkMIDelivery: every message went over TLS, authenticated as the
// mailbox with the managed identity's token (the fake Exchange verified its
// signature, aud, tid and SMTP.SendAsApp, and that its appid holds the
// mailbox).
func checkMIDelivery(t *testing.T, cloud *relaytest.Cloud) {
	t.Helper()
	if v := cloud.Exchange.Violations(); len(v) != 0 {
		t.Errorf("protocol violations: %q", v)
	}
	for _, m := range cloud.Exchange.Messages() {
		if !m.TLS || m.AuthUser != relaytest.Mailbox || m.AppID != e2eIdentity.ClientID {
			t.Errorf("message from session %d: TLS %v, authenticated as %s with app %s", m.Session, m.TLS, m.AuthUser, m.AppID)
		}
	}
	if n := cloud.Entra.TokenRequests(); n != 0 {
		t.Errorf("%d requests to Entra ID's token endpoint; a managed identity asks only the platform", n)
	}
}

// The whole path through the built binary with the App Service source
// (its documented IDENTITY_ENDPOINT and IDENTITY_HEADER, pointing at
// loopback): one token at start, served from the cache for every message,
// refreshed in the background before it expires; then the endpoint goes
// down for longer than the token lives: mail is accepted and waits in the
// spool, and is delivered once the endpoint is back.
func TestE2EManagedIdentityAppService(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out a 24 s token")
	}
	t.Parallel()
	// 24 s: refreshed at half-life (12 s), handed out until 6 s before
	// its end (a quarter of the lifetime, below the 30 s margin).
	cloud, mi := miCloud(t, mitest.AppService, func(o *mitest.Options) { o.Lifetime = 24 * time.Second })
	env, smtpAddr, adminAddr, _ := miEnv(t, cloud, mi, "O365RELAY_RETRY_MIN=1s", "O365RELAY_RETRY_MAX=2s")
	p := startRelay(t, env, smtpAddr, "serve")
	first := p.waitLog("the first token", fields{"msg": "token acquired", "credential": "managed identity"})
	if len(p.logged(fields{"msg": "managed identity", "source": "App Service", "identity": "system-assigned"})) != 1 {
		t.Fatal("the relay does not say which managed identity it uses")
	}

	sendN(t, smtpAddr, 3, "managed identity")
	e := &e2e{t: t, cloud: cloud, relay: p}
	e.waitMessages(3)
	if n := mi.Issued(); n != 1 {
		t.Fatalf("%d tokens issued for 3 messages, want 1 (cached)", n)
	}
	checkMIDelivery(t, cloud)

	// Refreshed in the background, before the first token expired.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for mi.Issued() < 2 {
		if err := mi.WaitRequests(ctx, len(mi.Requests())+1); err != nil {
			t.Fatalf("no refresh: %v\n%s", err, p.out.String())
		}
	}
	second := p.waitLogged("the refreshed token", 2, fields{"msg": "token acquired", "credential": "managed identity"})[1]
	if at, expired := second.time(t, "ts"), first.time(t, "expires"); !at.Before(expired) {
		t.Errorf("refreshed at %v, after the first token expired at %v", at, expired)
	}

	// Down: the held token serves until it is too close to its end, then
	// mail waits in the spool.
	mi.SetOutage(503)
	waitStatus(t, adminAddr, "the held token expired", func(st status.Status) bool { return st.Token.State == status.TokenNone })
	sendN(t, smtpAddr, 2, "while the endpoint is down")
	p.waitLog("a message held for want of a token", fields{"msg": "deferred", "upstream": "4.7.0"})
	if n := len(cloud.Exchange.Messages()); n != 3 {
		t.Fatalf("%d messages delivered without a token", n)
	}
	explained := false
	for _, e := range p.logged(fields{"msg": "token request failed", "credential": "managed identity"}) {
		explained = explained || strings.Contains(e.str("error"), "managed identity endpoint (App Service")
	}
	if !explained {
		t.Error("the failed token request is not explained")
	}
	mi.SetOutage(0)
	e.waitMessages(5)
	checkMIDelivery(t, cloud)
	p.stop()

	// `o365relay token` gets the identity's token the same way and says
	// where from.
	out, code := runToolEnv(t, env, binPath, "token")
	for _, w := range []string{"from the managed identity endpoint of App Service (http://127.0.0.1:", "(managed_identity credential)",
		"app (appid)     " + e2eIdentity.ClientID, "object (oid)    " + e2eIdentity.ObjectID, "roles           SMTP.SendAsApp"} {
		if !strings.Contains(out, w) {
			t.Errorf("o365relay token (exit %d) lacks %q:\n%s", code, w, out)
		}
	}
	scanForSecrets(t, out, knownSecrets(t, env))
}

// canUnshare reports whether this process may run a command in a private
// mount namespace (root, or unprivileged user namespaces).
func canUnshare(t *testing.T) bool {
	t.Helper()
	if _, err := exec.LookPath("unshare"); err != nil {
		return false
	}
	return exec.Command("unshare", "--mount", "--propagation", "private", "true").Run() == nil
}

// Azure Arc through the built binary, with its challenge-file handshake
// (IDENTITY_ENDPOINT and IMDS_ENDPOINT, as the agent sets them): the first
// request gets 401 and WWW-Authenticate: Basic realm=<file>, the relay
// (MSAL) reads the file and sends its content as Basic credentials.
//
// MSAL accepts a challenge file only directly in /var/opt/azcmagent/tokens
// (managedidentity.go). The test does not touch that system path: it runs
// the relay with `unshare --mount` in a private mount namespace where a
// temporary directory is bind-mounted over /var/opt, and the fake writes
// its challenge files into that temporary directory. Needs root (CI is) or
// unprivileged user namespaces; skipped otherwise, except under
// E2E_REQUIRE_TOOLS.
func TestE2EManagedIdentityArc(t *testing.T) {
	t.Parallel()
	if !canUnshare(t) {
		if os.Getenv("E2E_REQUIRE_TOOLS") != "" {
			t.Fatal("unshare --mount does not work here (required in CI)")
		}
		t.Skip("unshare --mount does not work here")
	}
	if fi, err := os.Stat("/var/opt"); err != nil || !fi.IsDir() {
		t.Skip("no /var/opt to mount over")
	}
	for _, tc := range []struct {
		name  string
		extra []string
	}{
		{"system-assigned", nil},
		{"user-assigned by client ID", []string{"AZURE_CLIENT_ID=" + e2eIdentity.ClientID}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			varOpt := t.TempDir()
			tokens := filepath.Join(varOpt, "azcmagent", "tokens")
			if err := os.MkdirAll(tokens, 0o700); err != nil {
				t.Fatal(err)
			}
			cloud, mi := miCloud(t, mitest.Arc, func(o *mitest.Options) {
				o.ArcDir = tokens
				o.UserAssigned = []mitest.Identity{e2eIdentity}
			})
			env, smtpAddr, _, _ := miEnv(t, cloud, mi, tc.extra...)
			env = append(env, "ARC_VAR_OPT="+varOpt, "RELAY_BIN="+binPath)
			p := startRelayArgv(t, env, smtpAddr, []string{"unshare", "--mount", "--propagation", "private", "sh", "-c",
				`mount --bind "$ARC_VAR_OPT" /var/opt && exec "$RELAY_BIN" serve`})
			p.waitLog("the relay to name its managed identity", fields{"msg": "managed identity", "source": "Azure Arc"})
			sendN(t, smtpAddr, 1, "arc")
			e := &e2e{t: t, cloud: cloud, relay: p}
			e.waitMessages(1)
			checkMIDelivery(t, cloud)
			var outcomes []string
			for _, r := range mi.Requests() {
				outcomes = append(outcomes, r.Outcome)
			}
			if strings.Join(outcomes, " ") != "challenge ok" {
				t.Errorf("requests %q, want a challenge then the token", outcomes)
			}
			left, err := os.ReadDir(tokens)
			if err != nil || len(left) != 0 {
				t.Errorf("challenge files left: %v %v", left, err)
			}
			p.stop()
		})
	}
}
