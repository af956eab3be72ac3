package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The README's managed-identity drop-in on Azure Arc, under a real systemd
// 252 with the unit's own sandbox: SupplementaryGroups=himds lets the
// DynamicUser service read the Arc agent's challenge key file (root:himds,
// 0640, in /var/opt/azcmagent/tokens, where MSAL requires it to be) although
// PrivateUsers=yes shows the group as nogroup inside the service: the
// kernel checks the real group. Without the drop-in's group the file cannot
// be read; without the drop-in's empty LoadCredential= the service does not
// start at all (no certificate on such a host). The unit is the repository's, with only ExecStart (a reader of
// the file instead of the relay, which would need the Arc agent), Type and
// where its output goes.
func TestSystemdArcChallengeFileGroup(t *testing.T) {
	t.Parallel()
	unit, err := os.ReadFile("../../deploy/systemd/o365relay.service")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(unit), "\nPrivateUsers=yes\n") || !strings.Contains(string(unit), "\nDynamicUser=yes\n") {
		t.Fatal("the unit no longer has DynamicUser=yes and PrivateUsers=yes: this test's premise changed")
	}
	probe := regexp.MustCompile(`(?m)^ExecStart=.*$`).ReplaceAllString(string(unit),
		`ExecStart=/bin/sh -c "id -Gn; cat /var/opt/azcmagent/tokens/probe.key"`)
	probe = regexp.MustCompile(`(?m)^(Type|WatchdogSec|ExecReload)=.*$`).ReplaceAllString(probe, "")
	// The output goes to a file systemd opens before the sandbox: read
	// when start returns, with nothing to wait for.
	probe = strings.Replace(probe, "[Service]", "[Service]\nType=oneshot\nStandardOutput=truncate:/run/arcprobe.out\nStandardError=inherit", 1)
	stage := t.TempDir()
	if err := os.Chmod(stage, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stage, "arcprobe.service"), []byte(probe), 0o644); err != nil {
		t.Fatal(err)
	}
	c := bootSystemd(t, stage)
	sh := func(script string) (string, int) {
		t.Helper()
		return c.exec("sh", "-ec", script)
	}
	if out, code := sh(`groupadd -r himds
install -d -o root -g himds -m 0750 /var/opt/azcmagent/tokens
echo challenge-secret > /var/opt/azcmagent/tokens/probe.key
chgrp himds /var/opt/azcmagent/tokens/probe.key
chmod 0640 /var/opt/azcmagent/tokens/probe.key
cp /stage/arcprobe.service /etc/systemd/system/
systemctl daemon-reload`); code != 0 {
		t.Fatalf("setup: exit %d\n%s", code, out)
	}
	// run starts the probe with dropIn and returns what it printed and
	// systemd's Result for it.
	run := func(dropIn string) (out, result string) {
		t.Helper()
		out, _ = sh(`mkdir -p /etc/systemd/system/arcprobe.service.d
printf '` + dropIn + `' > /etc/systemd/system/arcprobe.service.d/arc.conf
systemctl daemon-reload
rm -f /run/arcprobe.out
systemctl start arcprobe 2>/dev/null || true
echo "result=$(systemctl show -p Result --value arcprobe)"
cat /run/arcprobe.out 2>/dev/null || true`)
		line, rest, _ := strings.Cut(out, "\n")
		return rest, strings.TrimPrefix(line, "result=")
	}
	// The README's drop-in (credential lines that do not change the
	// sandbox left out).
	if out, res := run(`[Service]\nLoadCredential=\nSupplementaryGroups=himds\n`); res != "success" || !strings.Contains(out, "challenge-secret") {
		t.Errorf("with SupplementaryGroups=himds the service cannot read the challenge file (result %s):\n%s", res, out)
	}
	if out, res := run(`[Service]\nLoadCredential=\n`); res != "exit-code" || strings.Contains(out, "challenge-secret") || !strings.Contains(out, "Permission denied") {
		t.Errorf("without the himds group the service read the challenge file (result %s; the test proves nothing):\n%s", res, out)
	}
	// The drop-in's empty LoadCredential= matters too: the unit's own
	// names a certificate that a managed-identity host does not have, and
	// systemd refuses to start a service whose credential is missing.
	if out, res := run(`[Service]\nSupplementaryGroups=himds\n`); res == "success" || strings.Contains(out, "challenge-secret") {
		t.Errorf("the service ran without the drop-in's LoadCredential= although /etc/o365relay/o365relay.pem does not exist (result %s):\n%s", res, out)
	}
}
