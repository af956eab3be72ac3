#!/usr/bin/env bash
# A real systemd (Debian 12's, 252) booted in a container, for testing what
# only a running systemd shows: Type=notify readiness, journald priorities,
# Restart= policies, LoadCredential=, DynamicUser=, reload, a .deb's
# maintainer scripts. The container shares the host's network (loopback
# included), so it reaches fakes a test started on 127.0.0.1.
#
#   nspawn.sh check                  exit 0 if this machine can run it, else print why (exit 3)
#   nspawn.sh rootfs                 build the Debian root (once, cached) and print its path
#   nspawn.sh boot ROOTFS STAGE      boot it; STAGE (a host directory) is /stage inside;
#                                    prints the container's PID 1 (as seen from the host)
#   nspawn.sh exec PID CMD [ARG...]  run CMD inside (root, in the container's namespaces)
#   nspawn.sh stop PID               power off and wait
#
# What to install and what to check are the caller's: put files in STAGE and
# run e.g. `nspawn.sh exec $pid install -m 0755 /stage/o365relay /usr/local/bin/`
# or `nspawn.sh exec $pid dpkg -i /stage/o365relay.deb`, then `systemctl …`,
# `journalctl …` the same way. The root is booted with --volatile=overlay:
# the cached tree is never modified, every boot starts from the same state,
# and several boots may share it.
#
# Needs root, systemd-nspawn (Debian: systemd-container), mmdebstrap,
# nsenter (util-linux) and Debian's mirror for the first build (~60 s,
# ~200 MB). --register=no --keep-unit: no systemd/dbus is needed on the host.
set -euo pipefail

packages="${NSPAWN_PACKAGES:-systemd,systemd-sysv,dbus,procps}"
suite="${NSPAWN_SUITE:-bookworm}"
cache="${NSPAWN_CACHE:-/var/tmp/o365relay-nspawn}"

die() { echo "nspawn.sh: $*" >&2; exit 1; }

cmd_check() {
	local missing=()
	[ "$(id -u)" = 0 ] || { echo "not root"; exit 3; }
	for t in systemd-nspawn mmdebstrap nsenter; do
		command -v "$t" >/dev/null 2>&1 || missing+=("$t")
	done
	if [ "${#missing[@]}" -gt 0 ]; then
		echo "missing: ${missing[*]} (apt-get install systemd-container mmdebstrap util-linux)"
		exit 3
	fi
}

cmd_rootfs() {
	local key dir
	key="$(printf '%s %s' "$suite" "$packages" | sha256sum | cut -c1-12)"
	dir="$cache/$suite-$key"
	mkdir -p "$cache"
	# One builder at a time; others wait and reuse its result.
	exec 9>"$cache/.lock"
	flock 9
	if [ ! -x "$dir/lib/systemd/systemd" ]; then
		rm -rf "$dir.tmp"
		mmdebstrap --quiet --variant=apt --include="$packages" "$suite" "$dir.tmp" >&2 ||
			die "mmdebstrap $suite failed"
		mv "$dir.tmp" "$dir"
	fi
	flock -u 9
	echo "$dir"
}

cmd_boot() {
	local rootfs="$1" stage="$2" npid pid i
	[ -x "$rootfs/lib/systemd/systemd" ] || die "$rootfs is not a root with systemd (run: nspawn.sh rootfs)"
	mkdir -p "$stage"
	setsid systemd-nspawn --quiet --register=no --keep-unit --volatile=overlay \
		--directory="$rootfs" --bind="$stage":/stage --boot \
		</dev/null >"$stage/.nspawn.log" 2>&1 &
	npid=$!
	echo "$npid" >"$stage/.nspawn.pid"
	# systemd-nspawn forks an intermediate child that clones the container's
	# init and exits: the first child seen may be that one. Wait for a child
	# that has exec'd systemd (the init, reparented to systemd-nspawn).
	pid=""
	for i in $(seq 1 300); do
		for c in $(pgrep -P "$npid" 2>/dev/null || true); do
			if [ "$(cat "/proc/$c/comm" 2>/dev/null || true)" = systemd ]; then
				pid="$c"
			fi
		done
		[ -n "$pid" ] && break
		kill -0 "$npid" 2>/dev/null || die "systemd-nspawn exited: $(tail -n 20 "$stage/.nspawn.log")"
		sleep 0.1
	done
	[ -n "$pid" ] || die "no container init after 30 s: $(tail -n 20 "$stage/.nspawn.log")"
	# `is-system-running --wait` returns once boot finished (running or
	# degraded); until systemd has its socket it fails, so retry briefly.
	for i in $(seq 1 60); do
		if state="$(timeout 60 nsenter -t "$pid" -m -u -i -p -- systemctl is-system-running --wait 2>/dev/null)"; then
			break
		fi
		case "$state" in degraded) break ;; esac
		kill -0 "$npid" 2>/dev/null || die "container stopped while booting: $(tail -n 20 "$stage/.nspawn.log")"
		sleep 0.5
	done
	nsenter -t "$pid" -m -u -i -p -- true || die "cannot enter the container's init $pid"
	echo "$pid"
}

cmd_exec() {
	local pid="$1"
	shift
	exec nsenter -t "$pid" -m -u -i -p -- "$@"
}

cmd_stop() {
	local pid="$1" npid i
	npid="$(ps -o ppid= -p "$pid" 2>/dev/null | tr -d ' ' || true)"
	nsenter -t "$pid" -m -u -i -p -- systemctl poweroff >/dev/null 2>&1 || true
	for i in $(seq 1 300); do
		[ -n "$npid" ] && kill -0 "$npid" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -KILL "$npid" 2>/dev/null || true
	die "container did not power off within 30 s (killed)"
}

case "${1:-}" in
check) cmd_check ;;
rootfs) cmd_check >/dev/null && cmd_rootfs ;;
boot) [ $# -eq 3 ] || die "usage: boot ROOTFS STAGE"; cmd_boot "$2" "$3" ;;
exec) [ $# -ge 3 ] || die "usage: exec PID CMD [ARG...]"; shift; cmd_exec "$@" ;;
stop) [ $# -eq 2 ] || die "usage: stop PID"; cmd_stop "$2" ;;
*) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
