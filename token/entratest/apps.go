package entratest

import (
	"crypto/x509"
	"fmt"
)

// AddApp registers an app (replacing one with the same client ID).
func (s *Server) AddApp(a App) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := a
	c.Certs = append([]*x509.Certificate(nil), a.Certs...)
	c.Federated = append([]Federated(nil), a.Federated...)
	s.apps[a.ClientID] = &c
}

// RegisterCert uploads another certificate to an app.
func (s *Server) RegisterCert(clientID string, cert *x509.Certificate) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.apps[clientID]
	if !ok {
		return fmt.Errorf("entratest: no app %q", clientID)
	}
	a.Certs = append(a.Certs, cert)
	return nil
}

// RemoveCert deletes a certificate from an app.
func (s *Server) RemoveCert(clientID string, cert *x509.Certificate) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.apps[clientID]
	if !ok {
		return fmt.Errorf("entratest: no app %q", clientID)
	}
	kept := a.Certs[:0:0]
	for _, c := range a.Certs {
		if !c.Equal(cert) {
			kept = append(kept, c)
		}
	}
	a.Certs = kept
	return nil
}
