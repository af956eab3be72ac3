package azuresetup

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1" //nolint:gosec // the portal's thumbprint is SHA-1; it identifies, it does not protect
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"
)

// CertOptions are the parameters of a new app certificate.
type CertOptions struct {
	CommonName string        // default "o365relay"
	Bits       int           // 2048, 3072 or 4096; default 2048
	Lifetime   time.Duration // default one year
	Now        time.Time     // default time.Now()
}

// Cert is a new key pair: PEM with the certificate and the PKCS #8 key (the
// relay's client_certificate_path), the certificate alone to upload, and
// its thumbprints.
type Cert struct {
	Cert            *x509.Certificate
	CredentialPEM   []byte // certificate + private key: keep secret
	CertificatePEM  []byte // public part: upload this
	SHA1, SHA256    string // upper-case hex, as the portal shows SHA-1
	NotAfter        time.Time
	KeyBits         int
	SignatureScheme string
}

// NewCert makes an RSA key and a self-signed certificate with SHA-256,
// which Entra ID accepts for client assertions (it takes RSA keys only).
func NewCert(o CertOptions) (*Cert, error) {
	if o.CommonName == "" {
		o.CommonName = "o365relay"
	}
	if o.Bits == 0 {
		o.Bits = 2048
	}
	if o.Bits != 2048 && o.Bits != 3072 && o.Bits != 4096 {
		return nil, fmt.Errorf("%d-bit keys are not offered: use 2048, 3072 or 4096 (Entra ID needs RSA of at least 2048 bits)", o.Bits)
	}
	if o.Lifetime == 0 {
		o.Lifetime = 365 * 24 * time.Hour
	}
	if o.Lifetime < 24*time.Hour || o.Lifetime > 10*365*24*time.Hour {
		return nil, errors.New("the lifetime must be between 1 day and 10 years; a year or two, with rotation, is usual")
	}
	if strings.ContainsAny(o.CommonName, "\x00\r\n") {
		return nil, errors.New("the common name must be one line")
	}
	if o.Now.IsZero() {
		o.Now = time.Now()
	}
	key, err := rsa.GenerateKey(rand.Reader, o.Bits)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: o.CommonName},
		NotBefore:             o.Now.Add(-5 * time.Minute).UTC(), // tolerate a little clock skew
		NotAfter:              o.Now.Add(o.Lifetime).UTC(),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		SignatureAlgorithm:    x509.SHA256WithRSA,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	s1, s256 := Thumbprints(cert)
	return &Cert{
		Cert:            cert,
		CredentialPEM:   append(append([]byte{}, certPEM...), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk})...),
		CertificatePEM:  certPEM,
		SHA1:            s1,
		SHA256:          s256,
		NotAfter:        cert.NotAfter,
		KeyBits:         o.Bits,
		SignatureScheme: "RSA with SHA-256",
	}, nil
}

// Thumbprints returns the SHA-1 (as the Azure portal lists certificates)
// and SHA-256 thumbprints of c in upper-case hex.
func Thumbprints(c *x509.Certificate) (sha1Hex, sha256Hex string) {
	s1 := sha1.Sum(c.Raw) //nolint:gosec // see import
	s256 := sha256.Sum256(c.Raw)
	return strings.ToUpper(hex.EncodeToString(s1[:])), strings.ToUpper(hex.EncodeToString(s256[:]))
}

// ReadCertificate returns the first certificate of a PEM file's content
// (a credential PEM with the key, or the certificate alone).
func ReadCertificate(data []byte) (*x509.Certificate, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("no PEM CERTIFICATE block found")
		}
		if b.Type == "CERTIFICATE" {
			return x509.ParseCertificate(b.Bytes)
		}
	}
}
