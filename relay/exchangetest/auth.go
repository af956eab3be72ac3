package exchangetest

import (
	"strings"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/zap"
)

// Audiences Exchange Online accepts in an access token for SMTP: the
// resource URI and the Office 365 Exchange Online application ID
// (docs/exchange.md#xoauth2).
const (
	AudienceResource = "https://outlook.office365.com"
	AudienceAppID    = "00000002-0000-0ff1-ce00-000000000000"
)

// RoleSendAsApp is the application permission SMTP AUTH with client
// credentials needs (docs/azure.md#step-2-smtpsendasapp-and-admin-consent).
const RoleSendAsApp = "SMTP.SendAsApp"

var _ smtp.AuthSession = (*session)(nil)

func (ss *session) AuthMechanisms() []string {
	// Exchange lists AUTH only after STARTTLS (docs/exchange.md#tls).
	if !ss.fc.isTLS() {
		return nil
	}
	if ss.fc.noXOAUTH2 {
		return []string{"LOGIN"}
	}
	return []string{"XOAUTH2"}
}

var (
	errMustStartTLS = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Must issue a STARTTLS command first"}
	errAuthFailed   = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 3}, Message: "Authentication unsuccessful [fake]"}
	errAuthDisabled = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 139}, Message: "Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox"}
	errUnknownMech  = &smtp.SMTPError{Code: 504, EnhancedCode: smtp.EnhancedCode{5, 7, 4}, Message: "Unrecognized authentication type"}
	errConcurrent   = &smtp.SMTPError{Code: 432, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Concurrent connections limit exceeded"}
)

func (ss *session) Auth(mech string) (sasl.Server, error) {
	s := ss.s
	if !ss.fc.isTLS() {
		s.mu.Lock()
		s.stats.AuthBeforeTLS++
		s.stats.AuthFailures++
		s.mu.Unlock()
		// Return a server so that an initial response, if the client sent
		// one, is seen: that is a credential on a plaintext connection.
		return saslFunc(func(resp []byte) ([]byte, bool, error) {
			if len(resp) > 0 {
				s.violation("credentials sent on a plaintext connection (AUTH %s before STARTTLS)", mech)
			}
			return nil, true, errMustStartTLS
		}), nil
	}
	if mech != "XOAUTH2" || ss.fc.noXOAUTH2 {
		ss.authFailed()
		return nil, errUnknownMech
	}
	if f := s.take(StageAuth, ""); f != nil {
		ss.authFailed()
		return nil, s.fire(ss.fc, f)
	}
	first := true
	var pending *smtp.SMTPError
	return saslFunc(func(resp []byte) ([]byte, bool, error) {
		if resp == nil && first {
			// Two-step form: Microsoft's example answers "334 " (docs/exchange.md#xoauth2).
			first = false
			return []byte{}, false, nil
		}
		if pending != nil {
			// Answer to the JSON error challenge: must be empty.
			if len(resp) != 0 {
				s.violation("non-empty response to an XOAUTH2 error challenge")
			}
			err := pending
			pending = nil
			return nil, true, err
		}
		if err := ss.checkXOAuth2(resp); err != nil {
			ss.authFailed()
			if s.opts.JSONErrorChallenge && err.Code == 535 {
				pending = err
				return []byte(`{"status":"401","schemes":"bearer","scope":"https://outlook.office365.com/.default"}`), false, nil
			}
			return nil, true, err
		}
		return nil, true, nil
	}), nil
}

func (ss *session) authFailed() {
	ss.s.mu.Lock()
	defer ss.s.mu.Unlock()
	ss.s.stats.AuthFailures++
}

type saslFunc func([]byte) ([]byte, bool, error)

func (f saslFunc) Next(resp []byte) ([]byte, bool, error) { return f(resp) }

// checkXOAuth2 validates "user=U\x01auth=Bearer T\x01\x01"
// (docs/exchange.md#xoauth2) and the
// token as Exchange would, then applies the concurrency limit.
func (ss *session) checkXOAuth2(resp []byte) *smtp.SMTPError {
	s := ss.s
	parts := strings.Split(string(resp), "\x01")
	if len(parts) != 4 || parts[2] != "" || parts[3] != "" ||
		!strings.HasPrefix(parts[0], "user=") || !strings.HasPrefix(parts[1], "auth=Bearer ") {
		s.violation("malformed XOAUTH2 response (%d fields)", len(parts))
		return errAuthFailed
	}
	user := strings.ToLower(strings.TrimPrefix(parts[0], "user="))
	raw := strings.TrimPrefix(parts[1], "auth=Bearer ")

	claims := jwt.MapClaims{}
	_, err := jwt.ParseWithClaims(raw, claims,
		func(*jwt.Token) (any, error) { return s.opts.TokenKey, nil },
		jwt.WithValidMethods([]string{"RS256"}),
		jwt.WithTimeFunc(s.clock),
		jwt.WithExpirationRequired(),
		jwt.WithAudience(AudienceResource, AudienceAppID),
	)
	if err != nil {
		s.log.Info("token rejected", zap.String("user", user), zap.Error(err))
		return errAuthFailed
	}
	tid, _ := claims["tid"].(string)
	if tid != s.opts.Tenant {
		s.log.Info("token rejected: wrong tenant", zap.String("user", user), zap.String("tid", tid))
		return errAuthFailed
	}
	appID, _ := claims["appid"].(string)
	if appID == "" {
		appID, _ = claims["azp"].(string) // v2 tokens name the client azp
	}
	mb, ok := s.mailboxes[user]
	switch {
	case hasRole(claims["roles"], RoleSendAsApp):
		if !ok || !mb.apps[strings.ToLower(appID)] {
			s.log.Info("token rejected: app has no FullAccess on mailbox", zap.String("user", user), zap.String("appid", appID))
			return errAuthFailed
		}
	case ok && mb.rbac[strings.ToLower(appID)]:
		// RBAC for Applications: no role in the token, no mailbox
		// permission needed; the role assignment's scope decides.
	default:
		s.log.Info("token rejected: no SMTP.SendAsApp role and no RBAC role assignment", zap.String("user", user), zap.String("appid", appID))
		return errAuthFailed
	}
	if mb.mb.AuthDisabled {
		return errAuthDisabled
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active[user] >= s.opts.MaxConcurrentPerMailbox {
		s.stats.AuthFailures++
		return errConcurrent
	}
	s.active[user]++
	if s.active[user] > s.stats.MaxConcurrentPerMailbox[user] {
		s.stats.MaxConcurrentPerMailbox[user] = s.active[user]
	}
	s.stats.Auths++
	ss.mailbox = user
	ss.appID = appID
	return nil
}

func hasRole(v any, role string) bool {
	switch r := v.(type) {
	case []any:
		for _, x := range r {
			if x == role {
				return true
			}
		}
	case string:
		return r == role
	}
	return false
}
