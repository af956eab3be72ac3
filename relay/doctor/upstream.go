package doctor

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/o365relay/o365relay/config"
	"github.com/o365relay/o365relay/relay/upstream"
	"github.com/o365relay/o365relay/token"
)

// Check 5: Exchange Online is reachable, offers STARTTLS, and its
// certificate verifies.

// noToken is the token source of an upstream client when check 3 could not
// run: ProbeTLS never asks it.
type noToken struct{}

func (noToken) Token(context.Context) (token.Token, error) {
	return token.Token{}, errors.New("no token source")
}

func (noToken) Refresh(context.Context, token.Token) (token.Token, error) {
	return token.Token{}, errors.New("no token source")
}

func (d *doctor) checkUpstream(ctx context.Context) {
	c := Check{Step: stepUpstream, Name: "upstream", Target: d.cfg.Upstream}
	var ts token.Source = noToken{}
	if d.src != nil {
		ts = d.src
	}
	up, err := upstream.New(upstream.Options{
		Addr:           d.cfg.Upstream,
		RootCAs:        d.o.RootCAs,
		Tokens:         ts,
		HelloName:      d.cfg.Hostname,
		Clock:          d.o.Clock,
		Logger:         d.o.Logger.Named("upstream"),
		ConnectTimeout: d.o.Timeout,
		CommandTimeout: d.o.Timeout,
		PoolDisabled:   true,
	})
	if err != nil {
		c.Status, c.Message = Fail, oneLine(err.Error())
		c.Fix = "Set O365RELAY_UPSTREAM to " + config.DefaultUpstream + "."
		d.add(c)
		return
	}
	d.up = up
	pctx, cancel := context.WithTimeout(ctx, d.o.Timeout)
	defer cancel()
	res, perr := up.ProbeTLS(pctx)
	c.Details = map[string]string{}
	if res.PeerSubject != "" {
		c.Details["certificate_subject"] = res.PeerSubject
		c.Details["certificate_issuer"] = res.PeerIssuer
		c.Details["certificate_not_after"] = res.PeerNotAfter.UTC().Format(time.RFC3339)
	}
	if perr == nil {
		d.tlsOK = true
		c.Status = OK
		c.Details["tls_version"] = res.TLSVersion
		c.Details["cipher_suite"] = res.CipherSuite
		c.Message = fmt.Sprintf("%s reachable, STARTTLS, %s (%s), certificate %s issued by %s verified for %s, valid until %s",
			d.cfg.Upstream, res.TLSVersion, res.CipherSuite, res.PeerSubject, res.PeerIssuer, res.ServerName, res.PeerNotAfter.UTC().Format("2006-01-02"))
		d.add(c)
		return
	}
	c.Status = Fail
	f := res.Failed()
	host := res.ServerName
	switch {
	case f != nil && f.Name == upstream.StepConnect:
		c.Message = oneLine(f.Err.Error())
		c.Fix = "Allow outbound TCP to " + d.cfg.Upstream + " (many networks and cloud providers block SMTP ports; 587 is submission), and check O365RELAY_UPSTREAM and DNS."
	case f != nil && f.Name == upstream.StepTLS:
		c.Message = oneLine(f.Err.Error())
		if res.PeerSubject != "" {
			c.Message += fmt.Sprintf(" (presented: %s, issued by %s)", res.PeerSubject, res.PeerIssuer)
		}
		if h := upstream.AuthHint(f.Err); h != "" {
			c.Message += " — " + h
		}
		c.Fix = "Something between this host and " + host + " answers TLS with its own certificate: exempt " + host + ":587 from TLS inspection on the proxy or firewall, " +
			"or, if that inspection is intended, add its CA certificate to the system trust store or to the file SSL_CERT_FILE names.\n" +
			"See what is presented: openssl s_client -starttls smtp -connect " + d.cfg.Upstream + " -servername " + host + " </dev/null | openssl x509 -noout -subject -issuer"
	default:
		c.Message = oneLine(perr.Error())
	}
	d.add(c)
}
