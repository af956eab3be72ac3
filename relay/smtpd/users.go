package smtpd

import (
	"crypto/rand"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/bcrypt"

	"github.com/o365relay/o365relay/config/address"
)

// User is one local AUTH account: a bcrypt hash of its password and the
// envelope senders it may use.
type User struct {
	Name string
	// Hash is a bcrypt hash ($2a$, $2b$ or $2y$, as `htpasswd -nBC 12`
	// or Python's bcrypt make).
	Hash []byte
	// Senders are exact addresses, "*@domain" or "*" (any, the null
	// sender included); matched without regard to ASCII case (address.Fold).
	Senders []string
}

// Users is the Authenticator for local AUTH against bcrypt hashes.
type Users struct {
	byName map[string]User
	// dummy is compared against when the user is unknown, so that an
	// unknown user costs one bcrypt comparison at the same cost as a
	// known one with a wrong password (equal timing, so a response time tells nothing); the
	// session's failure padding comes on top.
	dummy []byte
}

// errUnknownUser and errWrongPassword are logged, never sent: the client
// hears 535 5.7.8 for both.
var (
	errUnknownUser   = errors.New("no such user")
	errWrongPassword = errors.New("wrong password")
)

// NewUsers checks each hash and makes the dummy hash, at the highest cost
// any user's hash has.
func NewUsers(users []User) (*Users, error) {
	u := &Users{byName: map[string]User{}}
	cost := bcrypt.DefaultCost
	for i, usr := range users {
		if usr.Name == "" {
			return nil, fmt.Errorf("user %d has no name", i+1)
		}
		if _, dup := u.byName[usr.Name]; dup {
			return nil, fmt.Errorf("user %s is listed twice", usr.Name)
		}
		c, err := bcrypt.Cost(usr.Hash)
		if err != nil {
			// The error names the problem, not the hash.
			return nil, fmt.Errorf("user %s: the password hash is not a bcrypt hash: %v", usr.Name, err)
		}
		if i == 0 || c > cost {
			cost = c
		}
		u.byName[usr.Name] = usr
	}
	pw := make([]byte, 18)
	if _, err := rand.Read(pw); err != nil {
		return nil, err
	}
	var err error
	if u.dummy, err = bcrypt.GenerateFromPassword(pw, cost); err != nil {
		return nil, fmt.Errorf("making the comparison hash for unknown users: %w", err)
	}
	return u, nil
}

// Authenticate implements Authenticator.
func (u *Users) Authenticate(user, password string) error {
	usr, ok := u.byName[user]
	hash := usr.Hash
	if !ok {
		hash = u.dummy
	}
	err := bcrypt.CompareHashAndPassword(hash, []byte(password))
	switch {
	case !ok:
		return errUnknownUser
	case err != nil:
		return errWrongPassword
	}
	return nil
}

// MaySend implements Authenticator.
func (u *Users) MaySend(user, sender string) bool {
	usr, ok := u.byName[user]
	if !ok {
		return false
	}
	s := address.Fold(sender)
	domain := ""
	if at := strings.LastIndexByte(s, '@'); at >= 0 {
		domain = "*" + s[at:]
	}
	for _, p := range usr.Senders {
		p = address.Fold(p)
		switch {
		case p == "*":
			return true
		case s != "" && p == s:
			return true
		case domain != "" && p == domain:
			return true
		}
	}
	return false
}
