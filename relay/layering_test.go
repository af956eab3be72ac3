package relay

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// The import rules of docs/architecture.md, checked on the module's real
// package graph (go list), so that a change that points an import upward
// fails here instead of in review. It lives in package relay because relay
// is where the layers meet; it reads the whole module.

const module = "github.com/o365relay/o365relay"

// leaves are the vocabulary and helper packages that import nothing from
// the module except other leaves, and no SMTP library.
var leaves = []string{"config/secret", "config/address", "config/azurestep", "config/tlstest", "config/waitfor", "relay/reply", "relay/envelope"}

// smtpSpeakers are the only packages under config/, token/ and relay/
// that may import go-smtp: the listener, the Exchange client and the
// imitation of Exchange. The programs under cmd/ are clients and may too.
var smtpSpeakers = []string{"relay/smtpd", "relay/upstream", "relay/exchangetest"}

// testOnlyArrows are the upward imports a test may make: config/address's
// FuzzParse checks every address it writes against the Exchange
// imitation's independent strict grammar (exchangetest does not import
// config/address, so there is no cycle).
var testOnlyArrows = map[[2]string]bool{{"config/address", "relay/exchangetest"}: true}

type listedPackage struct {
	path                  string // without the module prefix
	imports, deps, tested []string
}

func listModule(t *testing.T) map[string]listedPackage {
	t.Helper()
	out, err := exec.Command("go", "list", "-C", "..", "-e", "-f",
		"{{.ImportPath}}|{{join .Imports \",\"}}|{{join .Deps \",\"}}|{{join .TestImports \",\"}},{{join .XTestImports \",\"}}", "./...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	pkgs := map[string]listedPackage{}
	for line := range strings.Lines(strings.TrimSpace(string(out))) {
		f := strings.Split(strings.TrimSpace(line), "|")
		if len(f) != 4 {
			t.Fatalf("go list printed %q", line)
		}
		p := listedPackage{path: strings.TrimPrefix(f[0], module+"/")}
		p.imports, p.deps, p.tested = split(f[1]), split(f[2]), split(f[3])
		pkgs[p.path] = p
	}
	if len(pkgs) < 20 {
		t.Fatalf("go list found %d packages", len(pkgs))
	}
	return pkgs
}

// split turns a comma list of import paths into the module's own (prefix
// dropped) and the outside ones, as they are.
func split(s string) []string {
	var out []string
	for p := range strings.SplitSeq(s, ",") {
		if p != "" {
			out = append(out, strings.TrimPrefix(p, module+"/"))
		}
	}
	return out
}

func under(p string, dirs ...string) bool {
	for _, d := range dirs {
		if p == d || strings.HasPrefix(p, d+"/") {
			return true
		}
	}
	return false
}

func isSMTP(p string) bool {
	return under(p, "github.com/emersion/go-smtp", "github.com/emersion/go-sasl")
}

func isOwn(p string) bool { return under(p, "cmd", "config", "deploy", "relay", "token") }

func TestLayering(t *testing.T) {
	t.Parallel()
	pkgs := listModule(t)
	for _, name := range append(append([]string{}, leaves...), smtpSpeakers...) {
		if _, ok := pkgs[name]; !ok {
			t.Errorf("%s is named in the layering rules but is not in the module", name)
		}
	}
	for _, p := range pkgs {
		// config and token: nothing of the daemon, no SMTP.
		if under(p.path, "config", "token") {
			for _, d := range p.deps {
				if under(d, "relay") || (under(p.path, "config") && under(d, "token")) || isSMTP(d) {
					t.Errorf("%s depends on %s: config imports nothing under relay/ or token/, token nothing under relay/, neither go-smtp", p.path, d)
				}
			}
			for _, d := range p.tested {
				if (under(d, "relay") || (under(p.path, "config") && under(d, "token"))) && !testOnlyArrows[[2]string{p.path, d}] {
					t.Errorf("%s's tests import %s: a test helper they need belongs in a layer below them (config/tlstest, config/waitfor)", p.path, d)
				}
			}
		}
		// Leaves: only other leaves, no SMTP library.
		if slices.Contains(leaves, p.path) {
			for _, d := range p.deps {
				if (isOwn(d) && !slices.Contains(leaves, d)) || isSMTP(d) {
					t.Errorf("leaf %s depends on %s: a leaf imports only other leaves and no SMTP library", p.path, d)
				}
			}
		}
		// Only the two ends of the relay (and its imitation of Exchange)
		// speak go-smtp.
		if under(p.path, "config", "token", "relay") && !slices.Contains(smtpSpeakers, p.path) {
			for _, d := range p.imports {
				if isSMTP(d) {
					t.Errorf("%s imports %s: only %v convert to and from go-smtp's types", p.path, d, smtpSpeakers)
				}
			}
		}
		// The daemon package is imported by programs only.
		if p.path != "relay" && !under(p.path, "cmd") && slices.Contains(p.imports, "relay") {
			t.Errorf("%s imports the daemon package relay: what it needs belongs in a package below it", p.path)
		}
	}
	// Inside the relay, data flows listener → spool → delivery → Exchange
	// client; the listener hands a message to a Sink and knows none of the
	// stages after it, the spool and the Exchange client know no stage at all.
	for pkg, forbidden := range map[string][]string{
		"relay/smtpd":    {"relay/spool", "relay/delivery", "relay/upstream", "token"},
		"relay/spool":    {"relay/smtpd", "relay/delivery", "relay/upstream", "token"},
		"relay/upstream": {"relay/smtpd", "relay/spool", "relay/delivery"},
		"relay/delivery": {"relay/smtpd"},
	} {
		for _, d := range pkgs[pkg].deps {
			if under(d, forbidden...) {
				t.Errorf("%s depends on %s (docs/architecture.md)", pkg, d)
			}
		}
	}
	for _, d := range pkgs["relay/spool"].deps {
		if isSMTP(d) {
			t.Errorf("relay/spool depends on %s: the spool stores envelopes and replies, never go-smtp's types", d)
		}
	}
}
