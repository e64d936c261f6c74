#!/bin/bash
# ARM, qemu-arm64: an arm64 root filesystem assembled under QEMU user emulation, the updater
# cross-compiled for aarch64, U-Boot with edgeimg's A/B boot script. Checks the image with
# independent tools, boots it under qemu-system-aarch64 -M virt (TCG) with Debian's U-Boot,
# then: a tried slot that never comes up falls back to the committed one, a torn copy of
# the boot state is survived, and a tried slot that passes its health checks is committed
# by the updater through fw_setenv.
source "$(dirname "$0")/../lib.sh"

OUT=$T/out
rm -rf "$OUT" "$T"/vm* "$T"/*.log "$T/rootfs"
updater=${EDGEIMG_UPDATER_ARM64:-$ROOT/target/aarch64-unknown-linux-gnu/device/edgeimg-updater}
[ -x "$updater" ] || fail "no arm64 updater at $updater: cargo build --profile device --target aarch64-unknown-linux-gnu -p edgeimg-updater"
file -b "$updater" | grep -q "ARM aarch64" || fail "$updater is not an aarch64 binary: $(file -b "$updater")"
ok "the device updater is cross-built for aarch64 ($(stat -c %s "$updater") bytes)"

log "building the self-test image for qemu-arm64"
t0=$(now)
"$EDGEIMG" build --board qemu-arm64 --recipe "$ROOT/tests/recipes/selftest.toml" --out "$OUT" --updater "$updater" \
    >"$T/build1.log" 2>&1 || { tail -n 30 "$T/build1.log"; fail "build failed (log $T/build1.log)"; }
ok "built in $(elapsed "$t0") s ($(grep -o 'step="rootfs".*' "$T/build1.log" | tail -n 1 | cut -c1-60))"
B=$OUT/qemu-arm64/selftest/1.0.0
for f in disk.img disk.img.zst disk.img.bmap report.json SHA256SUMS payload/payload.json payload/root.img payload/root.verity payload/linux payload/initrd; do
    [ -s "$B/$f" ] || fail "missing output $f"
done
(cd "$B" && sha256sum --quiet -c SHA256SUMS) || fail "SHA256SUMS does not match the outputs"
ok "all outputs present, SHA256SUMS verifies"

# Independent tools agree with what we wrote.
sgdisk -v "$B/disk.img" | grep -q "No problems found" || fail "sgdisk finds problems in the GPT"
for l in esp root-a verity-a root-b verity-b data; do
    sgdisk -p "$B/disk.img" | grep -qw "$l" || fail "partition $l missing"
done
n=$(sgdisk -p "$B/disk.img" | awk '$7 == "root-a" {print $1}')
sgdisk -i "$n" "$B/disk.img" | grep -q "B921B045-1DF0-41C3-AF44-4C6F280D3FAE" || fail "root-a is not typed as an arm64 root partition"
ok "sgdisk: GPT valid; esp, root-a (arm64 root type), verity-a, root-b, verity-b, data"
roothash=$(jq -r .roothash "$B/payload/payload.json")
veritysetup verify "$B/payload/root.img" "$B/payload/root.verity" "$roothash" || fail "veritysetup verify rejects the payload"
ok "veritysetup verify accepts root.img with root hash ${roothash:0:16}…"
fsck.erofs --extract="$T/rootfs" "$B/payload/root.img" >/dev/null 2>&1 || fail "fsck.erofs cannot extract the root image"
check_aarch64_binaries "$T/rootfs"
grep -q "^/efi/uboot.env *0x0000 *0x4000" "$T/rootfs/etc/fw_env.config" || fail "fw_env.config: $(cat "$T/rootfs/etc/fw_env.config")"
grep -q "^/efi/uboot-redund.env" "$T/rootfs/usr/lib/edgeimg/fw_env.redund.config" || fail "no second fw_env config"
grep -q '^backend = "u-boot"' "$T/rootfs/usr/lib/edgeimg/updater.toml" || fail "the updater is not set up for U-Boot"
ok "fw_env.config names both copies of the boot state; the updater uses the u-boot backend"
rm -rf "$T/rootfs"

esp=$B/disk.img@@$(part_offset "$B/disk.img" esp)
MTOOLS_SKIP_CHECK=1 mcopy -o -i "$esp" ::/boot.scr "$T/boot.scr"
mkimage -l "$T/boot.scr" | grep -q "Script" || fail "boot.scr is not a U-Boot script image: $(mkimage -l "$T/boot.scr")"
MTOOLS_SKIP_CHECK=1 mcopy -o -i "$esp" ::/edgeimg/slot-a/linux "$T/linux"
file -b "$T/linux" | grep -q "Linux kernel ARM64 boot executable Image" || fail "slot A's kernel: $(file -b "$T/linux")"
rm -f "$T/linux"
ok "boot partition: boot.scr is a U-Boot script (mkimage -l), slot A's kernel an ARM64 Image"
expect_uboot_state "$B/disk.img" "boot_slot=a,bootcount=0,bootlimit=1,upgrade_available=0,"
MTOOLS_SKIP_CHECK=1 mcopy -o -i "$esp" ::/edgeimg/slot-a/cmdline.env "$T/cmdline.env"
grep -q "^bootargs=.* roothash=$roothash .*edgeimg.slot=a" "$T/cmdline.env" || fail "slot A's cmdline.env: $(cat "$T/cmdline.env")"
ok "slot A's command line carries its root hash"

disk=$T/disk.img
cp --sparse=always "$B/disk.img" "$disk"
boot() { # boot NAME [qemu-boot options]: power on until the self-test powers off
    local name=$1
    shift
    t0=$(now)
    "$ROOT/tests/qemu-boot" --arch arm64 --in-place --poweroff --timeout 900 --log "$T/$name.log" "$@" "$disk" \
        || fail "$name: QEMU failed or timed out (serial log $T/$name.log)"
    grep -aq "EDGEIMG-SELFTEST end" "$T/$name.log" || fail "$name did not finish the self-test (serial log $T/$name.log)"
    ok "$name: booted to multi-user and powered off in $(elapsed "$t0") s"
}

log "boot 1: slot B on trial with a root hash that does not match: it fails, the script falls back to A"
install_slot_uboot "$disk" "$B/payload" b 0000000000000000000000000000000000000000000000000000000000000000
uboot_set "$disk" boot_slot=b upgrade_available=1 bootcount=0
boot boot1 --reboot
L=$T/boot1.log
grep -aq "edgeimg: trying slot b (try 1 of 1)" "$L" || fail "slot B was not tried ($L)"
grep -aq "slot b used its 1 tries without a commit: falling back" "$L" || fail "no fallback after the failed try ($L)"
grep -aq "Kernel panic - not syncing: dm-verity device corrupted" "$L" || fail "slot B's wrong root hash did not stop its boot ($L)"
[ "$(grep -ac '^U-Boot 20' "$L")" = 2 ] || fail "expected two power-ups (the try, the fallback) in $L"
grep -aq "EDGEIMG-SELFTEST slot=b" "$L" && fail "slot B reached userspace ($L)"
ok "slot B was tried once and panicked (dm-verity); the second power-up fell back to A"
# The fallback boot is a plain boot of the image's slot A: check it as one.
grep -aq "edgeimg: state from uboot.env: boot_slot=b upgrade_available=1 bootcount=1 " "$L" || fail "the second power-up did not read the try the first had counted ($L)"
ok "the second power-up read the try count the first had written to uboot.env"
expect arch aarch64 "$L"
expect slot a "$L"
expect root-fstype erofs "$L"
expect root-writable no "$L"
expect verity-status V "$L"
expect verity-roothash "$roothash" "$L"
expect data-writable yes "$L"
expect failed-units "" "$L"
expect uboot-state "boot_slot=a,bootcount=0,bootlimit=1,upgrade_available=0," "$L"
expect_match updater-status 'slot A' "$L"
expect_uboot_state "$disk" "boot_slot=a,bootcount=0,bootlimit=1,upgrade_available=0,"

log "boot 2: slot B on trial with the right image, the first copy of the state torn: health passes, the updater commits"
install_slot_uboot "$disk" "$B/payload" b
uboot_set "$disk" boot_slot=b upgrade_available=1 bootcount=0
# A power cut in the middle of writing uboot.env: its CRC fails; the second copy holds.
head -c 16384 /dev/urandom >"$T/torn.env"
MTOOLS_SKIP_CHECK=1 mcopy -o -i "$disk@@$(part_offset "$disk" esp)" "$T/torn.env" ::/uboot.env
boot boot2
L=$T/boot2.log
grep -aq "edgeimg: state from uboot-redund.env: boot_slot=b upgrade_available=1" "$L" || fail "the script did not fall back to the second copy ($L)"
ok "the torn uboot.env was skipped; the state came from uboot-redund.env"
grep -aq "edgeimg: trying slot b (try 1 of 1)" "$L" || fail "slot B was not tried ($L)"
expect slot b "$L"
expect verity-roothash "$roothash" "$L"
expect uboot-state "boot_slot=b,bootcount=0,bootlimit=1,upgrade_available=0," "$L"
expect updater-units "active,active," "$L"
expect_uboot_state "$disk" "boot_slot=b,bootcount=0,bootlimit=1,upgrade_available=0,"
ok "the updater committed slot B through fw_setenv (the torn copy rewritten)"
done_ok
