package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/o365relay/o365relay/relay/azuresetup"
)

// runCert is `o365relay cert new`.
func runCert(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("cert", "cert new [--out FILE] [--cert-out FILE] [--bits 2048|3072|4096] [--days N] [--cn NAME] [--force]\n\n"+
		"Makes an RSA key and a self-signed SHA-256 certificate for the app registration.\n"+
		"--out gets the certificate and the private key (mode 0600): the relay's\n"+
		"AZURE_CLIENT_CERTIFICATE_PATH. --cert-out gets the certificate alone: upload it.", stdout, stderr)
	out := fs.String("out", "o365relay.pem", "certificate and private key, for the relay (written mode 0600)")
	certOut := fs.String("cert-out", "o365relay.crt", "the certificate alone, to upload to the app registration")
	bits := fs.Int("bits", 2048, "RSA key size: 2048, 3072 or 4096")
	days := fs.Int("days", 365, "lifetime in days (1 to 3650); plan the rotation before it ends")
	cn := fs.String("cn", "o365relay", "the certificate's common name, as the portal will list it")
	force := fs.Bool("force", false, "overwrite existing files")
	if len(args) == 0 || args[0] != "new" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			printUsage(stdout, fs, "cert new [--out FILE] [--cert-out FILE] [--bits 2048|3072|4096] [--days N] [--cn NAME] [--force]")
			return 0
		}
		fs.Usage()
		return 2
	}
	if code, done := parseFlags(fs, args[1:]); done {
		return code
	}
	if *days < 1 || *days > 3650 {
		fmt.Fprintln(stderr, "o365relay cert new: --days must be from 1 to 3650")
		return 2
	}
	c, err := azuresetup.NewCert(azuresetup.CertOptions{CommonName: *cn, Bits: *bits, Lifetime: time.Duration(*days) * 24 * time.Hour})
	if err != nil {
		fmt.Fprintln(stderr, "o365relay cert new:", err)
		return 2
	}
	if err := writeNew(*out, c.CredentialPEM, 0o600, *force); err != nil {
		return exitErr(stderr, err)
	}
	if err := writeNew(*certOut, c.CertificatePEM, 0o644, *force); err != nil {
		return exitErr(stderr, err)
	}
	fmt.Fprintf(stdout, `Wrote %s (certificate and private key, mode 0600) and %s (certificate).
  subject       CN=%s, RSA %d bits, %s
  valid until   %s (%d days)
  SHA-1         %s   (the thumbprint the Azure portal lists)
  SHA-256       %s

Next:
  1. Upload %s: Entra ID > App registrations > your app > Certificates & secrets >
     Certificates > Upload certificate; or let the setup script do it:
       o365relay setup azure --tenant TENANT --mailbox MAILBOX --certificate %s > setup.ps1
     Entra ID accepts a new certificate within about two minutes.
  2. Give the relay %s: install -m 0600 %s /etc/o365relay/o365relay.pem
     (systemd hands it to the service with LoadCredential=), or put it in the
     Kubernetes Secret the chart mounts. Keep it off shared disks and out of git.
`, *out, *certOut, *cn, c.KeyBits, c.SignatureScheme, c.NotAfter.Format("2006-01-02"), *days, c.SHA1, c.SHA256,
		*certOut, *certOut, *out, *out)
	return 0
}

// writeNew writes data to a new file with perm (also when the umask would
// allow more), refusing to replace an existing file unless force.
func writeNew(path string, data []byte, perm os.FileMode, force bool) error {
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if force {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(path, flags, perm)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s exists; choose another name or pass --force", path)
	}
	if err != nil {
		return err
	}
	if err := f.Chmod(perm); err != nil {
		_ = f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// listFlag collects a repeated flag (--mailbox a --mailbox b, or a,b).
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// runSetup is `o365relay setup azure`.
func runSetup(_ context.Context, args []string, stdout, stderr io.Writer) int {
	const synopsis = "setup azure --tenant TENANT --mailbox ADDRESS [--mailbox ...] [--client-id ID | --managed-identity OBJECT-ID] [--app-name NAME] [--certificate FILE] [--rbac] [--out FILE]\n\n" +
		"Prints a PowerShell script that does the seven Azure steps with your values\n" +
		"filled in: the app registration and its Enterprise application, SMTP.SendAsApp\n" +
		"with admin consent, the certificate upload (Microsoft.Graph), then\n" +
		"New-ServicePrincipal with the Enterprise application's object ID,\n" +
		"Add-MailboxPermission and SMTP AUTH per mailbox (ExchangeOnlineManagement).\n" +
		"Each step checks before it changes anything; running it again is safe.\n" +
		"--rbac uses Exchange's RBAC for Applications instead of the API permission\n" +
		"and mailbox permissions; --managed-identity authorizes an Azure VM's or Arc\n" +
		"server's identity instead of an app. Review the script, run it in pwsh, then run\n" +
		"'o365relay doctor'."
	fs := newFlagSet("setup", synopsis, stdout, stderr)
	var o azuresetup.Options
	var mailboxes listFlag
	fs.StringVar(&o.TenantID, "tenant", "", "Directory (tenant) ID or a verified domain (contoso.onmicrosoft.com)")
	fs.StringVar(&o.ClientID, "client-id", "", "an existing app registration's Application (client) ID; default: find or create the app by --app-name")
	fs.StringVar(&o.AppName, "app-name", "o365relay", "the app registration's display name")
	fs.Var(&mailboxes, "mailbox", "a mailbox the relay sends as (repeat, or comma-separate)")
	cert := fs.String("certificate", "", "PEM `file` whose certificate to upload (from 'o365relay cert new'); default: upload it in the portal")
	fs.StringVar(&o.ManagedIdentity, "managed-identity", "", "authorize this managed identity (its Object (principal) ID; `oid` in 'o365relay token') instead of an app registration: no app, no certificate")
	fs.BoolVar(&o.RBAC, "rbac", false, "use RBAC for Applications (management scope + role assignment) instead of the API permission and Add-MailboxPermission")
	out := fs.String("out", "", "write the script to this `file` instead of stdout")
	if len(args) == 0 || args[0] != "azure" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			printUsage(stdout, fs, synopsis)
			return 0
		}
		fs.Usage()
		return 2
	}
	if code, done := parseFlags(fs, args[1:]); done {
		return code
	}
	o.Mailboxes = mailboxes
	if *cert != "" {
		data, err := os.ReadFile(*cert)
		if err != nil {
			return exitErr(stderr, err)
		}
		o.Certificate = data
	}
	script, err := azuresetup.Script(o)
	if err != nil {
		fmt.Fprintf(stderr, "o365relay setup azure:\n%s\n", indent(err.Error()))
		return 2
	}
	if *out == "" {
		_, _ = io.WriteString(stdout, script)
		return 0
	}
	if err := writeNew(*out, []byte(script), 0o644, true); err != nil {
		return exitErr(stderr, err)
	}
	fmt.Fprintf(stdout, "Wrote %s. Review it, run it in PowerShell 7 (pwsh -File %s), then: o365relay doctor\n", *out, *out)
	return 0
}
