package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/o365relay/o365relay/config"
	"github.com/o365relay/o365relay/token"
)

// runToken obtains one access token as the daemon would and prints what it
// says about itself. The token is a bearer credential for every mailbox the
// app may use, so it is printed only with --print-token.
func runToken(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("token", "token [--config FILE] [--print-token] [--json] [--SETTING VALUE ...]\n\n"+
		"Obtains an access token from Entra ID with the configured credential and prints\n"+
		"its decoded claims (audience, tenant, app, object ID, roles) and expiry. The\n"+
		"token itself is printed only with --print-token: anyone holding it can send\n"+
		"mail as the app's mailboxes until it expires.", stdout, stderr)
	printToken := fs.Bool("print-token", false, "also print the access token itself, as the last line (a secret: do not paste it anywhere)")
	asJSON := fs.Bool("json", false, "print the claims as JSON")
	cfg, _, code := loadCommand(fs, args, false, stderr)
	if cfg == nil {
		return code
	}
	src, err := newTokenSource(cfg, zap.NewNop())
	if err != nil {
		if ce := (*config.Error)(nil); errors.As(err, &ce) {
			printConfigError(stderr, err)
			return 2
		}
		return exitErr(stderr, err)
	}
	defer func() {
		if err := src.Close(); err != nil {
			fmt.Fprintln(stderr, "o365relay: closing token source:", err)
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	start := time.Now()
	tok, err := src.Token(ctx)
	if err != nil {
		printTokenFailure(stderr, cfg, err)
		return 1
	}
	took := time.Since(start)
	cl, err := token.ParseClaims(tok)
	if err != nil {
		fmt.Fprintf(stderr, "o365relay token: a token was issued but cannot be decoded: %v\n", err)
		return 1
	}
	if *asJSON {
		out := map[string]any{
			"audience": cl.Audience, "issuer": cl.Issuer, "tenant_id": cl.TenantID, "app_id": cl.AppID,
			"object_id": cl.ObjectID, "roles": cl.Roles, "issued_at": cl.IssuedAt.UTC(), "expires_at": tok.ExpiresOn.UTC(),
		}
		if *printToken {
			out["access_token"] = tok.Value.Reveal()
		}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return exitErr(stderr, err)
		}
		return 0
	}
	roles := strings.Join(cl.Roles, " ")
	if roles == "" {
		roles = "(none: admin consent for SMTP.SendAsApp missing, or Exchange RBAC for Applications; see o365relay doctor)"
	}
	fmt.Fprintf(stdout, "token obtained from %s for %s in %s (%s credential)\n", tokenIssuer(cfg), cfg.Scope, took.Round(time.Millisecond), cfg.Credential())
	fmt.Fprintf(stdout, "  audience (aud)  %s\n", strings.Join(cl.Audience, ", "))
	fmt.Fprintf(stdout, "  issuer (iss)    %s\n", cl.Issuer)
	fmt.Fprintf(stdout, "  tenant (tid)    %s\n", cl.TenantID)
	fmt.Fprintf(stdout, "  app (appid)     %s\n", cl.AppID)
	fmt.Fprintf(stdout, "  object (oid)    %s  (the Enterprise application's object ID, for New-ServicePrincipal and Add-MailboxPermission)\n", cl.ObjectID)
	if cl.ManagedIdentityResourceID != "" {
		fmt.Fprintf(stdout, "  identity        %s  (xms_mirid: the managed identity's resource)\n", cl.ManagedIdentityResourceID)
	}
	fmt.Fprintf(stdout, "  roles           %s\n", roles)
	fmt.Fprintf(stdout, "  issued (iat)    %s\n", cl.IssuedAt.UTC().Format(time.RFC3339))
	fmt.Fprintf(stdout, "  expires         %s (in %s)\n", tok.ExpiresOn.UTC().Format(time.RFC3339), time.Until(tok.ExpiresOn).Round(time.Second))
	if *printToken {
		fmt.Fprintf(stdout, "\n%s\n", tok.Value.Reveal())
	} else {
		fmt.Fprintln(stdout, "  (the token itself is not shown; --print-token shows it)")
	}
	return 0
}

// newTokenSource builds the daemon's token source from cfg: the credential
// via token.CredentialFromConfig, so `token` and `send` authenticate exactly as
// `serve` does. It needs the identity settings, not a mailbox.
func newTokenSource(cfg *config.Config, log *zap.Logger) (*token.EntraSource, error) {
	if err := checkIdentity(cfg); err != nil {
		return nil, err
	}
	cred, err := token.CredentialFromConfig(cfg, log)
	if err != nil {
		return nil, err
	}
	return token.NewSource(token.Options{
		AuthorityHost: cfg.AuthorityHost,
		TenantID:      cfg.TenantID,
		ClientID:      cfg.ClientID,
		Scope:         cfg.Scope,
		Credential:    cred,
		Logger:        log,
	})
}

// checkIdentity is config.CheckDaemon without the mailbox requirement.
func checkIdentity(cfg *config.Config) error {
	err := cfg.CheckDaemon()
	if err == nil {
		return nil
	}
	var keep []error
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	for _, e := range errs {
		var ce *config.Error
		if errors.As(e, &ce) && ce.Key == "mailbox" {
			continue
		}
		keep = append(keep, e)
	}
	return errors.Join(keep...)
}

// printTokenFailure prints a failed token request with the doctor's fix.
func printTokenFailure(w io.Writer, cfg *config.Config, err error) {
	ee := token.AsEntraError(err)
	if ee == nil {
		fmt.Fprintln(w, "o365relay: token request failed:", err)
		return
	}
	fmt.Fprintln(w, "o365relay: token request failed:", ee.Error())
	ids := token.SetupIDs{TenantID: cfg.TenantID, ClientID: cfg.ClientID, AuthorityHost: cfg.AuthorityHost, CertificatePath: cfg.CertificatePath}
	if cfg.Credential() == "certificate" {
		if c, lerr := token.LoadCertificate(cfg.CertificatePath, cfg.CertificatePassword); lerr == nil {
			ids.Thumbprint = c.ThumbprintSHA1Hex()
		}
	}
	fix := token.Fix(ee.Code(), ids)
	if m := managedIdentityOf(cfg); m != nil && ee.Code() == 0 {
		fix = token.ManagedIdentityFix(err, *m)
	}
	if fix != "" {
		fmt.Fprintln(w, "fix:")
		for _, l := range strings.Split(fix, "\n") {
			fmt.Fprintln(w, "  "+l)
		}
	}
	fmt.Fprintln(w, "o365relay doctor checks every step.")
}

// tokenIssuer says where the token comes from: the authority host, or the
// managed-identity endpoint MSAL picks here.
func tokenIssuer(cfg *config.Config) string {
	if cfg.Credential() != config.CredManagedIdentity {
		return cfg.AuthorityHost
	}
	source, endpoint, err := token.ManagedIdentityEndpoint()
	if err != nil {
		return "the managed identity endpoint"
	}
	return "the managed identity endpoint of " + source + " (" + endpoint + ")"
}

// managedIdentityOf is the configured managed identity, or nil.
func managedIdentityOf(cfg *config.Config) *token.ManagedIdentity {
	if cfg.Credential() != config.CredManagedIdentity {
		return nil
	}
	return &token.ManagedIdentity{ClientID: cfg.ClientID, ResourceID: cfg.ManagedIdentityResourceID}
}
