package doctor

import (
	"context"
	"fmt"
	"time"

	"github.com/o365relay/o365relay/token"
)

// Check 3: Entra ID (or the managed-identity endpoint) issues a token.

func (d *doctor) checkToken(ctx context.Context) {
	c := Check{Step: stepToken, Name: "token"}
	switch {
	case !d.configOK:
		d.skip(stepToken, "token", "", "the configuration is incomplete ("+checkRef(stepConfig)+")")
		return
	case d.cred == nil:
		d.skip(stepToken, "token", "", "the credential did not load ("+checkRef(stepCredential)+")")
		return
	}
	httpClient := d.o.HTTPClient
	if d.cred.ManagedIdentity != nil {
		httpClient = d.o.ManagedIdentityHTTPClient
	}
	src, err := token.NewSource(token.Options{
		AuthorityHost: d.cfg.AuthorityHost,
		TenantID:      d.cfg.TenantID,
		ClientID:      d.cfg.ClientID,
		Scope:         d.cfg.Scope,
		Credential:    *d.cred,
		HTTPClient:    httpClient,
		Clock:         d.o.Clock,
		Logger:        d.o.Logger.Named("token"),
	})
	if err != nil {
		c.Status, c.Message = Fail, oneLine(err.Error())
		c.Fix = "Fix the identity settings named above (README.md, Configuration reference)."
		d.add(c)
		return
	}
	d.src = src
	tctx, cancel := context.WithTimeout(ctx, d.o.Timeout)
	defer cancel()
	tok, err := src.Token(tctx)
	if err != nil {
		c.Status = Fail
		if ee := token.AsEntraError(err); ee != nil {
			c.Message = oneLine(ee.Error())
			if step, _ := token.Explain(ee.Code()); step > 0 {
				c.AzureSteps = azureSteps(step)
			}
			c.Fix = token.Fix(ee.Code(), d.ids)
			if d.cred.ManagedIdentity != nil && ee.Code() == 0 {
				c.Fix = token.ManagedIdentityFix(err, *d.cred.ManagedIdentity)
			}
			if c.Fix == "" && ee.Code() == 0 {
				c.Fix = "Check that this host reaches " + d.cfg.AuthorityHost + " over HTTPS (proxy: HTTPS_PROXY; firewall; DNS), and that its certificate is trusted (SSL_CERT_FILE for a TLS-inspecting proxy's CA)."
			}
			if ee.Code() != 0 {
				c.Details = map[string]string{"aadsts": fmt.Sprint(ee.Code()), "oauth_error": ee.OAuthError}
			}
		} else {
			c.Message = oneLine(err.Error())
		}
		d.add(c)
		return
	}
	d.tok = &tok
	c.Status = OK
	c.Message = fmt.Sprintf("Entra ID issued a token for %s, valid until %s (%s)", d.cfg.Scope, tok.ExpiresOn.UTC().Format("15:04:05Z"), tok.ExpiresOn.Sub(d.o.Clock()).Round(time.Minute))
	d.add(c)
}
