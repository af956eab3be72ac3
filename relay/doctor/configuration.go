package doctor

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/o365relay/o365relay/config"
	"github.com/o365relay/o365relay/config/azurestep"
)

// Check 1: the configuration is what serve needs, and the local clock
// agrees with Entra ID's.

func (d *doctor) checkConfig() {
	cfg := d.cfg
	c := Check{Step: stepConfig, Name: "configuration"}
	if err := cfg.CheckDaemon(); err != nil {
		c.Status = Fail
		c.Message = oneLine(err.Error())
		c.Fix = "Set each setting named above (environment, --flag or the config file; README.md, Configuration reference)."
		var ce *config.Error
		if errors.As(err, &ce) && (cfg.TenantID == "" || cfg.ClientID == "") {
			c.AzureSteps = azureSteps(azurestep.RegisterApp)
			c.Fix += "\nThe tenant and client IDs are on the app registration's Overview page (Entra ID → App registrations)."
		}
		d.add(c)
		return
	}
	d.configOK = true
	c.Status = OK
	c.Message = fmt.Sprintf("tenant %s, client %s, %s credential, mailbox %s, upstream %s, authority %s",
		cfg.TenantID, cfg.ClientID, cfg.Credential(), strings.Join(d.o.Mailboxes, ", "), cfg.Upstream, d.cfg.AuthorityHost)
	if d.managedIdentity() {
		c.Message = d.miConfigMessage()
	}
	if len(cfg.Warnings) > 0 {
		c.Status = Warn
		c.Message += "; " + strings.Join(cfg.Warnings, "; ")
	}
	d.add(c)
}

// Clock thresholds; see checkClock.
const (
	clockWarn = time.Minute
	clockFail = 5 * time.Minute
)

// checkClock compares the local clock with Entra ID's. The reference is the
// Date header of an HTTPS answer from the authority host (RFC 9110 §6.6.1:
// an origin server with a clock must send it), i.e. the clock of the
// service that checks the assertion's nbf/exp. Entra ID is not documented
// to tolerate any skew; the usual JWT leeway, and the fake's, is 5
// minutes, so more than 5 minutes fails and more than 1 minute warns. Date
// has one-second resolution and the request's round trip is subtracted as
// uncertainty, so a healthy NTP-synced host shows 0-1 s.
func (d *doctor) checkClock(ctx context.Context) {
	if d.managedIdentity() {
		d.skip(stepConfig, "clock", "", "not needed: a managed identity signs no client assertion (the platform's endpoint gets the token)")
		return
	}
	c := Check{Step: stepConfig, Name: "clock"}
	u, err := url.JoinPath(d.cfg.AuthorityHost, d.tenantOr("common"), "v2.0/.well-known/openid-configuration")
	if err != nil {
		c.Status, c.Message = Warn, "cannot build the authority URL: "+err.Error()
		d.add(c)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, d.o.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		c.Status, c.Message = Warn, "cannot build the request: "+err.Error()
		d.add(c)
		return
	}
	sent := time.Now()
	resp, err := d.o.HTTPClient.Do(req)
	rtt := time.Since(sent)
	local := d.o.Clock()
	if err != nil {
		// The token check reports the same failure with its fix.
		c.Status = Warn
		c.Message = "could not compare with Entra ID's clock: " + oneLine(sanitizeURLError(err))
		d.add(c)
		return
	}
	if cerr := resp.Body.Close(); cerr != nil {
		d.o.Logger.Debug("closing response", zap.Error(cerr))
	}
	remote, err := http.ParseTime(resp.Header.Get("Date"))
	if err != nil {
		c.Status, c.Message = Warn, "the authority host sent no usable Date header; cannot check the clock"
		d.add(c)
		return
	}
	// Date is truncated to the second and taken somewhere during the round
	// trip: that much offset means nothing.
	skew := local.Sub(remote)
	abs := skew
	if abs < 0 {
		abs = -abs
	}
	slack := time.Second + rtt
	dir := "ahead of"
	if skew < 0 {
		dir = "behind"
	}
	c.Details = map[string]string{"offset_seconds": fmt.Sprintf("%.0f", skew.Seconds()), "reference": req.URL.Host}
	switch {
	case abs > clockFail+slack:
		c.Status = Fail
		c.Message = fmt.Sprintf("the local clock is %s %s Entra ID's (Date header of %s); client assertions are valid for 5 minutes and Entra ID refuses them with AADSTS700024", abs.Round(time.Second), dir, req.URL.Host)
		c.Fix = "Turn on time synchronisation: timedatectl set-ntp true (systemd-timesyncd) or chronyc makestep; in a container, fix the host's clock."
	case abs > clockWarn+slack:
		c.Status = Warn
		c.Message = fmt.Sprintf("the local clock is %s %s Entra ID's (Date header of %s); over 5 minutes assertions are refused", abs.Round(time.Second), dir, req.URL.Host)
		c.Fix = "Turn on time synchronisation: timedatectl set-ntp true (systemd-timesyncd) or chronyc makestep."
	default:
		c.Status = OK
		c.Message = fmt.Sprintf("local clock within %s of Entra ID's (Date header of %s)", max(abs, time.Second).Round(time.Second), req.URL.Host)
	}
	d.add(c)
}

func (d *doctor) tenantOr(def string) string {
	if d.cfg.TenantID != "" {
		return d.cfg.TenantID
	}
	return def
}

// sanitizeURLError drops the URL from an http.Client error: it carries no
// secret here, but the host is already in the message and the full URL is
// noise.
func sanitizeURLError(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return err.Error()
}
