package token

import (
	"testing"
)

// RotateCertificate must prove the new certificate before using it: one
// Entra does not know yet is refused and the old one keeps working; once
// registered, the swap happens and later requests are signed with it (the
// old one can then be removed from the app registration).
func TestRotateCertificateOnlyAfterEntraAcceptsIt(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	first := f.certCred(t, 0)
	s := f.source(t, first)
	if _, err := s.Token(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	next := f.certCred(t, 1).Certificate

	// Not uploaded yet: refused with the new thumbprint in the hint, and
	// the old certificate stays in use.
	err := s.RotateCertificate(ctxT(t), next)
	if ee := entraErr(t, err); ee.Code() != 700027 {
		t.Fatalf("rotation to an unregistered certificate: %v, want AADSTS700027", err)
	}
	if s.Certificate() != first.Certificate {
		t.Fatal("the unregistered certificate was put into use")
	}

	if err := f.srv.RegisterCert(testClientID, next.Leaf); err != nil {
		t.Fatal(err)
	}
	n := f.srv.TokenRequests()
	if err := s.RotateCertificate(ctxT(t), next); err != nil {
		t.Fatalf("rotation to a registered certificate: %v", err)
	}
	if got := f.srv.TokenRequests() - n; got != 1 {
		t.Errorf("rotation made %d token requests, want 1", got)
	}
	if s.Certificate() != next {
		t.Fatal("rotation did not switch the certificate")
	}
	if st := s.Status(); !st.HasToken || st.LastError != nil {
		t.Errorf("after rotation: %+v", st)
	}
	// Rotating to the same certificate again makes no request.
	if err := s.RotateCertificate(ctxT(t), next); err != nil || f.srv.TokenRequests()-n != 1 {
		t.Errorf("same-certificate rotation: err %v, %d requests", err, f.srv.TokenRequests()-n)
	}

	// The old one removed: a forced refresh succeeds, so it is signed
	// with the new certificate.
	if err := f.srv.RemoveCert(testClientID, certs(t)[0].cert); err != nil {
		t.Fatal(err)
	}
	tok, err := s.Token(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Refresh(ctxT(t), tok); err != nil {
		t.Fatalf("refresh after the old certificate was removed: %v", err)
	}
}

func TestRotateCertificateRefusesOtherCredentials(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.source(t, Credential{ClientSecret: "s3cr3t~value"})
	if err := s.RotateCertificate(ctxT(t), f.certCred(t, 1).Certificate); err == nil {
		t.Fatal("a secret-based source accepted a certificate")
	}
}
