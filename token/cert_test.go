package token

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"software.sslmate.com/src/go-pkcs12"

	"github.com/o365relay/o365relay/config/secret"
	"github.com/o365relay/o365relay/config/tlstest"
)

func pemFile(t *testing.T, blocks ...[]byte) string {
	t.Helper()
	return writeFile(t, "cred.pem", bytes.Join(blocks, nil))
}

func TestLoadCertificateForms(t *testing.T) {
	t.Parallel()
	tc := certs(t)[0]
	pkcs8, err := tlstest.PKCS8PEM(tc.key)
	if err != nil {
		t.Fatal(err)
	}
	pfx, err := pkcs12.Modern.Encode(tc.key, tc.cert, nil, "pfx-pass")
	if err != nil {
		t.Fatal(err)
	}
	const pw = "correct horse"
	cases := []struct {
		name, path string
		password   secret.Secret
	}{
		{"PEM PKCS1 key first", pemFile(t, tlstest.PKCS1PEM(tc.key), tlstest.CertPEM(tc.cert)), ""},
		{"PEM PKCS8", pemFile(t, tlstest.CertPEM(tc.cert), pkcs8), ""},
		{"PEM encrypted PKCS8 (Go)", pemFile(t, tlstest.CertPEM(tc.cert), encryptPKCS8(t, tc.key, pw, 2048)), pw},
		{"PFX by extension", writeFile(t, "cred.pfx", pfx), "pfx-pass"},
		{"PFX by content", writeFile(t, "cred.bin", pfx), "pfx-pass"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			got, err := LoadCertificate(c.path, c.password)
			if err != nil {
				t.Fatal(err)
			}
			if !got.Leaf.Equal(tc.cert) || !got.key.Equal(tc.key) {
				t.Fatal("loaded a different certificate or key")
			}
			sum := sha1.Sum(tc.cert.Raw)
			if got.ThumbprintSHA1Hex() != strings.ToUpper(fmtHex(sum[:])) {
				t.Errorf("SHA-1 thumbprint %s", got.ThumbprintSHA1Hex())
			}
			s256 := sha256.Sum256(tc.cert.Raw)
			if got.ThumbprintSHA256() != base64.RawURLEncoding.EncodeToString(s256[:]) {
				t.Errorf("SHA-256 thumbprint %s", got.ThumbprintSHA256())
			}
			if !got.NotAfter().Equal(tc.cert.NotAfter) || !got.NotBefore().Equal(tc.cert.NotBefore) {
				t.Error("validity not exposed")
			}
		})
	}
}

func fmtHex(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

// Files made by `openssl pkcs8 -topk8 -v2 aes-256-cbc` (PBKDF2-HMAC-SHA256,
// OpenSSL 3 default) and `-v2 aes-128-cbc -v2prf hmacWithSHA1`, password
// "correct horse", committed so the test does not need openssl.
func TestLoadCertificateOpenSSLEncrypted(t *testing.T) {
	t.Parallel()
	for _, f := range []string{"testdata/openssl-aes256-sha256.pem", "testdata/openssl-aes128-sha1.pem"} {
		c, err := LoadCertificate(f, "correct horse")
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if c.Leaf.Subject.CommonName != "o365relay test openssl" {
			t.Errorf("%s: subject %v", f, c.Leaf.Subject)
		}
		_, err = LoadCertificate(f, "wrong horse")
		if err == nil || !strings.Contains(err.Error(), "wrong password") || strings.Contains(err.Error(), "horse") {
			t.Errorf("%s with the wrong password: %v", f, err)
		}
		_, err = LoadCertificate(f, "")
		if err == nil || !strings.Contains(err.Error(), "encrypted key: set "+PasswordEnv) || !strings.Contains(err.Error(), f) {
			t.Errorf("%s without password: %v", f, err)
		}
	}
}

func TestLoadCertificateErrors(t *testing.T) {
	t.Parallel()
	cs := certs(t)
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecDER, err := x509.MarshalECPrivateKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	ec8, err := x509.MarshalPKCS8PrivateKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	ecCert := selfSignedEC(t, ecKey)
	pfx, err := pkcs12.Modern.Encode(cs[0].key, cs[0].cert, nil, "pfx-pass")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, path string
		password   secret.Secret
		want       string
	}{
		{"key of another cert", pemFile(t, tlstest.CertPEM(cs[0].cert), tlstest.PKCS1PEM(cs[1].key)), "", "key does not match the certificate"},
		{"EC PRIVATE KEY", pemFile(t, tlstest.CertPEM(ecCert), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER})), "", "found an EC key; Entra ID accepts only RSA certificates"},
		{"EC in PKCS8", pemFile(t, tlstest.CertPEM(ecCert), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ec8})), "", "found an EC key; Entra ID accepts only RSA certificates"},
		{"no key", pemFile(t, tlstest.CertPEM(cs[0].cert)), "", "no private key found (found CERTIFICATE)"},
		{"no cert", pemFile(t, tlstest.PKCS1PEM(cs[0].key)), "", "no CERTIFICATE block found"},
		{"two keys", pemFile(t, tlstest.CertPEM(cs[0].cert), tlstest.PKCS1PEM(cs[0].key), tlstest.PKCS1PEM(cs[1].key)), "", "found two private keys"},
		{"not PEM", writeFile(t, "x.pem", []byte("hello")), "", "no PEM blocks found"},
		{"PFX no password", writeFile(t, "c.p12", pfx), "", "password-protected: set " + PasswordEnv},
		{"PFX wrong password", writeFile(t, "c.p12", pfx), "nope-nope", "wrong password"},
		{"legacy DEK-Info", pemFile(t, tlstest.CertPEM(cs[0].cert), pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-256-CBC,00"}, Bytes: []byte{1}})), "", "legacy PEM encryption"},
		{"missing file", "/nonexistent/cred.pem", "", "no such file"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			_, err := LoadCertificate(c.path, c.password)
			if err == nil {
				t.Fatal("loaded")
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.path) {
				t.Fatalf("error %q does not say %q and name the file", err, c.want)
			}
			if c.password != "" && strings.Contains(err.Error(), c.password.Reveal()) {
				t.Fatalf("error %q contains the password", err)
			}
		})
	}
}

func selfSignedEC(t *testing.T, k *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "ec"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The leaf is the certificate that matches the key, wherever it is in the
// file; the rest is the chain, sent in x5c in order.
func TestLeafIsTheKeysCertificate(t *testing.T) {
	t.Parallel()
	cs := certs(t)
	p := pemFile(t, tlstest.CertPEM(cs[1].cert), tlstest.CertPEM(cs[0].cert), tlstest.PKCS1PEM(cs[0].key))
	c, err := LoadCertificate(p, "")
	if err != nil {
		t.Fatal(err)
	}
	if !c.Leaf.Equal(cs[0].cert) || len(c.Chain) != 1 || !c.Chain[0].Equal(cs[1].cert) {
		t.Fatal("wrong leaf or chain")
	}
	if !strings.Contains(c.String(), c.ThumbprintSHA1Hex()) {
		t.Error(c.String())
	}
}

// decodeJWT splits a compact JWT into its header and claims without
// verifying it.
func decodeJWT(t *testing.T, s string) (hdr, claims map[string]any) {
	t.Helper()
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %d parts", len(parts))
	}
	for i, dst := range []*map[string]any{&hdr, &claims} {
		b, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			t.Fatalf("segment %d not base64url: %v", i, err)
		}
		d := json.NewDecoder(bytes.NewReader(b))
		d.UseNumber()
		if err := d.Decode(dst); err != nil {
			t.Fatal(err)
		}
	}
	return hdr, claims
}

func TestAssertionHeadersAndClaims(t *testing.T) {
	t.Parallel()
	tc := certs(t)[0]
	chain := certs(t)[1].cert
	c, err := NewCertificate(tc.cert, []*x509.Certificate{chain}, tc.key)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	const aud = "https://login.microsoftonline.com/tenant-x/oauth2/v2.0/token"
	s256 := sha256.Sum256(tc.cert.Raw)
	s1 := sha1.Sum(tc.cert.Raw)
	cases := []struct {
		alg                     Algorithm
		x5c                     bool
		method                  jwt.SigningMethod
		thumbHeader, noneHeader string
		thumb                   []byte
	}{
		{PS256, false, jwt.SigningMethodPS256, "x5t#S256", "x5t", s256[:]},
		{PS256, true, jwt.SigningMethodPS256, "x5t#S256", "x5t", s256[:]},
		{RS256, false, jwt.SigningMethodRS256, "x5t", "x5t#S256", s1[:]},
	}
	seen := map[string]bool{}
	for _, cs := range cases {
		a, err := c.Assertion(AssertionParams{ClientID: testClientID, Audience: aud, Algorithm: cs.alg, X5C: cs.x5c, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		if a.String() != secret.Redacted {
			t.Fatal("assertion is not a redacted secret")
		}
		hdr, claims := decodeJWT(t, a.Reveal())
		if hdr["alg"] != cs.method.Alg() || hdr["typ"] != "JWT" {
			t.Errorf("header %v", hdr)
		}
		if hdr[cs.thumbHeader] != base64.RawURLEncoding.EncodeToString(cs.thumb) {
			t.Errorf("%s = %v", cs.thumbHeader, hdr[cs.thumbHeader])
		}
		if _, ok := hdr[cs.noneHeader]; ok {
			t.Errorf("unexpected %s header", cs.noneHeader)
		}
		if x5c, ok := hdr["x5c"].([]any); cs.x5c != ok || (ok && (len(x5c) != 2 || x5c[0] != base64.StdEncoding.EncodeToString(tc.cert.Raw) || x5c[1] != base64.StdEncoding.EncodeToString(chain.Raw))) {
			t.Errorf("x5c = %v", hdr["x5c"])
		}
		// aud must be a single string, not an array (MSAL's form).
		if claims["aud"] != aud || claims["iss"] != testClientID || claims["sub"] != testClientID {
			t.Errorf("claims %v", claims)
		}
		for k, want := range map[string]int64{"nbf": now.Unix(), "iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix()} {
			if got, _ := claims[k].(json.Number).Int64(); got != want {
				t.Errorf("%s = %v, want %d", k, claims[k], want)
			}
		}
		jti, _ := claims["jti"].(string)
		if len(jti) != 36 || jti[14] != '4' || seen[jti] {
			t.Errorf("jti %q not a fresh UUIDv4", jti)
		}
		seen[jti] = true
		if len(claims) != 7 {
			t.Errorf("extra claims: %v", claims)
		}
		if _, err := jwt.Parse(a.Reveal(), func(*jwt.Token) (any, error) { return tc.cert.PublicKey.(*rsa.PublicKey), nil },
			jwt.WithValidMethods([]string{cs.method.Alg()}), jwt.WithTimeFunc(func() time.Time { return now })); err != nil {
			t.Errorf("signature does not verify with the certificate: %v", err)
		}
	}
	if _, err := c.Assertion(AssertionParams{ClientID: testClientID, Audience: aud, Algorithm: "ES256", Now: now}); err == nil {
		t.Error("ES256 accepted")
	}
}

func TestNewCertificateRejectsNonRSA(t *testing.T) {
	t.Parallel()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var key crypto.PrivateKey = k
	if _, err := NewCertificate(selfSignedEC(t, k), nil, key); err == nil || !strings.Contains(err.Error(), "only RSA") {
		t.Fatalf("%v", err)
	}
}

// fuzzMaxIter keeps PBKDF2 cheap under fuzzing: coverage instrumentation
// makes SHA-1 so slow that OpenSSL's default 2048 iterations cost about a
// second per input. The committed corpus (testdata/fuzz/) was made with
// `openssl pkcs8 -topk8 -v2 aes-256-cbc -iter 1` (and `-v2 aes-128-cbc
// -v2prf hmacWithSHA1 -iter 1`), password "correct horse", so the fuzzer
// starts from inputs that decrypt.
const fuzzMaxIter = 16

// FuzzParsePEM feeds arbitrary bytes to the PEM/encrypted-PKCS #8 parser:
// it must not panic, must stay within its PBKDF2 bound, and anything it
// accepts must be an RSA key matching its leaf.
func FuzzParsePEM(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := parsePEM(data, "correct horse", fuzzMaxIter)
		if err != nil {
			if strings.Contains(err.Error(), "correct horse") {
				t.Fatal("error contains the password")
			}
			return
		}
		pub, ok := c.Leaf.PublicKey.(*rsa.PublicKey)
		if !ok || !pub.Equal(&c.key.PublicKey) {
			t.Fatal("accepted a key that does not match the leaf")
		}
	})
}

// FuzzDecryptPKCS8 targets the ASN.1/PBES2 decoder directly: whatever it
// returns must be one DER SEQUENCE (a PrivateKeyInfo candidate).
func FuzzDecryptPKCS8(f *testing.F) {
	f.Fuzz(func(t *testing.T, der []byte) {
		pt, err := decryptPKCS8(der, []byte("correct horse"), fuzzMaxIter)
		if err != nil {
			return
		}
		if len(pt) == 0 || pt[0] != 0x30 {
			t.Fatal("success without a DER SEQUENCE")
		}
	})
}

// The committed fuzz corpus must really exercise decryption: its seeds
// decrypt to the key of their certificate.
func TestFuzzCorpusDecrypts(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("testdata/fuzz/FuzzParsePEM/*")
	if err != nil {
		t.Fatal(err)
	}
	ok := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		_, lit, found := strings.Cut(string(b), "[]byte(")
		if !found {
			t.Fatalf("%s: not a corpus file", f)
		}
		data, err := strconv.Unquote(strings.TrimSuffix(strings.TrimSpace(lit), ")"))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if _, err := parsePEM([]byte(data), "correct horse", fuzzMaxIter); err == nil {
			ok++
		}
	}
	if ok < 2 {
		t.Fatalf("only %d corpus entries parse", ok)
	}
}
