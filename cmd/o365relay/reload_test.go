package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/o365relay/o365relay/config/tlstest"
	"github.com/o365relay/o365relay/config/waitfor"
	"github.com/o365relay/o365relay/relay/relaytest"
)

// secretDir is a directory laid out the way the kubelet mounts a Secret:
// the files are symlinks into ..data, itself a symlink to a timestamped
// directory; an update writes a new directory and renames a new ..data
// symlink over the old one, so readers see the old or the new files, never
// a mix.
type secretDir struct {
	t   *testing.T
	dir string
	n   int
}

func newSecretDir(t *testing.T, pem []byte) *secretDir {
	d := &secretDir{t: t, dir: t.TempDir()}
	d.update(pem)
	if err := os.Symlink(filepath.Join("..data", "tls.pem"), d.path()); err != nil {
		t.Fatal(err)
	}
	return d
}

func (d *secretDir) path() string { return filepath.Join(d.dir, "tls.pem") }

func (d *secretDir) update(pem []byte) {
	d.t.Helper()
	d.n++
	ts := fmt.Sprintf("..2026_12_01_00_00_%02d.%d", d.n, os.Getpid())
	if err := os.Mkdir(filepath.Join(d.dir, ts), 0o700); err != nil {
		d.t.Fatal(err)
	}
	writeFile(d.t, filepath.Join(d.dir, ts), "tls.pem", pem)
	tmp := filepath.Join(d.dir, "..data_tmp")
	if err := os.Symlink(ts, tmp); err != nil {
		d.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(d.dir, "..data")); err != nil {
		d.t.Fatal(err)
	}
}

// scrape returns the admin endpoint's metrics as "name{labels}" → value.
func scrape(t *testing.T, admin string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("/metrics line %q: %v", line, err)
		}
		m[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		t.Fatal(err)
	}
	return m
}

// swaksSend sends one message with swaks and reports whether it got 250.
func swaksSend(t *testing.T, addr, subject string) (string, bool) {
	t.Helper()
	sw := requireTool(t, "swaks")
	host, port := hostPort(t, addr)
	out, code := runTool(t, nil, sw, "--server", host, "--port", port, "--ehlo", "swaks.test",
		"--from", relaytest.Mailbox, "--to", "rotation@fabrikam.example",
		"--header", "Subject: "+subject, "--body", "rotation test", "--suppress-data")
	return out, code == 0
}

// The certificate is rotated on disk the way Kubernetes updates a Secret,
// while an application keeps sending: the relay picks the new one up without
// a signal, proves it with Entra ID, and keeps using it after the old one is
// removed from the app registration; no message is refused, deferred or
// lost. Then a corrupt file is refused (also on SIGHUP) and mail keeps
// flowing on the certificate in use.
func TestE2ECertificateRotationOnDisk(t *testing.T) {
	t.Parallel()
	requireTool(t, "swaks")
	cloud := newCloud(t)
	// Short tokens, so the relay refreshes (at half-life) during the test
	// and a refresh after the old certificate is removed proves the new
	// one is used for every request.
	cloud.Entra.SetLifetime(20 * time.Second)
	old, err := os.ReadFile(cloud.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	sd := newSecretDir(t, old)
	spool := t.TempDir()
	// Pacing off: it sends as fast as it can, not Exchange's 30 a minute.
	env, smtpAddr, adminAddr := relayEnv(t, cloud, spool, "AZURE_CLIENT_CERTIFICATE_PATH="+sd.path(), "O365RELAY_MAILBOX_RATE=0")
	p := startRelay(t, env, smtpAddr, "serve")
	p.waitLog("the first token", fields{"msg": "token acquired", "credential": "certificate"})

	// An application sending all along.
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		sent     int
		refusals []string
	)
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			out, ok := swaksSend(t, smtpAddr, fmt.Sprintf("rotation %d", i))
			mu.Lock()
			sent++
			if !ok {
				refusals = append(refusals, out)
			}
			mu.Unlock()
		}
	}()

	next, nextKey, err := tlstest.SelfSigned("o365relay app (next)", time.Now().Add(-time.Hour), time.Now().Add(365*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	// The operator's order: upload the new certificate, update the Secret,
	// remove the old one once the relay runs on the new one.
	if err := cloud.Entra.RegisterCert(relaytest.ClientID, next); err != nil {
		t.Fatal(err)
	}
	n0 := cloud.Entra.TokenRequests()
	sd.update(append(tlstest.CertPEM(next), tlstest.PKCS1PEM(nextKey)...))
	rotated := p.waitLog("the rotation", fields{"msg": "certificate reloaded: new certificate in use"})
	if !strings.Contains(rotated.str("certificate"), "CN=o365relay app (next)") {
		t.Errorf("the rotation does not name the new certificate: %s", rotated)
	}
	if err := cloud.Entra.RemoveCert(relaytest.ClientID, cloud.Cert); err != nil {
		t.Fatal(err)
	}
	// Two more token requests after the swap: the rotation's own and at
	// least one refresh after the removal, signed with the new key.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := cloud.Entra.WaitTokenRequests(ctx, n0+2); err != nil {
		t.Fatalf("no token refresh after the old certificate was removed: %v", err)
	}

	// A corrupt update: refused by the watcher, and again on SIGHUP; the
	// new certificate stays in use.
	sd.update([]byte("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"))
	p.waitLog("the watcher's refusal", fields{"msg": "certificate reload refused; the certificate in use stays in use", "path": sd.path()})
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	p.waitLog("SIGHUP's refusal", fields{"msg": "reload refused; the running configuration stays in use"})
	// Another refresh on the certificate in use, with the broken file on disk.
	if err := cloud.Entra.WaitTokenRequests(ctx, cloud.Entra.TokenRequests()+1); err != nil {
		t.Fatalf("no token refresh with a corrupt file on disk: %v", err)
	}

	close(stop)
	wg.Wait()
	if len(refusals) > 0 {
		t.Fatalf("%d of %d messages refused during the rotation; first:\n%s", len(refusals), sent, refusals[0])
	}
	if sent < 3 {
		t.Fatalf("only %d messages sent during the rotation", sent)
	}
	if err := cloud.Exchange.WaitMessages(ctx, sent); err != nil {
		t.Fatalf("%v\n%s", err, p.out.String())
	}
	for _, r := range cloud.Entra.Requests() {
		if r.Path != "" && strings.HasSuffix(r.Path, "/token") && r.Outcome != "ok" && r.ClientID == relaytest.ClientID {
			// The rotation never sent an assertion Entra would refuse:
			// the new certificate was uploaded first, the old removed after.
			t.Errorf("token request refused during rotation: %+v", r)
		}
	}
	m := scrape(t, adminAddr)
	if v := m[`o365relay_certificate_reloads_total{result="success"}`]; v != 1 {
		t.Errorf("certificate reloads (success) = %v, want 1", v)
	}
	if v := m[`o365relay_certificate_reloads_total{result="invalid"}`]; v < 1 {
		t.Errorf("certificate reloads (invalid) = %v, want ≥ 1", v)
	}
	if v := m["o365relay_certificate_not_after_timestamp_seconds"]; int64(v) != next.NotAfter.Unix() {
		t.Errorf("certificate not-after metric %v, want the new certificate's %d", v, next.NotAfter.Unix())
	}
	for k, v := range m {
		if strings.HasPrefix(k, "o365relay_delivery_messages_total{") && strings.Contains(k, `outcome="deferred"`) && v > 0 {
			t.Errorf("%s = %v: a message was delayed by the rotation", k, v)
		}
	}
	t.Logf("%d messages sent across the rotation, all delivered on first attempt", sent)
	p.stop()
}

// SIGHUP with a changed log level and a changed listener: the level applies
// at once, the listener is reported as needing a restart, and the relay
// keeps serving.
func TestE2EReloadOnSIGHUP(t *testing.T) {
	t.Parallel()
	cloud := newCloud(t)
	dir := t.TempDir()
	spool := t.TempDir()
	env, smtpAddr, _ := relayEnv(t, cloud, spool)
	env = without(env, "O365RELAY_LOG_LEVEL", "O365RELAY_LISTEN")
	cfgFile := writeFile(t, dir, "o365relay.yaml", []byte("log_level: info\nlisten: "+smtpAddr+"\n"))
	p := startRelay(t, env, smtpAddr, "serve", "--config", cfgFile)
	p.waitLog("the first token", fields{"msg": "token acquired"})
	sendAndWait(t, cloud, p, smtpAddr)
	p.waitLog("the delivery", fields{"msg": "delivered"})

	writeFile(t, dir, "o365relay.yaml", []byte("log_level: warn\nlisten: 127.0.0.1:1\n"))
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	reloaded := p.waitLog("the reload", fields{"msg": "configuration reloaded"})
	if got := fmt.Sprint(reloaded["takes_effect_at_next_restart"]); got != "[listen]" {
		t.Errorf("the changed listener is not reported as needing a restart: %s", reloaded)
	}
	// Still serving on the old address, now without info lines (checked
	// once the process has exited and written everything).
	mark := len(p.out.Entries())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	send := func(want int) {
		t.Helper()
		if _, err := sendOne(ctx, smtpAddr, relaytest.Mailbox, "someone@fabrikam.example", testBody(relaytest.Mailbox, "someone@fabrikam.example", "reload")); err != nil {
			t.Fatal(err)
		}
		if err := cloud.Exchange.WaitMessages(ctx, want); err != nil {
			t.Fatalf("%v\n%s", err, p.out.String())
		}
	}
	send(2)

	// A configuration that no longer loads is refused; the relay serves on.
	writeFile(t, dir, "o365relay.yaml", []byte("log_levle: debug\n"))
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	refused := p.waitLog("the refusal of the broken file", fields{"msg": "reload refused; the running configuration stays in use"})
	if !strings.Contains(refused.str("error"), "log_levle") {
		t.Errorf("the refusal does not name the bad key: %s", refused)
	}
	send(3)
	p.stop()
	for _, e := range p.out.Entries()[mark:] {
		if e.has(fields{"level": "info"}) {
			t.Errorf("info line after the reload to log_level warn: %s", e)
		}
	}
}

// /metrics moves with traffic: messages received, delivered, upstream
// replies and connections, spool depth back to zero, the token's expiry and
// the certificate's not-after.
func TestE2EMetricsMoveWithTraffic(t *testing.T) {
	t.Parallel()
	requireTool(t, "swaks")
	e := startE2E(t, nil)
	e.relay.waitLog("the first token", fields{"msg": "token acquired"})
	before := scrape(t, e.admin)
	const n = 3
	for i := range n {
		if out, ok := swaksSend(t, e.smtp, fmt.Sprintf("metrics %d", i)); !ok {
			t.Fatalf("swaks: %s", out)
		}
	}
	e.waitMessages(n)
	// Delivery is recorded, and the spool file removed, just after
	// Exchange's 250: the relay's own lines say when.
	e.relay.waitLogged("every delivery recorded", n, fields{"msg": "delivered"})
	var after map[string]float64
	waitfor.Cond(t, "the spool's depth metric back to 0", func() bool {
		after = scrape(t, e.admin)
		return after["o365relay_spool_items"] == 0
	})
	moved := func(key string, want float64) {
		t.Helper()
		if d := after[key] - before[key]; d != want {
			t.Errorf("%s moved by %v, want %v", key, d, want)
		}
	}
	mb := `mailbox="` + relaytest.Mailbox + `"`
	moved(`o365relay_messages_received_total{`+mb+`,result="accepted"}`, n)
	moved(`o365relay_delivery_messages_total{class="250",`+mb+`,outcome="delivered"}`, n)
	if after["o365relay_spool_items"] != 0 {
		t.Errorf("spool items %v after delivery, want 0", after["o365relay_spool_items"])
	}
	if exp := after["o365relay_token_expiry_timestamp_seconds"]; exp < float64(time.Now().Unix()) {
		t.Errorf("token expiry metric %v is not in the future", exp)
	}
	if na := after["o365relay_certificate_not_after_timestamp_seconds"]; int64(na) != e.cloud.Cert.NotAfter.Unix() {
		t.Errorf("certificate not-after %v, want %d", na, e.cloud.Cert.NotAfter.Unix())
	}
	var replies, dials float64
	for k, v := range after {
		if strings.HasPrefix(k, "o365relay_upstream_replies_total{") {
			replies += v - before[k]
		}
		if strings.HasPrefix(k, "o365relay_upstream_dials_total") {
			dials += v - before[k]
		}
	}
	if replies < n || dials < 1 {
		t.Errorf("upstream replies moved by %v, dials by %v", replies, dials)
	}
	// An application holding a session open shows in the open gauge.
	c, err := net.DialTimeout("tcp", e.smtp, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bufio.NewReader(c).ReadString('\n'); err != nil { // the greeting: accepted and counted
		t.Fatal(err)
	}
	if v := scrape(t, e.admin)["o365relay_smtp_connections_open"]; v != 1 {
		t.Errorf("o365relay_smtp_connections_open = %v with one session open, want 1", v)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if after["o365relay_upstream_handshake_seconds_count"] < 1 || after["o365relay_upstream_auth_seconds_count"] < 1 {
		t.Error("handshake/AUTH latency histograms did not move")
	}
	e.relay.stop()
}
