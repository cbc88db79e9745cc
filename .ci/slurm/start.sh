#!/usr/bin/env bash
# Starts a one-node SLURM cluster on this machine (munged, slurmctld,
# slurmd) for the sweep launcher's integration test. Run as root.
#   .ci/slurm/start.sh            # then: export SLURM_CONF=$DYNO_SLURM_DIR/slurm.conf
#   .ci/slurm/stop.sh             # stops the daemons (idempotent)
# Everything lives under $DYNO_SLURM_DIR (default /tmp/dyno-slurm); the
# packages come from Debian: apt-get install -y slurm-wlm munge.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${DYNO_SLURM_DIR:-/tmp/dyno-slurm}"
host="$(hostname -s)"

for tool in munged slurmctld slurmd sinfo scontrol; do
    command -v "$tool" >/dev/null || { echo "start.sh: $tool is not installed (apt-get install -y slurm-wlm munge)" >&2; exit 2; }
done
if [ "$(id -u)" != 0 ]; then echo "start.sh: run as root (the daemons run as root here)" >&2; exit 2; fi

# A cluster left over from an earlier run would hold the ports.
"$here/stop.sh" >/dev/null 2>&1 || true
rm -rf "$dir"
mkdir -p "$dir/state" "$dir/spool" "$dir/log"

# munge: a key readable by the munge user only, and its run/log folders.
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown munge:munge /etc/munge /etc/munge/munge.key
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge
if ! pgrep -u munge -x munged >/dev/null; then
    runuser -u munge -- /usr/sbin/munged
fi
munge -n | unmunge >/dev/null

# The node as slurmd sees it: declaring more CPUs or memory than it
# detects makes slurmctld mark the node invalid.
hw="$(slurmd -C | head -n1 | tr ' ' '\n' | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore|RealMemory)=' | tr '\n' ' ')"
sed -e "s|@HOST@|$host|g" -e "s|@DIR@|$dir|g" -e "s|@NODE_HW@|$hw|" \
    -e "s|@CTLD_PORT@|${DYNO_SLURMCTLD_PORT:-6817}|" -e "s|@SLURMD_PORT@|${DYNO_SLURMD_PORT:-6818}|" \
    "$here/slurm.conf.in" >"$dir/slurm.conf"
export SLURM_CONF="$dir/slurm.conf"

slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"

# Wait for the node to register; a node that comes back DOWN (e.g. state
# left from an earlier slurmd) is resumed.
for _ in $(seq 1 60); do
    state="$(sinfo -h -n "$host" -o '%T' 2>/dev/null | head -n1 || true)"
    case "$state" in
        idle) break ;;
        down*|drain*|fail*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
    esac
    sleep 1
done
if [ "$state" != idle ]; then
    echo "start.sh: node $host is '$state', not idle, after 60 s" >&2
    sinfo -N -l >&2 || true
    tail -n 20 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
    exit 1
fi
echo "SLURM is up: node $host idle; export SLURM_CONF=$SLURM_CONF"
