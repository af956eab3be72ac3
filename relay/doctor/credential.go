package doctor

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/o365relay/o365relay/config"
	"github.com/o365relay/o365relay/config/azurestep"
	"github.com/o365relay/o365relay/token"
)

// Check 2: the credential loads — a certificate and its key, a federated
// token file, or a client secret (a managed identity: managedidentity.go).

// certWarn: certificates expiring sooner get a warning (the token source
// logs the same at start).
const certWarn = 30 * 24 * time.Hour

func (d *doctor) checkCredential() {
	cfg := d.cfg
	switch cfg.Credential() {
	case "certificate":
		d.checkCertificate()
	case "federated":
		d.checkFederated()
	case config.CredManagedIdentity:
		d.checkManagedIdentity()
	case "secret":
		cred, err := token.CredentialFromConfig(cfg, d.o.Logger)
		if err != nil {
			d.add(Check{Step: stepCredential, Name: "credential", Status: Fail, Message: oneLine(err.Error())})
			return
		}
		d.cred = &cred
		d.add(Check{Step: stepCredential, Name: "credential", Status: OK,
			Message: "client secret (its expiry date is only shown in the portal: Certificates & secrets → Client secrets); a certificate is recommended"})
	default:
		d.skip(stepCredential, "credential", "", "no credential is configured ("+checkRef(stepConfig)+")")
	}
}

func (d *doctor) checkCertificate() {
	cfg := d.cfg
	c := Check{Step: stepCredential, Name: "credential"}
	cert, err := token.LoadCertificate(cfg.CertificatePath, cfg.CertificatePassword)
	if err != nil {
		c.Status = Fail
		c.AzureSteps = azureSteps(azurestep.Credential)
		c.Message = "AZURE_CLIENT_CERTIFICATE_PATH: " + oneLine(err.Error())
		// token.LoadCertificate says "key does not match the certificate"
		// for a key that is not the certificate's (token/cert.go).
		if errors.Is(err, token.ErrKeyMismatch) {
			p := cfg.CertificatePath
			c.Fix = "The file must hold the certificate uploaded to the app and the private key it was made with. Compare the two public keys; both commands must print the same hash:\n" +
				"openssl x509 -noout -pubkey -in " + p + " | openssl sha256\n" +
				"openssl pkey -pubout -in " + p + " | openssl sha256\n" +
				"If the key is lost, make a new pair and upload the new certificate (" + azurestep.Credential.String() + ")."
		} else {
			c.Fix = "AZURE_CLIENT_CERTIFICATE_PATH must name a PEM file with the certificate and its RSA private key (PKCS #1, PKCS #8 or encrypted PKCS #8 with AZURE_CLIENT_CERTIFICATE_PASSWORD), or a .pfx/.p12 file."
		}
		d.add(c)
		return
	}
	d.ids.Thumbprint = cert.ThumbprintSHA1Hex()
	d.cred = &token.Credential{Certificate: cert, Algorithm: token.Algorithm(cfg.AssertionAlgorithm)}
	sha256hex := thumbprintSHA256Hex(cert)
	c.Details = map[string]string{
		"subject":             cert.Leaf.Subject.String(),
		"not_before":          cert.NotBefore().UTC().Format(time.RFC3339),
		"not_after":           cert.NotAfter().UTC().Format(time.RFC3339),
		"thumbprint_sha1":     cert.ThumbprintSHA1Hex(),
		"thumbprint_sha256":   sha256hex,
		"x5t#S256":            cert.ThumbprintSHA256(),
		"assertion_algorithm": cfg.AssertionAlgorithm,
	}
	now := d.o.Clock()
	thumbs := fmt.Sprintf("SHA-1 thumbprint %s (as the Azure portal shows it), SHA-256 %s", cert.ThumbprintSHA1Hex(), sha256hex)
	upload := "Entra ID → App registrations → " + cfg.ClientID + " → Certificates & secrets → Upload certificate"
	newCert := "openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj /CN=o365relay -keyout key.pem -out cert.pem && cat cert.pem key.pem > o365relay.pem && chmod 600 o365relay.pem"
	switch left := cert.NotAfter().Sub(now); {
	case now.Before(cert.NotBefore()):
		c.Status = Fail
		c.AzureSteps = azureSteps(azurestep.Credential)
		c.Message = fmt.Sprintf("certificate %s is not valid before %s (check the local clock); %s", cert.Leaf.Subject, cert.NotBefore().UTC().Format(time.RFC3339), thumbs)
		c.Fix = "Use a certificate that is valid now, or fix the local clock (see the clock check)."
	case left <= 0:
		c.Status = Fail
		c.AzureSteps = azureSteps(azurestep.Credential)
		c.Message = fmt.Sprintf("certificate %s expired on %s; Entra ID refuses it (AADSTS700027); %s", cert.Leaf.Subject, cert.NotAfter().UTC().Format(time.RFC3339), thumbs)
		c.Fix = "Make a new certificate and key:\n" + newCert + "\n" +
			upload + " (cert.pem), then set AZURE_CLIENT_CERTIFICATE_PATH to the new o365relay.pem; remove the expired certificate from the app afterwards."
	case left < certWarn:
		c.Status = Warn
		c.AzureSteps = azureSteps(azurestep.Credential)
		c.Message = fmt.Sprintf("certificate %s expires on %s, in %d days; %s", cert.Leaf.Subject, cert.NotAfter().UTC().Format(time.RFC3339), int(left.Hours()/24), thumbs)
		c.Fix = "Make its successor now and upload it next to the current one (both work during the overlap):\n" + newCert + "\n" + upload
	default:
		c.Status = OK
		c.Message = fmt.Sprintf("certificate %s and its key match, valid until %s (%d days); %s", cert.Leaf.Subject, cert.NotAfter().UTC().Format("2006-01-02"), int(left.Hours()/24), thumbs)
	}
	if c.Status == OK {
		if w := token.KeyFileWarning(cfg.CertificatePath); w != "" {
			c.Status = Warn
			c.Message += "; " + w
			c.Fix = "chmod 600 " + cfg.CertificatePath + " (or 0440 with a dedicated group)"
		}
	}
	d.add(c)
}

func (d *doctor) checkFederated() {
	c := Check{Step: stepCredential, Name: "credential"}
	info, err := federatedInfo(d.cfg.FederatedTokenFile, d.o.Clock())
	if err != nil {
		c.Status = Fail
		c.AzureSteps = azureSteps(azurestep.Credential)
		c.Message = "AZURE_FEDERATED_TOKEN_FILE: " + oneLine(err.Error())
		c.Fix = "The file must be the projected service account token (azure.workload.identity/use: \"true\" on the pod; the webhook mounts it at /var/run/secrets/azure/tokens/azure-identity-token)."
		d.add(c)
		return
	}
	cred, err := token.CredentialFromConfig(d.cfg, d.o.Logger)
	if err != nil {
		c.Status, c.Message = Fail, oneLine(err.Error())
		d.add(c)
		return
	}
	d.cred = &cred
	c.Status = OK
	c.Message = "federated token file: " + info
	d.add(c)
}

// thumbprintSHA256Hex is the SHA-256 of the certificate's DER in uppercase
// hex, the form certificate tools and newer portal views print (the
// assertion's x5t#S256 is the same digest in base64url).
func thumbprintSHA256Hex(c *token.Certificate) string {
	sum := sha256.Sum256(c.Leaf.Raw)
	return strings.ToUpper(hex.EncodeToString(sum[:]))
}

// federatedInfo reads a workload-identity token file and describes it from
// its unverified claims (only Entra ID can verify it); an expired token is
// an error (AADSTS700024 would follow).
func federatedInfo(path string, now time.Time) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	b, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", err
	}
	parts := strings.Split(strings.TrimSpace(string(b)), ".")
	if len(parts) != 3 {
		return "", errors.New("not a JWT (a projected service account token has three dot-separated parts)")
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return "", errors.New("JWT payload is not base64url")
	}
	var c struct {
		Iss string          `json:"iss"`
		Sub string          `json:"sub"`
		Aud json.RawMessage `json:"aud"`
		Exp int64           `json:"exp"`
	}
	if err := json.Unmarshal(payload, &c); err != nil {
		return "", errors.New("JWT payload is not JSON")
	}
	var aud []string
	if json.Unmarshal(c.Aud, &aud) != nil {
		var one string
		if json.Unmarshal(c.Aud, &one) == nil {
			aud = []string{one}
		}
	}
	exp := time.Unix(c.Exp, 0)
	if c.Exp != 0 && now.After(exp) {
		return "", fmt.Errorf("the token expired at %s; the kubelet is not rotating it (is the pod's projected volume azure-identity-token mounted?)", exp.UTC().Format(time.RFC3339))
	}
	return fmt.Sprintf("issuer %s, subject %s, audience %s, expires %s (the federated credential on the app must match issuer, subject and audience)",
		c.Iss, c.Sub, strings.Join(aud, ","), exp.UTC().Format(time.RFC3339)), nil
}
