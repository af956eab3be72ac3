package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/o365relay/o365relay/config/address"
)

// Value parsers. Each returns an error that says what is expected; the
// Settings table names which parser reads which setting.

func isLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

func parseHostPort(v string) (string, error) {
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		return "", fmt.Errorf("%q is not host:port (e.g. 127.0.0.1:2525)", v)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return "", fmt.Errorf("%q: port %q is not a number from 0 to 65535", v, port)
	}
	if strings.ContainsAny(host, " /") {
		return "", fmt.Errorf("%q: %q is not a host name or address", v, host)
	}
	return v, nil
}

// parsePrefixes reads a comma-separated list of CIDRs (a bare address means
// that one host). A prefix with host bits set is refused, since
// "10.0.0.1/8" usually means the writer thought of one host and would in
// fact admit sixteen million.
func parsePrefixes(v string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(v, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if !strings.Contains(f, "/") {
			a, err := netip.ParseAddr(f)
			if err != nil {
				return nil, fmt.Errorf("%q is not a CIDR (e.g. 10.0.0.0/8) or an IP address", f)
			}
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR (e.g. 10.0.0.0/8)", f)
		}
		if p.Masked() != p {
			return nil, fmt.Errorf("%q has host bits set; did you mean %s?", f, p.Masked())
		}
		out = append(out, p)
	}
	return out, nil
}

func formatPrefixes(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

func parseDuration(v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration (e.g. 30s, 5m, 120h)", v)
	}
	if d <= 0 {
		return 0, fmt.Errorf("%q must be positive", v)
	}
	return d, nil
}

func parseCount(v string) (int, error) {
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a whole number ≥ 0", v)
	}
	return n, nil
}

// parseBytes reads a size: a whole number of bytes, or one with a suffix
// KB/MB/GB (powers of 1000, as Exchange quotes its limits) or KiB/MiB/GiB.
func parseBytes(v string) (int64, error) {
	s := strings.TrimSpace(v)
	mult := int64(1)
	for _, u := range []struct {
		suf string
		m   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}} {
		if strings.HasSuffix(s, u.suf) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suf)), u.m
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a size (bytes, or e.g. 35MB, 64MiB)", v)
	}
	return n * mult, nil
}

func oneOf(v string, allowed ...string) (string, error) {
	for _, a := range allowed {
		if strings.EqualFold(v, a) {
			return a, nil
		}
	}
	return "", fmt.Errorf("%q is not one of %s", v, strings.Join(allowed, ", "))
}

func parseMailbox(v string) (string, error) {
	if v == "" {
		return "", nil
	}
	if strings.ContainsAny(v, "\x00\x01\r\n\t <>") {
		return "", fmt.Errorf("%q must be a bare address like noreply@example.com (no spaces, brackets or control characters)", v)
	}
	at := strings.LastIndexByte(v, '@')
	if at <= 0 || at == len(v)-1 {
		return "", fmt.Errorf("%q is not an address like noreply@example.com", v)
	}
	// It goes into MAIL FROM when a sender rule rewrites the envelope.
	if m, err := address.Parse(v, true); err != nil || m.String() != v {
		return "", fmt.Errorf("%q is not an RFC 5321 address like noreply@example.com", v)
	}
	return v, nil
}

func parseAuthority(v string) (string, error) {
	u, err := url.Parse(v)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return "", fmt.Errorf("%q must be an https URL such as %s", v, DefaultAuthorityHost)
	}
	return v, nil
}

func parseTenant(v string) (string, error) {
	switch strings.ToLower(v) {
	case "common", "consumers", "organizations":
		// AADSTS9001023 (docs/entra.md#the-token-request).
		return "", fmt.Errorf("%q cannot be used with client credentials; use the Directory (tenant) ID from the app registration's Overview page", v)
	}
	if strings.ContainsAny(v, "/?# ") {
		return "", fmt.Errorf("%q is not a tenant ID or domain", v)
	}
	return v, nil
}

func parseScope(v string) (string, error) {
	if !strings.HasSuffix(v, "/.default") {
		// AADSTS1002012: client-credentials scopes end in /.default.
		return "", fmt.Errorf("%q must end in /.default; Exchange Online SMTP needs %s", v, DefaultScope)
	}
	return v, nil
}

// readable checks a credential file early so the error names the setting.
func readable(v string) (string, error) {
	if v == "" {
		return "", nil
	}
	f, err := os.Open(v)
	if err != nil {
		return "", fmt.Errorf("cannot read %s: %v", v, errors.Unwrap(err))
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return v, nil
}
