package token

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"go.uber.org/zap"

	"github.com/o365relay/o365relay/config"
)

// CredentialFromConfig builds the credential the configuration names, for
// the daemon, doctor and the commands that get a token, so that all of them
// authenticate the same way. A certificate is loaded and checked here, so a
// key that does not match its certificate stops the daemon at start; a key
// file every user can read is logged as a warning (log may be nil).
func CredentialFromConfig(cfg *config.Config, log *zap.Logger) (Credential, error) {
	switch cfg.Credential() {
	case "certificate":
		cert, err := LoadCertificate(cfg.CertificatePath, cfg.CertificatePassword)
		if err != nil {
			return Credential{}, fmt.Errorf("client_certificate_path (AZURE_CLIENT_CERTIFICATE_PATH): %w", err)
		}
		WarnKeyPermissions(cfg.CertificatePath, log)
		return Credential{Certificate: cert, Algorithm: Algorithm(cfg.AssertionAlgorithm)}, nil
	case "federated":
		return Credential{FederatedTokenFile: cfg.FederatedTokenFile}, nil
	case "secret":
		return Credential{ClientSecret: cfg.ClientSecret}, nil
	case config.CredManagedIdentity:
		// AZURE_CLIENT_ID names a user-assigned identity here.
		return Credential{ManagedIdentity: &ManagedIdentity{ClientID: cfg.ClientID, ResourceID: cfg.ManagedIdentityResourceID}}, nil
	}
	return Credential{}, errors.New("no credential configured")
}

// KeyFileExposed reports whether the credential file at path, which holds
// the private key, is readable by every user, and its permission bits. A
// group-readable file is not exposed: Kubernetes' fsGroup makes 0440 the
// normal mode of a mounted secret.
func KeyFileExposed(path string) (mode fs.FileMode, exposed bool) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, false
	}
	return fi.Mode().Perm(), fi.Mode().Perm()&0o004 != 0
}

// KeyFileWarning is KeyFileExposed's finding as one line of text, "" when
// the key file is not exposed: for the doctor and `o365relay config check`,
// which print what the daemon logs.
func KeyFileWarning(path string) string {
	mode, exposed := KeyFileExposed(path)
	if !exposed {
		return ""
	}
	return fmt.Sprintf("the private key file %s is world-readable (mode %s)", path, mode)
}

// KeyFileFix is what to do about an exposed key file.
const KeyFileFix = "chmod 600 it (or 0440 with a dedicated group)"

// WarnKeyPermissions logs a warning when KeyFileExposed finds the key file
// readable by every user; log may be nil (a command that prints instead
// uses KeyFileWarning).
func WarnKeyPermissions(path string, log *zap.Logger) {
	mode, exposed := KeyFileExposed(path)
	if !exposed || log == nil {
		return
	}
	log.Warn("the certificate's private key file is world-readable; "+KeyFileFix,
		zap.String("path", path), zap.String("mode", mode.String()))
}
