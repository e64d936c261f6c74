# Shared helpers for the system tests (sourced). Each test script:
#   - builds what it needs with the real edgeimg binary,
#   - boots it with tests/qemu-boot,
#   - asserts on the serial log (EDGEIMG-SELFTEST lines) and on files.
# Logs stay in $TEST_WORK/<test>/ ; the path is printed on failure.

set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
EDGEIMG=${EDGEIMG:-$ROOT/target/release/edgeimg}
TEST_WORK=${EDGEIMG_TEST_WORK:-/tmp/edgeimg-tests}
# One fixed timestamp for every test build: reproducibility is asserted against it.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1760000000}
export EDGEIMG_CACHE=${EDGEIMG_CACHE:-$TEST_WORK/cache}

test_name=$(basename "$0" .sh)
T=$TEST_WORK/$test_name
mkdir -p "$T"
checks=0

log() { printf '\033[1m[%s]\033[0m %s\n' "$test_name" "$*"; }
fail() {
    printf '\033[31m[%s] FAIL: %s\033[0m\n' "$test_name" "$*" >&2
    printf '[%s] logs and images are in %s\n' "$test_name" "$T" >&2
    exit 1
}
ok() { checks=$((checks + 1)); printf '  ok  %s\n' "$*"; }

# value KEY LOG: the value of the last "EDGEIMG-SELFTEST KEY=value" line in a serial log.
value() {
    grep -a -o "EDGEIMG-SELFTEST $1=.*" "$2" | tail -n 1 | sed "s/^EDGEIMG-SELFTEST $1=//" | tr -d '\r'
}
# expect KEY VALUE LOG
expect() {
    local got
    got=$(value "$1" "$3")
    [ "$got" = "$2" ] || fail "$1: expected '$2', got '$got' (serial log $3)"
    ok "$1 = $2"
}
# expect_match KEY REGEX LOG
expect_match() {
    local got
    got=$(value "$1" "$3")
    [[ "$got" =~ $2 ]] || fail "$1: '$got' does not match /$2/ (serial log $3)"
    ok "$1 = $got"
}
# must_fail DESCRIPTION EXPECTED_SUBSTRING -- command...: the command fails and says so.
must_fail() {
    local what=$1 needle=$2
    shift 3
    local out rc=0
    out=$("$@" 2>&1) || rc=$?
    [ "$rc" -ne 0 ] || fail "$what: command succeeded: $*"
    grep -qF -- "$needle" <<<"$out" || fail "$what: error does not mention '$needle':"$'\n'"$out"
    ok "$what: $(grep -F -- "$needle" <<<"$out" | head -n 1 | cut -c1-150)"
}
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }
done_ok() { log "passed ($checks checks)"; }

# part_offset DISK LABEL: byte offset of a partition, read with sgdisk.
part_offset() {
    local n
    n=$(sgdisk -p "$1" | awk -v l="$2" '$7 == l {print $1}')
    [ -n "$n" ] || fail "no partition $2 in $1"
    echo $(( $(sgdisk -i "$n" "$1" | awk '/First sector/ {print $3}') * 512 ))
}

# write_slot DISK PAYLOAD_DIR SLOT [ROOTHASH]: put a payload into a slot of a disk image the
# way the updater does (root and verity partitions, kernel and initrd on the boot
# partition), with independent tools, and print the slot's command line. A ROOTHASH
# replaces the payload's in it (to make a slot that fails). The caller arms the slot.
write_slot() {
    local disk=$1 p=$2 slot=$3 badhash=${4:-}
    local esp=$disk@@$(part_offset "$disk" esp)
    dd if="$p/root.img" of="$disk" bs=1M seek="$(( $(part_offset "$disk" "root-$slot") / 1048576 ))" conv=notrunc,sparse status=none
    dd if="$p/root.verity" of="$disk" bs=1M seek="$(( $(part_offset "$disk" "verity-$slot") / 1048576 ))" conv=notrunc,sparse status=none
    MTOOLS_SKIP_CHECK=1 mcopy -o -i "$esp" "$p/linux" "::/edgeimg/slot-$slot/linux"
    MTOOLS_SKIP_CHECK=1 mcopy -o -i "$esp" "$p/initrd" "::/edgeimg/slot-$slot/initrd"
    local cmdline
    cmdline=$(jq -r ".slots.$slot.cmdline" "$p/payload.json")
    if [ -n "$badhash" ]; then
        cmdline=$(sed "s/roothash=[0-9a-f]*/roothash=$badhash/" <<<"$cmdline")
    fi
    echo "$cmdline"
}

# install_slot DISK PAYLOAD_DIR SLOT TRIES [ROOTHASH]: write_slot, armed with a
# systemd-boot entry with TRIES tries and a higher version.
install_slot() {
    local disk=$1 slot=$3 tries=$4 cmdline
    cmdline=$(write_slot "$disk" "$2" "$slot" "${5:-}")
    printf 'title      test slot %s\nsort-key   edgeimg\nversion    2\nlinux      /edgeimg/slot-%s/linux\ninitrd     /edgeimg/slot-%s/initrd\noptions    %s\n' \
        "$slot" "$slot" "$slot" "$cmdline" >"$T/entry.conf"
    MTOOLS_SKIP_CHECK=1 mcopy -o -i "$disk@@$(part_offset "$disk" esp)" "$T/entry.conf" "::/loader/entries/slot-$slot+$tries.conf"
}

# uboot_set DISK VAR=VALUE...: set the U-Boot boot state in both environment copies on the
# boot partition of a disk image, with libubootenv's fw_setenv (what a device runs).
uboot_set() {
    local disk=$1
    shift
    local esp=$disk@@$(part_offset "$disk" esp) f
    for f in uboot.env uboot-redund.env; do
        MTOOLS_SKIP_CHECK=1 mcopy -o -i "$esp" "::/$f" "$T/$f"
        printf '%s 0x0000 0x4000\n' "$T/$f" >"$T/fw_env.config"
        printf '%s\n' "$@" >"$T/fw_env.script"
        fw_setenv -c "$T/fw_env.config" -s "$T/fw_env.script" || fail "fw_setenv on $f failed"
        MTOOLS_SKIP_CHECK=1 mcopy -o -i "$esp" "$T/$f" "::/$f"
    done
}

# uboot_state DISK [COPY]: the edgeimg variables of an environment copy (default uboot.env),
# as fw_printenv reads them, comma-separated.
uboot_state() {
    local esp=$1@@$(part_offset "$1" esp) f=${2:-uboot.env}
    MTOOLS_SKIP_CHECK=1 mcopy -o -i "$esp" "::/$f" "$T/state-$f"
    printf '%s 0x0000 0x4000\n' "$T/state-$f" >"$T/fw_env-read.config"
    fw_printenv -c "$T/fw_env-read.config" | grep -E '^(boot_slot|upgrade_available|bootcount|bootlimit)=' | sort | tr '\n' ','
}

# expect_uboot_state DISK STATE: both environment copies on the disk's boot partition hold
# STATE (as uboot_state prints it).
expect_uboot_state() {
    local f got
    for f in uboot.env uboot-redund.env; do
        got=$(uboot_state "$1" $f)
        [ "$got" = "$2" ] || fail "$f holds $got, want $2"
    done
    ok "fw_printenv: both copies of the boot state hold $2"
}

# install_slot_uboot DISK PAYLOAD_DIR SLOT [ROOTHASH]: write_slot, with the slot's command
# line in its cmdline.env on the boot partition. The caller arms it with uboot_set.
install_slot_uboot() {
    local disk=$1 slot=$3 cmdline
    cmdline=$(write_slot "$disk" "$2" "$slot" "${4:-}")
    printf 'bootargs=%s\n' "$cmdline" >"$T/cmdline.env"
    MTOOLS_SKIP_CHECK=1 mcopy -o -i "$disk@@$(part_offset "$disk" esp)" "$T/cmdline.env" "::/edgeimg/slot-$slot/cmdline.env"
}

# check_aarch64_binaries ROOT: the updater, bash, systemd and fw_setenv in an extracted root
# tree are aarch64 binaries (file(1)).
check_aarch64_binaries() {
    local f
    for f in usr/bin/edgeimg-updater usr/bin/bash usr/lib/systemd/systemd usr/bin/fw_setenv; do
        file -bL "$1/$f" | grep -q "ARM aarch64" || fail "$f is not an aarch64 binary: $(file -bL "$1/$f")"
    done
    ok "file: the updater, bash, systemd and fw_setenv are aarch64 binaries"
}
