package azuresetup

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"testing/quick"

	"github.com/o365relay/o365relay/config/azurestep"
)

// Golden scripts for representative inputs. Regenerate with
// UPDATE_GOLDEN=1 go test ./relay/azuresetup and review the diff.
func TestScriptGolden(t *testing.T) {
	cert, err := os.ReadFile("testdata/app.crt")
	if err != nil {
		t.Fatal(err)
	}
	for name, o := range map[string]Options{
		"one-mailbox":      {TenantID: "contoso.onmicrosoft.com", Mailboxes: []string{"relay@contoso.com"}, Certificate: cert},
		"several":          {TenantID: "7c1e2a40-0000-4000-8000-000000000001", ClientID: "4a1f6c0e-0000-4000-8000-000000000002", AppName: "Printers' relay", Mailboxes: []string{"scanner@contoso.com", "o'brien@contoso.com", "billing@contoso.com"}, Certificate: cert},
		"rbac":             {TenantID: "contoso.onmicrosoft.com", Mailboxes: []string{"relay@contoso.com", "alerts@contoso.com"}, RBAC: true},
		"managed-identity": {TenantID: "contoso.onmicrosoft.com", ManagedIdentity: "c0ffee00-1111-4222-8333-444455556666", AppName: "vm-relay01", Mailboxes: []string{"relay@contoso.com"}},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := Script(o)
			if err != nil {
				t.Fatal(err)
			}
			// The body after the values is the same fixed text in every
			// variant: one golden file shows the whole script, the others
			// the part that varies.
			path := filepath.Join("testdata", name+".ps1")
			if name != "one-mailbox" {
				head, ok := strings.CutSuffix(got, fixedBody())
				if !ok {
					t.Fatal("the script does not end with the fixed body")
				}
				got, path = head, filepath.Join("testdata", name+".head.ps1")
			}
			if os.Getenv("UPDATE_GOLDEN") != "" {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if got != string(want) {
				t.Errorf("%s differs from the script generated now; run UPDATE_GOLDEN=1 go test ./relay/azuresetup and review", path)
			}
		})
	}
}

// The script does what the issue asks of it, whatever the golden files say.
func TestScriptContent(t *testing.T) {
	s, err := Script(Options{TenantID: "contoso.onmicrosoft.com", Mailboxes: []string{"relay@contoso.com"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"'00000002-0000-0ff1-ce00-000000000000'",                                   // Exchange's appId
		"$_.Value -eq $RoleValue",                                                  // the role looked up by value
		"New-MgServicePrincipalAppRoleAssignment",                                  // admin consent
		"New-ServicePrincipal -AppId $AppId -ObjectId $sp.Id",                      // the Enterprise application's object ID
		"Add-MailboxPermission -Identity $m -User $sp.Id -AccessRights FullAccess", // step 6
		"Set-CASMailbox -Identity $m -SmtpClientAuthenticationDisabled $false",     // step 7
		"o365relay doctor",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("script lacks %q", want)
		}
	}
	// Every step announces itself once, numbered as config/azurestep
	// numbers them, and every change is reported.
	for _, st := range azurestep.All() {
		if n := strings.Count(s, "\nStep "+string(rune('0'+st.Step))+" '"); n != 1 {
			t.Errorf("step %d is announced %d times", st.Step, n)
		}
	}
	if strings.Contains(s, "@@") {
		t.Error("the script has a marker left")
	}
	for _, cmd := range []string{"New-MgApplication", "New-MgServicePrincipal", "Update-MgApplication", "New-ServicePrincipal", "Remove-ServicePrincipal", "Add-MailboxPermission", "Set-CASMailbox", "New-ManagementScope", "Set-ManagementScope", "New-ManagementRoleAssignment"} {
		// Each changing command is guarded by an if/else and followed by Did.
		body := strings.Index(s, "# ---- 1.")
		i := strings.Index(s[body:], cmd+" -")
		if i < 0 {
			t.Errorf("%s not found as a guarded command", cmd)
			continue
		}
		if i += body; !strings.Contains(s[i:min(len(s), i+400)], "Did ") {
			t.Errorf("%s is not followed by a report of what it did", cmd)
		}
	}
	if r, _ := Script(Options{TenantID: "t", Mailboxes: []string{"a@b.example"}, RBAC: true}); !strings.Contains(r, "$UseRbac        = $true") {
		t.Error("RBAC variant not selected")
	}
	// A managed identity: looked up by object ID, no app, no certificate,
	// the role as an app role assignment, the credential setting to use.
	mi, err := Script(Options{TenantID: "t", Mailboxes: []string{"a@b.example"}, ManagedIdentity: "c0ffee00-1111-4222-8333-444455556666"})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Get-MgServicePrincipal -ServicePrincipalId $IdentityObjectId", "$sp.ServicePrincipalType -ne 'ManagedIdentity'",
		"if (-not $UseRbac -and -not $IdentityObjectId) {", "O365RELAY_CREDENTIAL=managed_identity"} {
		if !strings.Contains(mi, want) {
			t.Errorf("managed-identity script lacks %q", want)
		}
	}
}

func TestScriptRefusesBadInput(t *testing.T) {
	for _, o := range []Options{
		{Mailboxes: []string{"a@b.example"}},
		{TenantID: "t"},
		{TenantID: "t", Mailboxes: []string{"not an address"}},
		{TenantID: "t", Mailboxes: []string{"Relay <a@b.example>"}},
		{TenantID: "t\nWrite-Host pwned", Mailboxes: []string{"a@b.example"}},
		{TenantID: "t", Mailboxes: []string{"a@b.example"}, Certificate: []byte("junk")},
		{TenantID: "t", Mailboxes: []string{"a@b.example"}, ManagedIdentity: "vm-relay01"},
		{TenantID: "t", Mailboxes: []string{"a@b.example"}, ManagedIdentity: "c0ffee00-1111-4222-8333-444455556666", ClientID: "4a1f6c0e-0000-4000-8000-000000000002"},
	} {
		if _, err := Script(o); err == nil {
			t.Errorf("accepted %+v", o)
		}
	}
}

// unquotePS reads one PowerShell single-quoted literal at the start of s,
// as PowerShell's tokenizer does (about_Quoting_Rules: the quote
// characters are ' ‘ ’ ‚ ‛; two in a row stand for one), and returns its
// value and the rest of s.
func unquotePS(t *testing.T, s string) (string, string) {
	rs := []rune(s)
	if len(rs) == 0 || !isPSSingleQuote(rs[0]) {
		t.Fatalf("not a single-quoted literal: %q", s)
	}
	var v []rune
	for i := 1; i < len(rs); i++ {
		if isPSSingleQuote(rs[i]) {
			if i+1 < len(rs) && isPSSingleQuote(rs[i+1]) {
				v = append(v, rs[i+1])
				i++
				continue
			}
			return string(v), string(rs[i+1:])
		}
		v = append(v, rs[i])
	}
	t.Fatalf("unterminated literal: %q", s)
	return "", ""
}

// hostile returns a string built from the characters that mean something
// to PowerShell or to a reader: quotes of every kind, $, backticks,
// line breaks, comment and statement syntax, and unicode.
func hostile(r *rand.Rand) string {
	alphabet := []string{"'", "‘", "’", "‚", "‛", "\"", "“", "”", "„", "$", "`", "\n", "\r", "#", "<#", "#>", ";", "|", "&", "(", ")", "{", "}", "@", "$(calc)", "a", "z", " ", "é", "ß", "\u00a0", "\u2028", "@'", "'@", "\\"}
	var b strings.Builder
	for n := r.IntN(12); n >= 0; n-- {
		b.WriteString(alphabet[r.IntN(len(alphabet))])
	}
	return b.String()
}

// Property: whatever a user supplies, the script holds it as one literal
// whose value is exactly the input, and nothing else in the script
// changes: the script made with the hostile value equals the one made with
// a plain value once the two literals are swapped.
func TestScriptQuotesEveryValue(t *testing.T) {
	literal := regexp.MustCompile(`(?m)^\$(TenantId|ClientId|IdentityObjectId|AppName)\s+= `)
	f := func(seed uint64) bool {
		r := rand.New(rand.NewPCG(seed, 1))
		vals := map[string]string{"TenantId": hostile(r), "ClientId": hostile(r), "IdentityObjectId": hostile(r), "AppName": hostile(r)}
		mbox := hostile(r) + "@contoso.com"
		o := Options{TenantID: vals["TenantId"], ClientID: vals["ClientId"], ManagedIdentity: vals["IdentityObjectId"], AppName: vals["AppName"], Mailboxes: []string{mbox, "plain@contoso.com"}}
		plain := Options{TenantID: "T", ClientID: "C", ManagedIdentity: "I", AppName: "A", Mailboxes: []string{"M", "plain@contoso.com"}}
		if o.AppName == "" {
			plain.AppName = ""
		}
		got, err := render(o)
		if err != nil {
			t.Fatal(err)
		}
		want, err := render(plain)
		if err != nil {
			t.Fatal(err)
		}
		// Decode each assignment's literal and check its value.
		rest := got
		for _, m := range literal.FindAllStringSubmatchIndex(got, -1) {
			name := got[m[2]:m[3]]
			v, _ := unquotePS(t, got[m[1]:])
			if want := vals[name]; name == "AppName" && want == "" {
				want = "o365relay"
				if v != want {
					t.Errorf("%s: literal holds %q, want %q", name, v, want)
				}
			} else if v != want {
				t.Errorf("%s: literal holds %q, want %q", name, v, want)
			}
		}
		i := strings.Index(rest, "$Mailboxes      = @(")
		v, after := unquotePS(t, rest[i+len("$Mailboxes      = @("):])
		if v != mbox || !strings.HasPrefix(after, ", 'plain@contoso.com')\n") {
			t.Errorf("mailbox literal holds %q, then %q", v, after[:min(40, len(after))])
		}
		// Swap the literals back and compare the whole script.
		swapped := got
		for _, kv := range [][2]string{{"$TenantId       = " + psQuote(o.TenantID), "$TenantId       = " + psQuote(plain.TenantID)},
			{"$ClientId       = " + psQuote(o.ClientID), "$ClientId       = " + psQuote(plain.ClientID)},
			{"$IdentityObjectId = " + psQuote(o.ManagedIdentity), "$IdentityObjectId = " + psQuote(plain.ManagedIdentity)},
			{"@(" + psQuote(mbox), "@(" + psQuote("M")}} {
			swapped = strings.Replace(swapped, kv[0], kv[1], 1)
		}
		if o.AppName != "" {
			swapped = strings.Replace(swapped, "$AppName        = "+psQuote(o.AppName), "$AppName        = "+psQuote(plain.AppName), 1)
		}
		if swapped != want {
			t.Errorf("a hostile value changed the script outside its literal: %q", vals)
			return false
		}
		return !t.Failed()
	}
	if err := quick.Check(f, &quick.Config{MaxCount: 500}); err != nil {
		t.Error(err)
	}
}

// The quoting on its own: the literal always decodes to the input and
// ends where it should.
func TestPSQuoteRoundTrip(t *testing.T) {
	f := func(s string) bool {
		v, rest := unquotePS(t, psQuote(s)+" + 1")
		return v == s && rest == " + 1"
	}
	if err := quick.Check(f, &quick.Config{MaxCount: 5000}); err != nil {
		t.Error(err)
	}
	for _, s := range []string{"", "'", "‘’‚‛", "a''b", "$(Remove-Item -Recurse /)", "`n", "line\nbreak", "@'\n'@"} {
		if v, rest := unquotePS(t, psQuote(s)); v != s || rest != "" {
			t.Errorf("%q: decodes to %q, rest %q", s, v, rest)
		}
	}
}
