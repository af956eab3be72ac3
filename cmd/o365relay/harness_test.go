package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/o365relay/o365relay/config"
	"github.com/o365relay/o365relay/config/waitfor"
)

// The end-to-end tests drive the built binary, as a user would, with real
// third-party SMTP clients. The binary is built once per test run.
var binPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "o365relay-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binPath = filepath.Join(dir, "o365relay")
	args := []string{"build", "-o", binPath}
	if raceEnabled {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, ".")...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building o365relay:", err)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// requireTool finds an external client. CI sets E2E_REQUIRE_TOOLS
// so a missing tool fails the run there instead of silently skipping.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("E2E_REQUIRE_TOOLS") != "" {
			t.Fatalf("%s not installed (required in CI)", name)
		}
		t.Skipf("%s not installed", name)
	}
	return p
}

// freePort returns a loopback address that was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	// A port from below Linux's ephemeral range (32768-60999 by default):
	// a port the kernel handed out for ":0" and that was closed again is
	// soon handed out again, to any outgoing connection of this busy test
	// process, before the relay binds it. One that binds now is free.
	for range 100 {
		addr := fmt.Sprintf("127.0.0.1:%d", 20000+rand.IntN(12000))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		return addr
	}
	t.Fatal("no free port in 20000-31999 after 100 tries")
	return ""
}

// proc is a running o365relay.
type proc struct {
	t    *testing.T
	cmd  *exec.Cmd
	out  *output
	done chan error
	env  []string
}

// startRelay runs `o365relay args...` with env (on top of a minimal
// environment: no O365RELAY_/AZURE_ variables leak in from the developer's
// shell) and, unless waitAddr is "", waits until the relay logs that it
// listens there.
func startRelay(t *testing.T, env []string, waitAddr string, args ...string) *proc {
	t.Helper()
	return startRelayArgv(t, env, waitAddr, append([]string{binPath}, args...))
}

// startRelayArgv is startRelay with the whole command line, for a relay
// started through a wrapper (unshare for the Arc tests).
func startRelayArgv(t *testing.T, env []string, waitAddr string, argv []string) *proc {
	t.Helper()
	args := argv[1:]
	cmd := exec.Command(argv[0], args...)
	base := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
	if !configSetsLogLevel(args) {
		// Debug level unless the test says otherwise (in env, or in a
		// config file, which the environment would override), so that
		// the secrecy scan below sees everything the relay can print.
		base = append(base, "O365RELAY_LOG_LEVEL=debug")
	}
	cmd.Env = append(base, env...)
	secrets := knownSecrets(t, cmd.Env)
	out := &output{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, cmd: cmd, out: out, done: make(chan error, 1), env: env}
	go func() {
		p.done <- cmd.Wait()
		out.changes.Notify() // a wait for a line that will never come ends now
	}()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-p.done
		}
		// Every relay's output, whatever the test was about, is searched
		// for the secrets it was given and the ones it made
		// (docs/design.md#secrets-never-leave-their-box).
		scanForSecrets(t, out.String(), secrets)
		if t.Failed() {
			t.Logf("relay output:\n%s", out.String())
		}
	})
	if waitAddr != "" {
		// The "listening" line is written once every listener is bound
		// (connections wait in the backlog until they are accepted).
		// Waiting for it, rather than dialling, leaves the relay's
		// connection counts untouched for the test.
		waitfor.On(t, &out.changes, "the relay to listen on "+waitAddr, func() bool {
			select {
			case err := <-p.done:
				p.done <- err
				t.Fatalf("relay exited before listening: %v", err)
			default:
			}
			return len(p.logged(fields{"msg": "listening", "smtp": waitAddr})) > 0
		})
	}
	return p
}

// stop sends SIGTERM and waits for a clean exit.
func (p *proc) stop() {
	p.t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		p.t.Fatal(err)
	}
	err := waitfor.Recv(p.t, p.done, "the relay to stop after SIGTERM")
	p.done <- err
	if err != nil {
		p.t.Fatalf("relay exit after SIGTERM: %v", err)
	}
}

// kill ends the process with SIGKILL, as a crash or an OOM kill would.
func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	err := <-p.done
	p.done <- err
}

// runTool runs an external client with a deadline and returns its combined
// output and exit code.
func runTool(t *testing.T, stdin []byte, name string, args ...string) (string, int) {
	t.Helper()
	return runToolWith(t, nil, stdin, name, args...)
}

// runToolWith is runTool with an explicit environment (nil: inherit).
func runToolWith(t *testing.T, env []string, stdin []byte, name string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	code := 0
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else {
			t.Fatalf("%s: %v", name, err)
		}
	}
	return string(out), code
}

func hostPort(t *testing.T, addr string) (string, string) {
	t.Helper()
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return h, p
}

// lines normalises a message for comparison in failure output only.
func preview(b []byte) string {
	s := string(b)
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return strings.ReplaceAll(s, "\r\n", "⏎\n")
}

// knownSecrets lists what must never appear in a relay's output, by what it
// is: the values of secret settings in env, the private key and federated
// token files it names, the XOAUTH2 payload for its mailbox, and the shapes
// of what the relay makes (JWTs: tokens and client assertions both start
// with the base64url of '{"'; the payload's "auth=Bearer").
func knownSecrets(t *testing.T, env []string) map[string]string {
	t.Helper()
	vals := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		vals[k] = v // later entries win, as for the child
	}
	needles := map[string]string{
		"a JWT (token or client assertion)": "eyJ",
		"a bearer token":                    "Bearer ",
		"the XOAUTH2 payload":               "auth=Bearer",
		"a test message body":               "leading dot",
		"8-bit test message body":           "Grüße",
	}
	for _, s := range config.Settings() {
		if v := vals[s.Env]; s.Secret && len(v) >= 6 {
			needles["the value of "+s.Env] = v
		}
	}
	for _, k := range []string{"IDENTITY_HEADER", "MSI_SECRET"} {
		// The App Service and Azure ML endpoints' shared secrets.
		if v := vals[k]; len(v) >= 6 {
			needles["the value of "+k] = v
		}
	}
	if mb := vals["O365RELAY_MAILBOX"]; mb != "" {
		// The payload starts with "user=", so its base64 starts with this.
		needles["the XOAUTH2 payload, base64"] = base64.StdEncoding.EncodeToString([]byte("user=" + mb))[:16]
	}
	if f := vals["AZURE_FEDERATED_TOKEN_FILE"]; f != "" {
		if b, err := os.ReadFile(f); err == nil && len(bytes.TrimSpace(b)) >= 16 {
			needles["the federated token"] = string(bytes.TrimSpace(b))
		}
	}
	if f := vals["O365RELAY_LISTEN_TLS_KEY"]; f != "" {
		if b, err := os.ReadFile(f); err == nil {
			for i, l := range pemKeyLines(b) {
				needles[fmt.Sprintf("line %d of the listener's private key", i+1)] = l
			}
		}
	}
	if f := vals["AZURE_CLIENT_CERTIFICATE_PATH"]; f != "" {
		if b, err := os.ReadFile(f); err == nil {
			for i, l := range pemKeyLines(b) {
				needles[fmt.Sprintf("line %d of the private key", i+1)] = l
			}
		}
	}
	return needles
}

// pemKeyLines returns the base64 lines of every PRIVATE KEY block in a PEM
// file (nothing for PKCS #12 or a file without a key).
func pemKeyLines(b []byte) []string {
	var out []string
	in := false
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(l, "-----BEGIN ") && strings.Contains(l, "PRIVATE KEY"):
			in = true
		case strings.HasPrefix(l, "-----END "):
			in = false
		case in && len(l) >= 32 && !strings.Contains(l, ":"):
			out = append(out, l)
		}
	}
	return out
}

// scanForSecrets fails the test for each secret found in out.
func scanForSecrets(t *testing.T, out string, needles map[string]string) {
	t.Helper()
	for what, n := range needles {
		if strings.Contains(out, n) {
			t.Errorf("relay output contains %s", what)
		}
	}
}

// configSetsLogLevel reports whether a --config file in args sets log_level
// (or cannot be read, in which case the test is about that).
func configSetsLogLevel(args []string) bool {
	for i, a := range args {
		var f string
		switch {
		case (a == "--config" || a == "-config") && i+1 < len(args):
			f = args[i+1]
		case strings.HasPrefix(a, "--config="):
			f = strings.TrimPrefix(a, "--config=")
		default:
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil || bytes.Contains(b, []byte("log_level")) {
			return true
		}
	}
	return false
}
