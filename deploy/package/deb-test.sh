#!/usr/bin/env bash
# Install the built .deb packages on this machine, use what was installed,
# purge, and check that nothing is left behind. Root only; meant for CI's
# throwaway machine (or a scratch VM): `make deb-test`.
#
#   bash deploy/package/deb-test.sh DIST_DIR
#
# What runs without systemd as PID 1: the installed binary (version, demo,
# config check of the shipped env file, sendmail's "relay not running"),
# the unit through systemd-analyze verify, the conffile and modes. Starting
# the service needs a booted systemd; see docs/install.md for that test.
set -euo pipefail
dist="${1:?usage: deb-test.sh DIST_DIR}"
[ "$(id -u)" = 0 ] || { echo "deb-test: needs root (dpkg -i)" >&2; exit 1; }
main=$(ls "$dist"/o365relay_*.deb)
mta=$(ls "$dist"/o365relay-sendmail_*.deb)
work=$(mktemp -d)
cleanup() { # on a failure, leave the machine as it was
	dpkg --purge o365relay-sendmail o365relay >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

snapshot() { # every path the packages could touch, minus dpkg's own books
	find /etc /usr /var/lib -xdev 2>/dev/null \
		| grep -Ev '^/var/lib/(dpkg|apt|ucf|systemd/deb-systemd)|^/etc/(ld\.so\.cache|mtab)$' | sort
}
fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }

snapshot >"$work/before"
with_mta=1
if dpkg -S /usr/sbin/sendmail >/dev/null 2>&1; then
	echo "SKIP: o365relay-sendmail not installed: /usr/sbin/sendmail belongs to $(dpkg -S /usr/sbin/sendmail | cut -d: -f1)"
	with_mta=0
fi

echo "== lintian"
if command -v lintian >/dev/null; then
	# Deliberate exceptions are in deploy/package/lintian-overrides*.
	lintian --fail-on error,warning "$main" "$mta" 2>&1 | grep -v 'running with root privileges' || true
	lintian --fail-on error,warning "$main" "$mta" >/dev/null 2>&1 || fail "lintian"
	ok "lintian: no error or warning"
else
	echo "SKIP: lintian not installed"
fi

echo "== dpkg -i"
if [ "$with_mta" = 1 ]; then dpkg -i "$main" "$mta"; else dpkg -i "$main"; fi

echo "== the installed files"
[ "$(command -v o365relay)" = /usr/bin/o365relay ] || fail "o365relay is not /usr/bin/o365relay on PATH"
o365relay version | tee "$work/version"
grep -q '^o365relay [0-9]' "$work/version" || fail "version output"
dpkg-query -W -f='${Conffiles}\n' o365relay | grep -q ' /etc/o365relay/o365relay.env ' || fail "o365relay.env is not a conffile"
[ "$(stat -c %a /etc/o365relay)" = 700 ] || fail "/etc/o365relay mode $(stat -c %a /etc/o365relay)"
[ "$(stat -c %a /etc/o365relay/o365relay.env)" = 600 ] || fail "o365relay.env mode"
cmp -s /etc/o365relay/o365relay.env deploy/systemd/o365relay.env.example || fail "the env file is not the example"
[ ! -e /etc/systemd/system/multi-user.target.wants/o365relay.service ] || fail "the service was enabled on install"
man -w o365relay >/dev/null 2>&1 || [ -f /usr/share/man/man8/o365relay.8.gz ] || fail "no man page"
zcat /usr/share/man/man8/o365relay.8.gz | grep -q '^\.SH SETTINGS' || fail "man page lacks SETTINGS"
ok "binary, conffile (0600 in a 0700 directory), man page; service not enabled"

echo "== o365relay demo (installed binary)"
o365relay demo | tail -n 3

echo "== systemd-analyze verify /usr/lib/systemd/system/o365relay.service"
if command -v systemd-analyze >/dev/null; then
	systemd-analyze verify /usr/lib/systemd/system/o365relay.service >"$work/verify" 2>&1 || { cat "$work/verify"; fail "verify"; }
	if grep -Eq 'o365relay\.service|Unknown|[Ii]nvalid|ignoring' "$work/verify"; then cat "$work/verify"; fail "verify warns"; fi
	grep -qx 'ExecStart=/usr/bin/o365relay serve' /usr/lib/systemd/system/o365relay.service || fail "ExecStart"
	ok "unit verifies, ExecStart=/usr/bin/o365relay serve"
else
	echo "SKIP: systemd-analyze not installed"
fi

echo "== config check of the shipped env file (everything commented: must name what is missing)"
set +e
o365relay config check /etc/o365relay/o365relay.env >"$work/check" 2>&1
rc=$?
set -e
cat "$work/check"
[ "$rc" = 2 ] && grep -q AZURE_TENANT_ID "$work/check" || fail "config check exit $rc"

if [ "$with_mta" = 1 ]; then
	echo "== /usr/sbin/sendmail with no relay running"
	[ "$(readlink -f /usr/sbin/sendmail)" = /usr/bin/o365relay ] || fail "/usr/sbin/sendmail"
	/usr/sbin/sendmail -bi || fail "sendmail -bi"
	set +e
	printf 'Subject: deb-test\n\nbody\n' | O365RELAY_LISTEN=127.0.0.1:1 /usr/sbin/sendmail -t -i ops@example.com >"$work/sm" 2>&1
	rc=$?
	set -e
	cat "$work/sm"
	[ "$rc" = 75 ] && grep -q 'the relay is not running' "$work/sm" || fail "sendmail exit $rc"
	ok "sendmail says the relay is not running (exit 75)"
fi

echo "== dpkg --purge"
if [ "$with_mta" = 1 ]; then dpkg --purge o365relay-sendmail; fi
dpkg --purge o365relay
snapshot >"$work/after"
if ! diff -u "$work/before" "$work/after"; then
	fail "files left behind or removed by install + purge (diff above)"
fi
ok "purge left nothing behind"
echo "deb-test: 1 passed, 0 failed"
