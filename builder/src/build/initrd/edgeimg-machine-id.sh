#!/bin/sh
# Also creates the directories the root expects on /data (etc/, var/): the data partition
# ships empty, and a wiped or re-formatted one must boot the same way.
#
# The root filesystem is read-only and shared by every device, so /etc/machine-id is an
# empty file in it. Each device keeps its own id on /data (created on the first boot,
# written atomically) and it is bind-mounted over /etc/machine-id before systemd starts
# in the real root. If /data is not there, systemd falls back to a transient id.
set -eu
data=/sysroot/data
mountpoint -q "$data" || { echo "edgeimg: $data not mounted, machine-id stays transient"; exit 0; }
mkdir -p "$data/etc" "$data/var"
id=$(cat "$data/etc/machine-id" 2>/dev/null || true)
case "$id" in
    *[!0-9a-f]*|"") valid=no ;;
    *) [ ${#id} -eq 32 ] && valid=yes || valid=no ;;
esac
if [ "$valid" = no ]; then
    id=$(tr -d '-' </proc/sys/kernel/random/uuid)
    echo "$id" >"$data/etc/machine-id.new"
    sync
    mv "$data/etc/machine-id.new" "$data/etc/machine-id"
    sync
    echo "edgeimg: created machine-id $id"
fi
mount --bind "$data/etc/machine-id" /sysroot/etc/machine-id
