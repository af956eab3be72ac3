package token

import (
	"errors"
	"strings"
)

// ExchangeOnlineAppID is the application ID of the Office 365 Exchange
// Online service principal, the resource SMTP.SendAsApp belongs to.
const ExchangeOnlineAppID = "00000002-0000-0ff1-ce00-000000000000"

// ManagedIdentityFix says what to do about a managed-identity token failure
// (the long form of its hint, for `o365relay doctor`, `token` and `send`),
// or "" when err is not one of the classed failures. Lines are separated
// by "\n"; commands are lines of their own.
func ManagedIdentityFix(err error, m ManagedIdentity) string {
	source, _, _ := ManagedIdentityEndpoint()
	switch {
	case errors.Is(err, ErrNoManagedIdentityEndpoint) && source == "Azure Arc":
		return strings.Join([]string{
			"The Azure Connected Machine agent must run on this server:",
			"systemctl status himdsd",
			"azcmagent show",
			"If the server is not connected: azcmagent connect --resource-group <group> --tenant-id <tenant> --location <region> --subscription-id <subscription>",
		}, "\n")
	case errors.Is(err, ErrNoManagedIdentityEndpoint) && source == "IMDS (Azure VM)":
		return strings.Join([]string{
			"Only an Azure VM (or VM scale set) has the Instance Metadata Service; check that it answers here:",
			"curl -s -H Metadata:true 'http://169.254.169.254/metadata/instance/compute/resourceId?api-version=2021-02-01&format=text'",
			"No answer: this is not an Azure VM, or a firewall blocks 169.254.169.254:80 (the relay never sends it through a proxy).",
			"An on-premises or other-cloud server gets a managed identity by connecting it to Azure Arc (azcmagent connect); otherwise use a certificate: O365RELAY_CREDENTIAL=certificate with AZURE_CLIENT_CERTIFICATE_PATH (README.md, In Azure).",
		}, "\n")
	case errors.Is(err, ErrNoManagedIdentityEndpoint):
		return "Turn on the managed identity of this " + source + " resource (portal: Identity), so that the platform sets IDENTITY_ENDPOINT for the relay's process."
	case errors.Is(err, ErrManagedIdentityNotFound) && (m.ClientID != "" || m.ResourceID != ""):
		return strings.Join([]string{
			"Attach the user-assigned identity to this resource (portal: the VM or server → Identity → User assigned → Add), e.g. for a VM:",
			"az vm identity assign --resource-group <group> --name <vm> --identities <identity resource ID>",
			"and check that AZURE_CLIENT_ID is that identity's Client ID (or O365RELAY_MANAGED_IDENTITY_RESOURCE_ID its resource ID): az identity show --resource-group <group> --name <identity> --query '{clientId:clientId, id:id}'",
		}, "\n")
	case errors.Is(err, ErrManagedIdentityNotFound):
		return strings.Join([]string{
			"Turn on the system-assigned identity (portal: the VM → Identity → System assigned → On), e.g.:",
			"az vm identity assign --resource-group <group> --name <vm>",
			"or name a user-assigned identity attached to this resource with AZURE_CLIENT_ID.",
		}, "\n")
	case errors.Is(err, ErrArcChallenge):
		return strings.Join([]string{
			"The Arc agent proves the caller is local with a file in /var/opt/azcmagent/tokens readable only by root and the himds group. Add the relay's user to it:",
			"usermod -aG himds <user>",
			"With the systemd unit (DynamicUser), add SupplementaryGroups=himds to the drop-in of README.md, Azure VMs and Arc servers.",
		}, "\n")
	}
	return ""
}
