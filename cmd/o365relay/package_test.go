package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/o365relay/o365relay/relay/relaytest"
)

// The README's VM path with the built packages under a real systemd (252,
// booted with systemd-nspawn by deploy/systemd/nspawn.sh, sharing the
// host's loopback where the fake Entra ID and Exchange listen): dpkg -i
// leaves the service disabled and stopped; edit the env file, install the
// certificate, systemctl start; /usr/sbin/sendmail hands a message over and
// Exchange receives it; dpkg --purge stops the service, removes the empty
// spool and keeps the admin's certificate.
//
// Runs when E2E_DEB_DIR names a directory with the .debs (.ci/run sets it
// after `make package`), on the container harness of TestSystemdUnit
// (bootSystemd: skipped where it cannot boot, failed in CI).
func TestPackageUnderSystemd(t *testing.T) {
	debs := os.Getenv("E2E_DEB_DIR")
	if debs == "" {
		t.Skip("E2E_DEB_DIR not set (make package, then E2E_DEB_DIR=dist)")
	}
	main, _ := filepath.Glob(filepath.Join(debs, "o365relay_*.deb"))
	mta, _ := filepath.Glob(filepath.Join(debs, "o365relay-sendmail_*.deb"))
	if len(main) != 1 || len(mta) != 1 {
		t.Fatalf("%s: want one o365relay and one o365relay-sendmail .deb, found %v %v", debs, main, mta)
	}
	cloud := newCloud(t)
	stage := t.TempDir()
	for _, f := range []string{main[0], mta[0], cloud.CAFile, cloud.CertFile} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(stage, filepath.Base(f)), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The settings an admin writes into the env file: the cloud's, the
	// certificate through the unit's LoadCredential=, a CA the dynamic user
	// can read.
	var env []string
	for _, kv := range cloud.Env() {
		switch k, _, _ := strings.Cut(kv, "="); k {
		case "AZURE_CLIENT_CERTIFICATE_PATH":
		case "SSL_CERT_FILE":
			env = append(env, "SSL_CERT_FILE=/usr/local/share/o365relay-test-ca.pem")
		default:
			env = append(env, kv)
		}
	}
	if err := os.WriteFile(filepath.Join(stage, "env.add"), []byte(strings.Join(env, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := bootSystemd(t, stage)
	// Commands inside inherit this process's environment: a clean one, so
	// nothing of the test's reaches the relay's configuration.
	sh := func(script string) string {
		t.Helper()
		return strings.TrimSpace(c.run("env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "sh", "-ec", script))
	}
	// A fresh boot runs the missed daily timers, and dpkg-db-backup and
	// apt-daily take dpkg's lock: let them finish first.
	sh("systemctl stop dpkg-db-backup.timer apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.service apt-daily.service apt-daily-upgrade.service || true")
	sh("dpkg -i /stage/" + filepath.Base(main[0]) + " /stage/" + filepath.Base(mta[0]))
	if got := sh("systemctl is-enabled o365relay || true; systemctl is-active o365relay || true"); got != "disabled\ninactive" {
		t.Errorf("after dpkg -i the service is %q, want disabled and inactive", got)
	}
	sh(`install -m 0644 /stage/ca.pem /usr/local/share/o365relay-test-ca.pem
install -m 0600 /stage/app.pem /etc/o365relay/o365relay.pem
cat /stage/env.add >>/etc/o365relay/o365relay.env`)
	// The README's check before the first start.
	if out := sh("o365relay doctor --env-file /etc/o365relay/o365relay.env --client-certificate-path /etc/o365relay/o365relay.pem || true"); !strings.Contains(out, "All checks passed.") {
		t.Errorf("doctor before the first start:\n%s", out)
	}
	sh("systemctl start o365relay")
	if got := sh("systemctl is-active o365relay; systemctl show -p NRestarts --value o365relay"); got != "active\n0" {
		t.Errorf("after systemctl start: %q", got)
	}
	sh(`printf 'To: someone@fabrikam.example\nSubject: packaged\nFrom: ` + relaytest.Mailbox + `\n\nfrom /usr/sbin/sendmail under systemd\n' | /usr/sbin/sendmail -t -i`)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := cloud.Exchange.WaitMessages(ctx, 1); err != nil {
		t.Fatalf("Exchange got nothing: %v\n%s", err, sh("journalctl -u o365relay --no-pager -o cat | tail -n 20"))
	}
	m := cloud.Exchange.Messages()[0]
	if !m.TLS || m.AuthUser != relaytest.Mailbox || !strings.Contains(string(m.Data), "from /usr/sbin/sendmail under systemd\r\n") {
		t.Errorf("Exchange got %+v", m)
	}
	// Purge: stopped, the empty spool removed, the admin's certificate kept.
	sh("dpkg --purge o365relay-sendmail o365relay")
	got := sh("systemctl is-active o365relay || true; ls /var/lib/o365relay /var/lib/private/o365relay /usr/sbin/sendmail 2>&1 || true; ls /etc/o365relay")
	if got != "inactive\nls: cannot access '/var/lib/o365relay': No such file or directory\nls: cannot access '/var/lib/private/o365relay': No such file or directory\nls: cannot access '/usr/sbin/sendmail': No such file or directory\no365relay.pem" {
		t.Errorf("after purge:\n%s", got)
	}
}
