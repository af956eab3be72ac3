package smtpd

import (
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"
)

func mustHash(t *testing.T, pw string) []byte {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestUsers(t *testing.T) {
	t.Parallel()
	u, err := NewUsers([]User{
		{Name: "app", Hash: mustHash(t, "s3cret-app"), Senders: []string{"App@Contoso.com", "*@apps.contoso.com"}},
		{Name: "any", Hash: mustHash(t, "s3cret-any"), Senders: []string{"*"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := bcrypt.Cost(u.dummy); c != bcrypt.MinCost {
		t.Fatalf("dummy hash cost %d, want the users' %d", c, bcrypt.MinCost)
	}
	if err := u.Authenticate("app", "s3cret-app"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range [][2]string{{"app", "s3cret-any"}, {"nobody", "s3cret-app"}, {"App", "s3cret-app"}, {"app", ""}} {
		err := u.Authenticate(tc[0], tc[1])
		if err == nil {
			t.Fatalf("%q/%q accepted", tc[0], tc[1])
		}
		if strings.Contains(err.Error(), tc[1]) && tc[1] != "" {
			t.Fatalf("error %q holds the password", err)
		}
	}
	for _, tc := range []struct {
		user, sender string
		want         bool
	}{
		{"app", "app@contoso.com", true},
		{"app", "APP@contoso.COM", true},
		{"app", "x@apps.contoso.com", true},
		{"app", "x@contoso.com", false},
		{"app", "x@sub.apps.contoso.com", false},
		{"app", "", false},
		{"any", "", true},
		{"any", "x@y.example", true},
		{"nobody", "app@contoso.com", false},
	} {
		if got := u.MaySend(tc.user, tc.sender); got != tc.want {
			t.Errorf("MaySend(%q, %q) = %v", tc.user, tc.sender, got)
		}
	}
}

func TestNewUsersRefusesBadHashes(t *testing.T) {
	t.Parallel()
	for _, users := range [][]User{
		{{Name: "a", Hash: []byte("plaintext-password")}},
		{{Name: "a", Hash: []byte("$2y$10$tooshort")}},
		{{Name: "", Hash: mustHash(t, "x")}},
		{{Name: "a", Hash: mustHash(t, "x")}, {Name: "a", Hash: mustHash(t, "y")}},
	} {
		_, err := NewUsers(users)
		if err == nil {
			t.Fatalf("%+v accepted", users)
		}
		if strings.Contains(err.Error(), "plaintext-password") {
			t.Fatalf("error %q holds the hash", err)
		}
	}
}

// BenchmarkAuthenticate compares the cost of the two failures the client
// must not tell apart (before the session's padding): an unknown user
// (compared against the dummy hash) and a wrong password, at bcrypt's
// default cost.
func BenchmarkAuthenticate(b *testing.B) {
	h, err := bcrypt.GenerateFromPassword([]byte("s3cret-app"), bcrypt.DefaultCost)
	if err != nil {
		b.Fatal(err)
	}
	u, err := NewUsers([]User{{Name: "app", Hash: h, Senders: []string{"*"}}})
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct{ name, user, pw string }{
		{"unknown_user", "nobody", "s3cret-app"},
		{"wrong_password", "app", "guess"},
		{"right_password", "app", "s3cret-app"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				_ = u.Authenticate(tc.user, tc.pw)
			}
		})
	}
}
