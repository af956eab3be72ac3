package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/o365relay/o365relay/config/tlstest"
	"github.com/o365relay/o365relay/config/waitfor"
	"github.com/o365relay/o365relay/relay/relaytest"
	"github.com/o365relay/o365relay/token/entratest"
)

// nspawnScript is the real-systemd harness (deploy/systemd/nspawn.sh).
var nspawnScript, _ = filepath.Abs("../../deploy/systemd/nspawn.sh")

// container is a booted Debian 12 with systemd 252 (nspawn.sh), sharing
// the host's loopback.
type container struct {
	t     *testing.T
	pid   string
	stage string
}

// bootSystemd boots the container with stage as /stage, or skips the test
// (fails it in CI, E2E_REQUIRE_TOOLS) when this machine cannot.
func bootSystemd(t *testing.T, stage string) *container {
	t.Helper()
	if out, err := exec.Command("bash", nspawnScript, "check").CombinedOutput(); err != nil {
		msg := fmt.Sprintf("SKIP: no real systemd here: %s", strings.TrimSpace(string(out)))
		if os.Getenv("E2E_REQUIRE_TOOLS") != "" {
			t.Fatal(msg + " (required in CI)")
		}
		t.Skip(msg)
	}
	out, err := exec.Command("bash", nspawnScript, "rootfs").Output()
	if err != nil {
		t.Fatalf("nspawn.sh rootfs: %v", err)
	}
	rootfs := strings.TrimSpace(string(out))
	out, err = exec.Command("bash", nspawnScript, "boot", rootfs, stage).Output()
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(stage, ".nspawn.log"))
		t.Fatalf("nspawn.sh boot: %v\n%s", err, log)
	}
	c := &container{t: t, pid: strings.TrimSpace(string(out)), stage: stage}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("journal:\n%s", c.run("journalctl", "--no-pager", "-u", "o365relay", "-n", "200"))
		}
		if out, err := exec.Command("bash", nspawnScript, "stop", c.pid).CombinedOutput(); err != nil {
			t.Errorf("nspawn.sh stop: %v\n%s", err, out)
		}
	})
	return c
}

// exec runs a command inside and returns its output and exit code.
func (c *container) exec(args ...string) (string, int) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{nspawnScript, "exec", c.pid}, args...)...)
	out, err := cmd.CombinedOutput()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			c.t.Fatalf("%v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return string(out), code
}

// run is exec that must succeed.
func (c *container) run(args ...string) string {
	c.t.Helper()
	out, code := c.exec(args...)
	if code != 0 {
		c.t.Fatalf("%v: exit %d\n%s", args, code, out)
	}
	return out
}

// until re-runs a command inside until its output contains want (polled:
// systemd's state is seen only through its commands).
func (c *container) until(want string, args ...string) string {
	c.t.Helper()
	var out string
	waitfor.Check(c.t, fmt.Sprintf("%v to print %q", args, want), func() error {
		out, _ = c.exec(args...)
		if !strings.Contains(out, want) {
			return fmt.Errorf("printed:\n%s", out)
		}
		return nil
	})
	return out
}

// The unit under a real systemd 252, installed as deploy/systemd/README.md
// says: it becomes active (READY=1) while Entra ID is unreachable, with a
// STATUS= line saying why nothing is delivered; the journal has the
// warnings at PRIORITY 4; queue and status work as root through the control
// socket of the DynamicUser daemon, and status as an unprivileged user
// through the admin listener; a configuration error (exit 2) leaves the
// unit failed instead of restart-looping; and the documented certificate
// rotation (replace the file, restart) takes effect, where a reload does not
// (LoadCredential= copies at start only).
func TestSystemdUnit(t *testing.T) {
	t.Parallel()
	stage := t.TempDir()
	if err := os.Chmod(stage, 0o755); err != nil {
		t.Fatal(err)
	}
	build := exec.Command("go", "build", "-trimpath", "-o", filepath.Join(stage, "o365relay"), ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the static binary: %v\n%s", err, out)
	}
	cloud := newCloud(t)
	cloud.Entra.SetOutage(entratest.OutageDrop)
	smtpAddr, adminAddr := freePort(t), freePort(t)
	env := strings.Join([]string{
		"AZURE_TENANT_ID=" + cloud.Entra.Tenant(),
		"AZURE_CLIENT_ID=" + relaytest.ClientID,
		"AZURE_AUTHORITY_HOST=" + cloud.Entra.URL(),
		"O365RELAY_UPSTREAM=" + cloud.Exchange.Addr(),
		"O365RELAY_MAILBOX=" + relaytest.Mailbox,
		"O365RELAY_LISTEN=" + smtpAddr,
		"O365RELAY_ADMIN_LISTEN=" + adminAddr,
		"O365RELAY_RETRY_MIN=1s",
		"O365RELAY_RETRY_MAX=2s",
		"SSL_CERT_FILE=/usr/local/share/o365relay-test/ca.pem",
	}, "\n") + "\n"
	unit, err := os.ReadFile("../../deploy/systemd/o365relay.service")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := os.ReadFile(cloud.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(cloud.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"o365relay.env": []byte(env), "o365relay.service": unit, "o365relay.pem": cert, "ca.pem": ca,
		"install.sh": []byte(`set -e
install -m 0755 /stage/o365relay /usr/local/bin/o365relay
install -d -m 0700 /etc/o365relay
install -m 0600 /stage/o365relay.env /etc/o365relay/o365relay.env
install -m 0600 /stage/o365relay.pem /etc/o365relay/o365relay.pem
install -D -m 0644 /stage/ca.pem /usr/local/share/o365relay-test/ca.pem
install -m 0644 /stage/o365relay.service /etc/systemd/system/o365relay.service
systemctl daemon-reload
`)} {
		if err := os.WriteFile(filepath.Join(stage, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c := bootSystemd(t, stage)
	c.run("sh", "/stage/install.sh")

	// Starts (READY=1) with Entra ID unreachable; says why in STATUS=.
	c.run("timeout", "60", "systemctl", "start", "o365relay")
	c.until("StatusText=ready; no token (", "systemctl", "show", "-p", "StatusText", "o365relay")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := sendOne(ctx, smtpAddr, relaytest.Mailbox, "x@fabrikam.example", testBody(relaytest.Mailbox, "x@fabrikam.example", "under systemd")); err != nil {
		t.Fatalf("sending to the relay under systemd: %v", err)
	}

	// The journal has the token warnings at warning priority and the
	// info lines at info.
	j := c.until(`token request failed`, "journalctl", "-u", "o365relay", "-p", "warning", "-o", "json", "--no-pager")
	prio := map[string]string{}
	for _, l := range strings.Split(j, "\n") {
		var e struct{ MESSAGE, PRIORITY string }
		if json.Unmarshal([]byte(l), &e) == nil && strings.Contains(e.MESSAGE, `"msg":"token request failed"`) {
			prio["warn"] = e.PRIORITY
		}
	}
	if prio["warn"] != "4" {
		t.Errorf("token warning at PRIORITY %q in the journal, want 4", prio["warn"])
	}
	info := c.run("journalctl", "-u", "o365relay", "-o", "json", "--no-pager", "--grep", `"msg":"listening"`)
	if !strings.Contains(info, `"PRIORITY":"6"`) {
		t.Errorf("the listening line is not at PRIORITY 6:\n%s", info)
	}
	if out := c.run("journalctl", "-u", "o365relay", "-p", "warning", "--no-pager", "-o", "cat"); strings.Contains(out, `"msg":"listening"`) {
		t.Errorf("journalctl -p warning shows info lines:\n%s", out)
	}

	// Operators' recipes (README): as root through the control socket of
	// the dynamic user's daemon; as anyone through the admin listener.
	st := c.run("o365relay", "status", "--spool-dir", "/var/lib/o365relay")
	if !strings.Contains(st, "token:        NONE") || !strings.Contains(st, "1 message(s)") {
		t.Errorf("o365relay status as root:\n%s", st)
	}
	if out := c.run("runuser", "-u", "nobody", "--", "o365relay", "status", "--spool-dir", "/var/lib/o365relay", "--admin-listen", adminAddr); !strings.Contains(out, "token:        NONE") {
		t.Errorf("o365relay status as nobody (admin listener):\n%s", out)
	}
	if out := c.run("o365relay", "queue", "--spool-dir", "/var/lib/o365relay", "list"); !strings.Contains(out, "1 message(s)") {
		t.Errorf("o365relay queue list as root:\n%s", out)
	}
	cloud.Entra.SetOutage(0)
	c.until("StatusText=ready; token valid until", "systemctl", "show", "-p", "StatusText", "o365relay")
	c.run("o365relay", "queue", "--spool-dir", "/var/lib/o365relay", "retry", "all")
	if err := cloud.Exchange.WaitMessages(ctx, 1); err != nil {
		t.Fatalf("queued message not delivered under systemd: %v", err)
	}
	if out := c.run("find", "/var/lib/private/o365relay", "-user", "root"); strings.TrimSpace(out) != "" {
		t.Errorf("root-owned files in the spool:\n%s", out)
	}

	// Rotation: a reload keeps the credential copy systemd made at start;
	// a restart takes the new file.
	now := time.Now()
	next, nextKey, err := tlstest.SelfSigned("o365relay rotated", now.Add(-time.Hour), now.Add(200*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if err := cloud.Entra.RegisterCert(relaytest.ClientID, next); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stage, "next.pem"), append(tlstest.CertPEM(next), tlstest.PKCS1PEM(nextKey)...), 0o644); err != nil {
		t.Fatal(err)
	}
	before := getStatus(t, adminAddr).Certificate
	c.run("install", "-m", "0600", "/stage/next.pem", "/etc/o365relay/o365relay.pem")
	c.run("systemctl", "reload", "o365relay")
	c.until(`"msg":"configuration reloaded"`, "journalctl", "-u", "o365relay", "--no-pager", "-o", "cat")
	if got := getStatus(t, adminAddr).Certificate; got == nil || before == nil || got.Thumbprint != before.Thumbprint {
		t.Errorf("after reload the relay uses %+v, want the copy made at start %+v (the trap the README documents)", got, before)
	}
	c.run("timeout", "90", "systemctl", "restart", "o365relay")
	if got := getStatus(t, adminAddr).Certificate; got == nil || got.NotAfter.Unix() != next.NotAfter.Unix() {
		t.Errorf("after restart the relay uses %+v, want the new certificate (not after %s)", got, next.NotAfter)
	}

	// A configuration error: exit 2, and the unit stays failed.
	c.run("mkdir", "-p", "/etc/systemd/system/o365relay.service.d")
	c.run("sh", "-c", "printf '[Service]\\nEnvironment=O365RELAY_LOG_LEVEL=loud\\n' > /etc/systemd/system/o365relay.service.d/bad.conf && systemctl daemon-reload")
	if out, code := c.exec("timeout", "60", "systemctl", "restart", "o365relay"); code == 0 {
		t.Fatalf("restart with a bad setting succeeded:\n%s", out)
	}
	show := c.run("systemctl", "show", "-p", "ActiveState,SubState,ExecMainStatus,NRestarts", "o365relay")
	for _, want := range []string{"ActiveState=failed", "SubState=failed", "ExecMainStatus=2", "NRestarts=0"} {
		if !strings.Contains(show, want) {
			t.Errorf("after exit 2: %q lacks %s (a restart loop?)", show, want)
		}
	}
	if out := c.run("journalctl", "-u", "o365relay", "--no-pager", "-o", "cat", "-n", "20"); !strings.Contains(out, "log_level") {
		t.Errorf("the journal does not name the bad setting:\n%s", out)
	}

	c.run("rm", "/etc/systemd/system/o365relay.service.d/bad.conf")
	c.run("systemctl", "daemon-reload")
	c.run("systemctl", "reset-failed", "o365relay")
	c.run("timeout", "60", "systemctl", "start", "o365relay")
	if st := getStatus(t, adminAddr); !st.Ready.OK {
		t.Errorf("after the fix: %+v", st.Ready)
	}
	c.run("systemctl", "stop", "o365relay")
	if out, code := c.exec("test", "-e", "/var/lib/private/o365relay/control.sock"); code == 0 {
		t.Errorf("control socket left after stop: %s", out)
	}
}
