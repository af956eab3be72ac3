package token

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"software.sslmate.com/src/go-pkcs12"

	"github.com/o365relay/o365relay/config/secret"
)

// PasswordEnv is the environment variable users are told to set for an
// encrypted key or a PFX (the name the Azure SDKs use).
const PasswordEnv = "AZURE_CLIENT_CERTIFICATE_PASSWORD"

// maxCredentialFile bounds what LoadCertificate reads: a certificate chain
// and a key are a few KiB.
const maxCredentialFile = 1 << 20

// Certificate is an app registration's certificate credential: the leaf
// certificate uploaded to Entra ID, any chain sent with it in x5c, and the
// RSA private key that signs client assertions. The key is unexported so it
// cannot be printed or marshalled by accident.
type Certificate struct {
	Leaf  *x509.Certificate
	Chain []*x509.Certificate // intermediates after the leaf, may be empty
	key   *rsa.PrivateKey
}

// NewCertificate checks an in-memory credential the way LoadCertificate
// checks a file: RSA only, key matching the leaf.
func NewCertificate(leaf *x509.Certificate, chain []*x509.Certificate, key crypto.PrivateKey) (*Certificate, error) {
	if leaf == nil {
		return nil, errors.New("token: no certificate")
	}
	return newCertificate("certificate", append([]*x509.Certificate{leaf}, chain...), key)
}

// ThumbprintSHA1Hex is the SHA-1 thumbprint as the Azure portal shows it
// under "Certificates & secrets": uppercase hex of the DER.
func (c *Certificate) ThumbprintSHA1Hex() string {
	sum := sha1.Sum(c.Leaf.Raw)
	return strings.ToUpper(hex.EncodeToString(sum[:]))
}

// ThumbprintSHA256 is the base64url SHA-256 of the DER, the x5t#S256 header
// value (RFC 7515 §4.1.8).
func (c *Certificate) ThumbprintSHA256() string {
	sum := sha256.Sum256(c.Leaf.Raw)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// thumbprintSHA1 is the base64url SHA-1 of the DER, the x5t header value
// (RFC 7515 §4.1.7).
func (c *Certificate) thumbprintSHA1() string {
	sum := sha1.Sum(c.Leaf.Raw)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// NotBefore is when the leaf certificate becomes valid.
func (c *Certificate) NotBefore() time.Time { return c.Leaf.NotBefore }

// NotAfter is when the leaf certificate expires; Entra ID refuses assertions
// signed with an expired certificate (AADSTS700027, Azure step 3: docs/azure.md#step-3-upload-the-certificate).
func (c *Certificate) NotAfter() time.Time { return c.Leaf.NotAfter }

// String describes the certificate for logs: subject, SHA-1 thumbprint and
// validity. Nothing secret.
func (c *Certificate) String() string {
	return fmt.Sprintf("%s (thumbprint %s, valid %s to %s)", c.Leaf.Subject, c.ThumbprintSHA1Hex(),
		c.Leaf.NotBefore.UTC().Format(time.RFC3339), c.Leaf.NotAfter.UTC().Format(time.RFC3339))
}

// LoadCertificate reads a certificate credential from path:
//
//   - PEM with one or more CERTIFICATE blocks and one key block: "RSA PRIVATE
//     KEY" (PKCS #1), "PRIVATE KEY" (PKCS #8) or "ENCRYPTED PRIVATE KEY"
//     (PKCS #8 with PBES2/PBKDF2/AES-CBC, decrypted with password);
//   - PKCS #12 (.pfx/.p12, or DER content that is not PEM), as the Windows
//     certificate store and Azure Key Vault export it, opened with password.
//
// Only RSA keys are accepted: Entra ID certificate credentials are RSA only
// (docs/entra.md#client-assertion). The key must belong to the leaf certificate.
// Errors name the file and what was found; they never contain key bytes or
// the password.
func LoadCertificate(path string, password secret.Secret) (*Certificate, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("token: certificate: %w", err)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxCredentialFile+1))
	if cerr := f.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("token: certificate %s: %w", path, err)
	}
	if len(data) > maxCredentialFile {
		return nil, fmt.Errorf("token: certificate %s: larger than %d bytes; not a certificate file", path, maxCredentialFile)
	}
	c, err := parseCredential(path, data, password)
	if err != nil {
		return nil, fmt.Errorf("token: certificate %s: %w", path, err)
	}
	return c, nil
}

// parseCredential is LoadCertificate without the file system; path only
// chooses the format by extension.
func parseCredential(path string, data []byte, password secret.Secret) (*Certificate, error) {
	ext := strings.ToLower(filepath.Ext(path))
	isPEM := bytes.Contains(data, []byte("-----BEGIN "))
	if ext == ".pfx" || ext == ".p12" || (!isPEM && len(data) > 0 && data[0] == 0x30) {
		return parsePFX(data, password)
	}
	return parsePEM(data, password, maxPBKDF2Iterations)
}

func parsePFX(data []byte, password secret.Secret) (*Certificate, error) {
	key, leaf, chain, err := pkcs12.DecodeChain(data, password.Reveal())
	if err != nil {
		if errors.Is(err, pkcs12.ErrIncorrectPassword) {
			if password.IsZero() {
				return nil, fmt.Errorf("PKCS #12 file is password-protected: set %s", PasswordEnv)
			}
			return nil, fmt.Errorf("PKCS #12 file: wrong password (check %s)", PasswordEnv)
		}
		return nil, fmt.Errorf("not a usable PKCS #12 file: %v", err)
	}
	return newCertificate("PKCS #12 file", append([]*x509.Certificate{leaf}, chain...), key)
}

// parsePEM reads certificates and exactly one private key from PEM blocks.
func parsePEM(data []byte, password secret.Secret, maxIter int) (*Certificate, error) {
	var certs []*x509.Certificate
	var key crypto.PrivateKey
	var keyKind string
	var seen []string
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		seen = append(seen, b.Type)
		var k crypto.PrivateKey
		var err error
		switch b.Type {
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("CERTIFICATE block %d does not parse: %v", len(certs)+1, err)
			}
			certs = append(certs, c)
			continue
		case "RSA PRIVATE KEY":
			if _, ok := b.Headers["DEK-Info"]; ok {
				// RFC 1423 encryption: MD5-based key derivation, which x509
				// deprecated as insecure.
				return nil, errors.New("key uses legacy PEM encryption (DEK-Info); convert it with `openssl pkcs8 -topk8 -v2 aes-256-cbc`")
			}
			k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "ENCRYPTED PRIVATE KEY":
			if password.IsZero() {
				return nil, fmt.Errorf("encrypted key: set %s", PasswordEnv)
			}
			var der []byte
			der, err = decryptPKCS8(b.Bytes, []byte(password.Reveal()), maxIter)
			if errors.Is(err, errWrongPassword) {
				return nil, fmt.Errorf("encrypted key: wrong password (check %s)", PasswordEnv)
			}
			if err == nil {
				k, err = x509.ParsePKCS8PrivateKey(der)
			}
		case "EC PRIVATE KEY":
			return nil, errors.New("found an EC key; Entra ID accepts only RSA certificates")
		default:
			if strings.Contains(b.Type, "PRIVATE KEY") {
				return nil, fmt.Errorf("found a %q block; expected RSA PRIVATE KEY, PRIVATE KEY or ENCRYPTED PRIVATE KEY", b.Type)
			}
			continue // e.g. a "CERTIFICATE REQUEST" next to the cert: irrelevant
		}
		if err != nil {
			// x509's parse errors describe structure, never key bytes.
			return nil, fmt.Errorf("%s block does not parse: %v", b.Type, err)
		}
		if key != nil {
			return nil, fmt.Errorf("found two private keys (%s and %s); keep only the one for the certificate", keyKind, b.Type)
		}
		key, keyKind = k, b.Type
	}
	switch {
	case len(seen) == 0:
		return nil, errors.New("no PEM blocks found; expected a PEM certificate and key or a .pfx/.p12 file")
	case len(certs) == 0:
		return nil, fmt.Errorf("no CERTIFICATE block found (found %s); the file must hold the certificate uploaded to the app and its key", strings.Join(seen, ", "))
	case key == nil:
		return nil, fmt.Errorf("no private key found (found %s)", strings.Join(seen, ", "))
	}
	return newCertificate("PEM file", certs, key)
}

// newCertificate picks the certificate that matches key as the leaf and keeps
// the others, in order, as the chain.
func newCertificate(what string, certs []*x509.Certificate, key crypto.PrivateKey) (*Certificate, error) {
	var rk *rsa.PrivateKey
	switch k := key.(type) {
	case *rsa.PrivateKey:
		rk = k
	case *ecdsa.PrivateKey:
		return nil, errors.New("found an EC key; Entra ID accepts only RSA certificates")
	case ed25519.PrivateKey:
		return nil, errors.New("found an Ed25519 key; Entra ID accepts only RSA certificates")
	case nil:
		return nil, fmt.Errorf("%s has no private key", what)
	default:
		return nil, fmt.Errorf("found a %T key; Entra ID accepts only RSA certificates", key)
	}
	if len(certs) == 0 || certs[0] == nil {
		return nil, fmt.Errorf("%s has no certificate", what)
	}
	for i, c := range certs {
		if pub, ok := c.PublicKey.(*rsa.PublicKey); ok && pub.Equal(&rk.PublicKey) {
			chain := make([]*x509.Certificate, 0, len(certs)-1)
			chain = append(chain, certs[:i]...)
			chain = append(chain, certs[i+1:]...)
			return &Certificate{Leaf: c, Chain: chain, key: rk}, nil
		}
	}
	first := &Certificate{Leaf: certs[0]}
	if _, ok := certs[0].PublicKey.(*rsa.PublicKey); !ok && len(certs) == 1 {
		return nil, fmt.Errorf("the certificate %s has a %s public key; Entra ID accepts only RSA certificates", first.ThumbprintSHA1Hex(), certs[0].PublicKeyAlgorithm)
	}
	return nil, fmt.Errorf("%w (%s, thumbprint %s)", ErrKeyMismatch, certs[0].Subject, first.ThumbprintSHA1Hex())
}

// ErrKeyMismatch is wrapped by LoadCertificate's error when the private key
// is not the certificate's: the file holds a key of another certificate.
var ErrKeyMismatch = errors.New("key does not match the certificate")
