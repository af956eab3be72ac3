package dockerfile

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// repo is the repository root, relative to this package's directory.
const repo = "../.."

func read(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repo, name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// The repository's Dockerfile passes every BuildKit build check.
func TestDockerfileLint(t *testing.T) {
	t.Parallel()
	findings, err := Lint(context.Background(), read(t, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range findings {
		t.Error(f)
	}
}

// The linter really runs: each snippet must trip its rule, or a clean result
// above would prove nothing.
func TestLintCatches(t *testing.T) {
	t.Parallel()
	cases := []struct{ rule, dockerfile string }{
		{"JSONArgsRecommended", "FROM scratch\nCMD serve\n"},
		{"UndefinedVar", "FROM scratch\nCOPY $NOPE /x\n"},
		{"SecretsUsedInArgOrEnv", "FROM scratch\nENV AZURE_CLIENT_SECRET=x\n"},
		{"LegacyKeyValueFormat", "FROM scratch\nENV A b\n"},
		{"StageNameCasing", "FROM scratch AS Build\n"},
		{"FromAsCasing", "FROM scratch as build\n"},
		{"error", "FROM scratch\nNOSUCH x\n"},
	}
	for _, tc := range cases {
		t.Run(tc.rule, func(t *testing.T) {
			t.Parallel()
			findings, err := Lint(context.Background(), []byte(tc.dockerfile))
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range findings {
				if f.Rule == tc.rule {
					return
				}
			}
			t.Errorf("%q: no %s finding; got %v", tc.dockerfile, tc.rule, findings)
		})
	}
}

func ignore(t *testing.T) *Matcher {
	t.Helper()
	m, err := ParseIgnore(read(t, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// Keys and env files never reach the builder; what the build needs does.
func TestDockerignore(t *testing.T) {
	t.Parallel()
	m := ignore(t)
	excluded := []string{
		"o365relay.pem", "deploy/kubernetes/sidecar/o365relay.pem", "a/b/c.pfx", "cert.p12",
		"tls.key", "tls.crt", ".env", "sub/.env", ".env.local", "o365relay.env", "etc/o365relay/o365relay.env",
		"o365relay", "spool/new/1", "relay/smtpd/smtpd.test", "cover.out", "cpu.prof", ".idea/x.xml",
	}
	included := []string{
		"go.mod", "go.sum", "Dockerfile", ".git/HEAD", ".git/objects/ab/cdef", "cmd/o365relay/main.go",
		"relay/smtpd/server.go", "deploy/systemd/o365relay.env.example", "deploy/check.sh",
		"relay/smtpd/testdata/fuzz/FuzzBodyChecker/356e28f5914a0f16", "token/testdata/test-only.pem",
	}
	for _, p := range excluded {
		if ok, err := m.Ignored(p); err != nil || !ok {
			t.Errorf("%s reaches the build context (err %v)", p, err)
		}
	}
	for _, p := range included {
		if ok, err := m.Ignored(p); err != nil || ok {
			t.Errorf("%s is left out of the build context (err %v)", p, err)
		}
	}
}

// No file git tracks is ignored: the builder's `git status` would then see
// it deleted and go build would stamp the version "+dirty".
func TestTrackedFilesInContext(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	cmd := exec.Command("git", "ls-files", "-z")
	cmd.Dir = repo
	out, err := cmd.Output()
	if err != nil {
		t.Skipf("not a git work tree: %v", err)
	}
	m := ignore(t)
	n := 0
	for _, p := range strings.Split(string(out), "\x00") {
		if p == "" {
			continue
		}
		n++
		if ok, err := m.Ignored(p); err != nil || ok {
			t.Errorf("tracked file %s is excluded by .dockerignore (err %v)", p, err)
		}
	}
	if n == 0 {
		t.Error("git ls-files listed nothing")
	}
}
