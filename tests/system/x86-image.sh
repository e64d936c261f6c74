#!/bin/bash
# Builder, x86: build the self-test image for qemu-x86_64, boot it under OVMF/TCG and check
# the read-only verity root, /data, growing, persistence across power cycles, that one
# flipped byte in the root fails the boot with a verity error, reproducibility, and the
# build's bad-input errors.
source "$(dirname "$0")/../lib.sh"

OUT=$T/out
rm -rf "$OUT" "$T"/vm* "$T"/*.log
log "building the self-test image"
t0=$(now)
"$EDGEIMG" build --board qemu-x86_64 --recipe "$ROOT/tests/recipes/selftest.toml" --out "$OUT" >"$T/build1.log" 2>&1 \
    || { tail -n 30 "$T/build1.log"; fail "build failed (log $T/build1.log)"; }
ok "built in $(elapsed "$t0") s"
B=$OUT/qemu-x86_64/selftest/1.0.0
for f in disk.img disk.img.zst disk.img.bmap report.json sbom.spdx.json SHA256SUMS payload/payload.json payload/root.img payload/root.verity payload/linux payload/initrd; do
    [ -s "$B/$f" ] || fail "missing output $f"
done
ok "all outputs present"
(cd "$B" && sha256sum --quiet -c SHA256SUMS) || fail "SHA256SUMS does not match the outputs"
ok "SHA256SUMS verifies"
# A release is published as it is, often to a web server running as another user.
unreadable=$(find "$B" -type f ! -perm -0444 -printf '%P (%m) ')
[ -z "$unreadable" ] || fail "outputs only their owner may read: $unreadable"
ok "every output is readable by all (the payload is published as it is)"
ls -a "$OUT/qemu-x86_64/selftest" | grep -q partial && fail "a .partial directory was left behind"
cost=$(jq -e '.sizes | select(.root_image_packed_layout_bytes > 0 and .root_image_packed_layout_bytes <= .root_image_bytes) | .delta_friendly_layout_cost_bytes' "$B/report.json") \
    || fail "report.json does not say what the delta-friendly layout costs: $(jq -c .sizes "$B/report.json")"
ls "$B/work" "$B"/*.packed-layout.img 2>/dev/null && fail "the layout measurement left files behind"
ok "report.json: the delta-friendly layout costs $cost bytes over the packed one"

# Independent tools agree with what we wrote.
sgdisk -v "$B/disk.img" | grep -q "No problems found" || fail "sgdisk finds problems in the GPT"
ok "sgdisk: GPT valid"
for l in esp root-a verity-a root-b verity-b data; do
    sgdisk -p "$B/disk.img" | grep -qw "$l" || fail "partition $l missing"
done
ok "partitions esp root-a verity-a root-b verity-b data"
roothash=$(jq -r .roothash "$B/payload/payload.json")
veritysetup verify "$B/payload/root.img" "$B/payload/root.verity" "$roothash" || fail "veritysetup verify rejects the payload"
ok "veritysetup verify accepts root.img with root hash ${roothash:0:16}…"
fsck.erofs "$B/payload/root.img" >/dev/null || fail "fsck.erofs rejects the root image"
ok "fsck.erofs: root image consistent"
zstd -t -q "$B/disk.img.zst" || fail "disk.img.zst is corrupt"
cmp <(zstd -dc "$B/disk.img.zst") "$B/disk.img" || fail "disk.img.zst does not decompress to disk.img"
ok "disk.img.zst decompresses to disk.img"
bmaptool copy --bmap "$B/disk.img.bmap" "$B/disk.img" "$T/bmap-copy.img" >/dev/null 2>&1 || fail "bmaptool copy with our bmap failed"
cmp "$T/bmap-copy.img" "$B/disk.img" || fail "bmaptool copy result differs"
rm -f "$T/bmap-copy.img"
ok "bmaptool copy with disk.img.bmap reproduces disk.img"
jq -e '.spdxVersion == "SPDX-2.3" and (.packages | length) > 100' "$B/sbom.spdx.json" >/dev/null || fail "SBOM is not SPDX 2.3 with packages"
jq -e '[.packages[].name] | index("systemd") != null' "$B/sbom.spdx.json" >/dev/null || fail "SBOM lacks systemd"
ok "SBOM: SPDX 2.3, $(jq '.packages | length' "$B/sbom.spdx.json") packages"
"$EDGEIMG" inspect "$B" >"$T/inspect.txt"
grep -q "slot-a.conf.*slot a .*good" "$T/inspect.txt" || fail "inspect does not show slot A's entry: $(cat "$T/inspect.txt")"
ok "edgeimg inspect shows the blessed slot A entry"

log "boot 1: first boot on a disk grown to 4 GiB"
t0=$(now)
"$ROOT/tests/qemu-boot" --state "$T/vm" --grow 4G --poweroff --timeout 600 --log "$T/boot1.log" "$B/disk.img" || fail "boot 1: QEMU failed or timed out (serial log $T/boot1.log)"
grep -aq "EDGEIMG-SELFTEST end" "$T/boot1.log" || fail "boot 1 did not finish the self-test (serial log $T/boot1.log)"
ok "booted to multi-user and powered off in $(elapsed "$t0") s"
L=$T/boot1.log
expect root-source /dev/mapper/root "$L"
expect root-fstype erofs "$L"
expect_match root-options '^ro,' "$L"
expect root-writable no "$L"
expect verity-target verity "$L"
expect verity-status V "$L"
expect verity-roothash "$roothash" "$L"
expect data-fstype ext4 "$L"
expect_match data-options '^rw,' "$L"
expect data-writable yes "$L"
expect tmp-writable yes "$L"
expect_match var-source '\[/var\]$' "$L"
expect slot a "$L"
expect boot-number 1 "$L"
expect hostname selftest "$L"
expect journal-persistent yes "$L"
expect ssh-active active "$L"
expect ssh-hostkey yes "$L"
expect admin-keys 1 "$L"
expect failed-units "" "$L"
expect os-image-version 1.0.0 "$L"
expect updater-units "active,active," "$L"
expect_match updater-status "running selftest 1.0.0 in slot A\|" "$L"
# On a 4 GiB disk, /data can take everything after its start except the backup GPT.
data_start=$(( $(sgdisk -i 6 "$B/disk.img" | awk '/First sector/ {print $3}') * 512 ))
want=$(( 4 * 1024 * 1024 * 1024 - data_start - 1024 * 1024 ))
part=$(value data-part-bytes "$L")
[ "$part" -ge "$want" ] || fail "data partition did not grow to the end: $part bytes, want >= $want"
ok "data partition grew from $(( $(sgdisk -i 6 "$B/disk.img" | awk '/Partition size/ {print $3}') / 2048 )) to $((part >> 20)) MiB (end of the 4 GiB disk)"
fsb=$(value data-fs-bytes "$L")
[ "$fsb" -ge $(( want * 9 / 10 )) ] || fail "data filesystem did not grow: $fsb bytes"
ok "data filesystem grew to $((fsb >> 20)) MiB"
id1=$(value machine-id "$L")

log "boot 2: power cycle, state must persist"
t0=$(now)
"$ROOT/tests/qemu-boot" --state "$T/vm" --poweroff --timeout 600 --log "$T/boot2.log" "$B/disk.img" || fail "boot 2 failed (serial log $T/boot2.log)"
ok "booted again in $(elapsed "$t0") s"
L=$T/boot2.log
expect boot-number 2 "$L"
expect machine-id "$id1" "$L"
expect journal-boots 2 "$L"
expect failed-units "" "$L"

log "boot 3: one flipped byte in root A must stop the boot with a verity error"
cp --sparse=always "$B/disk.img" "$T/corrupt.img"
root_off=$(( $(sgdisk -i 2 "$T/corrupt.img" | awk '/First sector/ {print $3}') * 512 ))
# dump.erofs -e: "0:  0..  12197 |  12197 :  132460544.. 132464640 |  4096" (physical start is field 7)
phys=$(dump.erofs --path=/usr/lib/systemd/systemd -e "$B/payload/root.img" | awk '$1 == "0:" {print $7; exit}' | tr -d '.')
[ -n "$phys" ] || fail "dump.erofs did not locate /usr/lib/systemd/systemd"
off=$((root_off + phys + 100))
printf '\x00' | dd of="$T/corrupt.img" bs=1 seek=$((off)) conv=notrunc status=none
old=$(dd if="$B/disk.img" bs=1 skip=$off count=1 status=none | od -An -tx1 | tr -d ' ')
[ "$old" != "00" ] || { printf '\x01' | dd of="$T/corrupt.img" bs=1 seek=$((off)) conv=notrunc status=none; }
cmp -s "$B/disk.img" "$T/corrupt.img" && fail "corruption did not change the image"
ok "flipped the byte at disk offset $off (first block of /usr/lib/systemd/systemd)"
"$ROOT/tests/qemu-boot" --poweroff --timeout 400 --log "$T/boot3.log" "$T/corrupt.img" || true
grep -aq "EDGEIMG-SELFTEST end" "$T/boot3.log" && fail "the corrupted image booted to the self-test"
want_block=$(( (phys + 100) / 4096 ))
grep -aE -q "verity: .*: data block $want_block is corrupted" "$T/boot3.log" || fail "no dm-verity report of data block $want_block (serial log $T/boot3.log)"
ok "dm-verity: $(grep -aE -o 'device-mapper: verity: .*is corrupted' "$T/boot3.log" | head -n 1)"
grep -aq "Kernel panic" "$T/boot3.log" || fail "no kernel panic after the corruption (serial log $T/boot3.log)"
ok "kernel panicked (panic-on-corruption), so the boot loader can fall back"
rm -f "$T/corrupt.img"

log "boot 4: slot B on trial with a wrong root hash must fall back to A by itself"
cp --sparse=always "$B/disk.img" "$T/fallback.img"
install_slot "$T/fallback.img" "$B/payload" b 1 "$(printf '0%.0s' {1..64})"
"$EDGEIMG" inspect "$T/fallback.img" | grep -q "slot-b+1.conf .*on trial, 1 tries left" || fail "slot B entry not installed"
t0=$(now)
"$ROOT/tests/qemu-boot" --reboot --poweroff --timeout 900 --in-place --log "$T/boot4.log" "$T/fallback.img" || fail "fallback boot failed (serial log $T/boot4.log)"
grep -aq "edgeimg.slot=b" "$T/boot4.log" || fail "slot B was never tried (serial log $T/boot4.log)"
ok "the loader tried slot B first"
grep -aqE "verity.*(is corrupted|root hash)|Kernel panic" "$T/boot4.log" || fail "slot B did not fail as expected"
ok "slot B failed its verity check"
expect slot a "$T/boot4.log"
ok "fell back to slot A in the same power-up ($(elapsed "$t0") s)"
"$EDGEIMG" inspect "$T/fallback.img" >"$T/inspect4.txt"
grep -q "slot-b+0-1.conf .*failed (no tries left)" "$T/inspect4.txt" || fail "B's entry should be out of tries: $(cat "$T/inspect4.txt")"
ok "slot B's entry is now slot-b+0-1.conf (no tries left, sorts last)"
rm -f "$T/fallback.img"

# A trial slot with the right root hash that passes its health checks and is committed is
# covered end to end by tests/system/e2e.sh (the updater writes, arms and commits it).

log "reproducibility: a second build from scratch (no cached rootfs) gives the same disk.img"
t0=$(now)
"$EDGEIMG" build --board qemu-x86_64 --recipe "$ROOT/tests/recipes/selftest.toml" --out "$T/out2" --no-cache >"$T/build2.log" 2>&1 \
    || { tail -n 30 "$T/build2.log"; fail "second build failed"; }
a=$(sha256sum <"$B/disk.img" | cut -c1-64)
b=$(sha256sum <"$T/out2/qemu-x86_64/selftest/1.0.0/disk.img" | cut -c1-64)
[ "$a" = "$b" ] || {
    diff <(jq -S 'del(.timings_seconds)' "$B/report.json") <(jq -S 'del(.timings_seconds)' "$T/out2/qemu-x86_64/selftest/1.0.0/report.json") | head -n 40
    fail "disk.img differs between two builds: $a vs $b"
}
ok "disk.img sha256 $a both times (rebuild $(elapsed "$t0") s)"
rm -rf "$T/out2"

log "bad input: clear errors, no output left behind"
bad=$T/bad && rm -rf "$bad" && mkdir -p "$bad"
sed 's/^root_mib = .*/root_mib = 96/; s/^verity_mib = .*/verity_mib = 2/' "$ROOT/boards/qemu-x86_64.toml" >"$bad/tiny.toml"
must_fail "rootfs larger than the slot" "disk.root_mib" -- "$EDGEIMG" build --board "$bad/tiny.toml" --recipe "$ROOT/tests/recipes/selftest.toml" --out "$bad/out"
sed 's|^\[debian\]|[debian]\nmirror = "http://127.0.0.1:9/debian"|' "$ROOT/tests/recipes/selftest.toml" >"$bad/mirror.toml"
cp -r "$ROOT/tests/recipes/selftest-overlay" "$bad/"
must_fail "unreachable mirror" "cannot reach http://127.0.0.1:9/debian/dists/trixie/InRelease" -- "$EDGEIMG" build --board qemu-x86_64 --recipe "$bad/mirror.toml" --out "$bad/out"
mkdir -p "$bad/bin"
for t in mmdebstrap veritysetup mkfs.vfat mcopy mmd mkfs.ext4 dpkg-query systemctl; do ln -sf "$(PATH=$PATH:/usr/sbin:/sbin command -v "$t")" "$bad/bin/$t"; done
must_fail "missing host tool" "apt-get install -y erofs-utils" -- env EDGEIMG_TOOL_PATH="$bad/bin" "$EDGEIMG" build --board qemu-x86_64 --recipe "$ROOT/tests/recipes/selftest.toml" --out "$bad/out"
[ -z "$(find "$bad/out" -mindepth 3 2>/dev/null)" ] || fail "a failed build left files: $(find "$bad/out" -mindepth 3 | head)"
ok "no output directories left by the failed builds"
done_ok
