#!/bin/bash
# ARM, Raspberry Pi 4: `edgeimg build --board rpi4 --recipe recipes/k3s-edge.toml`, with K3s
# and the images it pre-pulls served on 127.0.0.1 (the K3s stand-in from a mirror, a
# multi-arch image from a docker-registry) and the self-test unit added. Checked with
# independent tools: partition table, the boot partition's firmware, device trees, U-Boot,
# boot script and boot state, the slot command line against veritysetup, arm64 binaries,
# the arm64 images (skopeo; containerd runs one under QEMU user emulation). Then slot A's
# kernel, device tree and initrd from the boot partition boot the root slot to userspace
# under QEMU's raspi4b machine. QEMU cannot run the Pi firmware, so the firmware and U-Boot
# stages are checked structurally only; the A/B script itself is the one arm64-image.sh
# boots. The device tree gets a test-only patch for what QEMU's raspi4b lacks. Then, from
# the same cached trees, the tryboot layout and the Jetson (L4T) layout, whose slot A boots
# under QEMU virt from what its extlinux.conf names.
source "$(dirname "$0")/../lib.sh"
source "$ROOT/tests/lib-images.sh"
trap 'stop_services; [ -n "${CTRD_PID:-}" ] && kill "$CTRD_PID" 2>/dev/null; true' EXIT

OUT=$T/out
rm -rf "$OUT" "$T"/*.log "$T/rootfs" "$T/boot" "$T/recipe" "$T/registry" "$T/archive" "$T/ctrd"
updater=${EDGEIMG_UPDATER_ARM64:-$ROOT/target/aarch64-unknown-linux-gnu/device/edgeimg-updater}
[ -x "$updater" ] || fail "no arm64 updater at $updater: cargo build --profile device --target aarch64-unknown-linux-gnu -p edgeimg-updater"

log "inputs on 127.0.0.1: registry, test images, K3s stand-in mirror"
start_registry "$T/registry"
make_test_images "$T/inputs"
start_mirror "$T/inputs/mirror"
k3s_pins

# recipes/k3s-edge.toml as shipped, with its K3s pins pointed at the mirror's stand-in
# (GitHub is out of reach here), one pre-pulled image, and the self-test unit.
R=$T/recipe
mkdir -p "$R"
cp -r "$ROOT/recipes/k3s-edge" "$ROOT/tests/recipes/selftest-overlay" "$R/"
sed -e "s|^version = \"$K3S_VERSION\"$|&\nurl = \"http://127.0.0.1:$MIRROR_PORT/{version}/{asset}\"|" \
    -e "s|^sha256 = .*|sha256 = { amd64 = \"$K3S_SHA256\", arm64 = \"$K3S_SHA256\" }|" \
    -e "s|^airgap_sha256 = .*|airgap_sha256 = { amd64 = \"$AIRGAP_AMD64\", arm64 = \"$AIRGAP_ARM64\" }|" \
    -e "s|^images = \[\]$|images = [\"$REGISTRY/edgeimg/hello:1.0@$HELLO_DIGEST\"]|" \
    "$ROOT/recipes/k3s-edge.toml" >"$R/k3s-edge.toml"
printf '\n[rootfs]\noverlays = ["selftest-overlay"]\n\n[services]\nenable = ["edgeimg-selftest.service"]\n' >>"$R/k3s-edge.toml"
[ "$(grep -c "127.0.0.1" "$R/k3s-edge.toml")" = 2 ] && grep -q "$K3S_SHA256" "$R/k3s-edge.toml" && grep -q "$AIRGAP_ARM64" "$R/k3s-edge.toml" \
    || fail "recipes/k3s-edge.toml changed: the test cannot point it at the local mirror ($R/k3s-edge.toml)"
ok "recipes/k3s-edge.toml pointed at the mirror and registry on 127.0.0.1"

log "edgeimg build --board rpi4 --recipe recipes/k3s-edge.toml"
t0=$(now)
"$EDGEIMG" build --board rpi4 --recipe "$R/k3s-edge.toml" --out "$OUT" --updater "$updater" \
    >"$T/build.log" 2>&1 || { tail -n 30 "$T/build.log"; fail "build failed (log $T/build.log)"; }
B=$OUT/rpi4/k3s-edge/1.0.0
ok "built in $(elapsed "$t0") s ($(jq -r '[(if .debian.rootfs_cached then "base tree cached" else "base tree built in \(.timings_seconds.rootfs) s" end),
    (if .debian.board_layer_cached then "board layer cached" else "board layer built in \(.timings_seconds["board-layer"]) s" end)] | join(", ")' "$B/report.json"))"
(cd "$B" && sha256sum --quiet -c SHA256SUMS) || fail "SHA256SUMS does not match the outputs"
jq -e '.arch == "arm64" and .k3s.version == "v1.34.2+k3s1" and (.debian.board_packages | index("raspi-firmware") != null)' "$B/report.json" >/dev/null \
    || fail "report.json: $(jq -c '{arch, k3s: .k3s.version, board_packages: .debian.board_packages}' "$B/report.json")"
ok "report: arm64, K3s v1.34.2+k3s1, the Pi firmware packages in the board layer"
# rpi4 and qemu-arm64 share the base tree; their initrds come out the same (Debian's generic
# one holds both boards' drivers), so the layer takes the base tree's instead of running
# dracut under emulation again.
layer_done=$(grep -o 'done .*step="board-layer"' "$T/build.log" | tail -n 1)
case "$layer_done" in
*"done cached"* | *"built, with the base tree's generic initrd"*) ;;
*) fail "the rpi4 layer made its own initrd: $layer_done. Debian's kernel boards no longer share one (a board package or driver changed?); each arm64 board now runs dracut under emulation, about two minutes" ;;
esac

disk=$B/disk.img
sgdisk -v "$disk" | grep -q "No problems found" || fail "sgdisk finds problems in the GPT"
for l in esp root-a verity-a root-b verity-b data; do
    sgdisk -p "$disk" | grep -qw "$l" || fail "partition $l missing"
done
esp_mib=$(sgdisk -p "$disk" | awk '$7 == "esp" {print $4}')
awk -v m="$esp_mib" 'BEGIN {exit !(m >= 256)}' || fail "the boot partition is $esp_mib MiB (< 256)"
ok "sgdisk: GPT valid, 6 partitions, boot partition $esp_mib MiB"

# The boot partition, copied out with mtools.
esp=$disk@@$(part_offset "$disk" esp)
mkdir -p "$T/boot"
MTOOLS_SKIP_CHECK=1 mcopy -s -n -i "$esp" '::/*' "$T/boot/" || fail "cannot copy the boot partition out"
for f in config.txt start4.elf fixup4.dat u-boot.bin bcm2711-rpi-4-b.dtb bcm2711-rpi-400.dtb boot.scr uboot.env uboot-redund.env \
    edgeimg/slot-a/linux edgeimg/slot-a/initrd edgeimg/slot-a/cmdline.env; do
    [ -s "$T/boot/$f" ] || fail "boot partition: no $f ($(cd "$T/boot" && find . -type f | sort | tr '\n' ' '))"
done
ok "boot partition: firmware, U-Boot, device trees, boot script, both state copies, slot A's kernel, initrd, command line"
initrd_sum=$(sha256sum <"$T/boot/edgeimg/slot-a/initrd" | cut -d' ' -f1)
generic=$(sha256sum "$EDGEIMG_CACHE"/initrd/*/initrd.img-* 2>/dev/null | awk -v s="$initrd_sum" '$1 == s {print $2}' | head -n 1)
[ -n "$generic" ] || fail "slot A's initrd is none of the cached generic initrds ($EDGEIMG_CACHE/initrd): $layer_done"
ok "slot A's initrd is the base tree's generic one ($generic)"
grep -qx "kernel=u-boot.bin" "$T/boot/config.txt" && grep -qx "arm_64bit=1" "$T/boot/config.txt" \
    || fail "config.txt does not start U-Boot in 64-bit mode: $(cat "$T/boot/config.txt")"
ok "config.txt: the firmware starts U-Boot in 64-bit mode"
strings "$T/boot/start4.elf" >"$T/start4.strings"
strings "$T/boot/u-boot.bin" >"$T/u-boot.strings"
grep -q "tryboot" "$T/start4.strings" || fail "start4.elf knows no tryboot (not the Pi 4 firmware?)"
ok "start4.elf is the Raspberry Pi 4 firmware (knows tryboot)"
grep -q "U-Boot 20[0-9][0-9]\." "$T/u-boot.strings" || fail "u-boot.bin is not U-Boot"
grep -q "brcm,bcm2711" "$T/u-boot.strings" || fail "u-boot.bin does not know the BCM2711 (not built for the Pi 4?)"
ok "u-boot.bin: $(grep -o -m1 'U-Boot 20[0-9][0-9]\.[0-9][0-9][^ ]*' "$T/u-boot.strings"), knows the BCM2711"
dtc -I dtb -O dts -o "$T/pi4.dts" "$T/boot/bcm2711-rpi-4-b.dtb" 2>/dev/null || fail "dtc cannot read bcm2711-rpi-4-b.dtb"
grep -q 'compatible = "raspberrypi,4-model-b' "$T/pi4.dts" || fail "bcm2711-rpi-4-b.dtb is not the Pi 4's device tree"
ok "dtc: bcm2711-rpi-4-b.dtb is the Pi 4 Model B's device tree"
mkimage -l "$T/boot/boot.scr" | grep -q "Script" || fail "boot.scr is not a U-Boot script"
grep -aq "fatwrite" "$T/boot/boot.scr" || fail "boot.scr does not hold the A/B script"
ok "boot.scr: a U-Boot script image (mkimage -l) with the A/B script"
expect_uboot_state "$disk" "boot_slot=a,bootcount=0,bootlimit=1,upgrade_available=0,"
file -b "$T/boot/edgeimg/slot-a/linux" | grep -q "Linux kernel ARM64 boot executable Image" || fail "slot A's kernel: $(file -b "$T/boot/edgeimg/slot-a/linux")"
ok "slot A's kernel is an ARM64 Image"

# The slot's command line against the partitions themselves.
cmdline=$(sed -n 's/^bootargs=//p' "$T/boot/edgeimg/slot-a/cmdline.env")
roothash=$(tr ' ' '\n' <<<"$cmdline" | sed -n 's/^roothash=//p')
[ ${#roothash} = 64 ] || fail "slot A's command line has no root hash: $cmdline"
part() { # part LABEL FILE: copy a partition out
    local n size
    n=$(sgdisk -p "$disk" | awk -v l="$1" '$7 == l {print $1}')
    size=$(sgdisk -i "$n" "$disk" | awk '/Partition size/ {print $3}')
    dd if="$disk" of="$2" bs=512 skip=$(( $(part_offset "$disk" "$1") / 512 )) count="$size" status=none
}
part root-a "$T/root-a.img"
part verity-a "$T/verity-a.img"
veritysetup verify "$T/root-a.img" "$T/verity-a.img" "$roothash" || fail "veritysetup rejects root-a with slot A's root hash"
ok "veritysetup verify accepts partition root-a with the root hash in slot A's command line"
fsck.erofs --extract="$T/rootfs" "$T/root-a.img" >/dev/null 2>&1 || fail "fsck.erofs cannot extract root-a"
check_aarch64_binaries "$T/rootfs"

# K3s for arm64 in root-a: the pinned binary, the arm64 airgap archive, the pre-pulled image.
I=$T/rootfs/usr/lib/edgeimg/k3s/images
cmp -s "$T/rootfs/usr/local/bin/k3s" "$ROOT/tests/k3s-standin/k3s" || fail "/usr/local/bin/k3s is not the pinned binary"
ls "$I" >"$T/images.list"
grep -q '^k3s-airgap-images-arm64' "$T/images.list" && ! grep -q 'amd64' "$T/images.list" || fail "images directory: $(tr '\n' ' ' <"$T/images.list")"
cmp -s "$I"/k3s-airgap-images-arm64* "$T/inputs/mirror/$K3S_VERSION/k3s-airgap-images-arm64.tar.zst" || fail "the airgap archive is not the pinned arm64 one"
ok "K3s: the pinned binary and the arm64 airgap archive (byte for byte), nothing for amd64"
A=$(ls "$I"/edgeimg-images-*.tar)
ref=$REGISTRY/edgeimg/hello:1.0
arch=$(skopeo --override-arch arm64 inspect "oci-archive:$A:$ref" | jq -r '.Os + "/" + .Architecture') || fail "skopeo cannot read $ref for arm64 from $A"
[ "$arch" = linux/arm64 ] || fail "$ref in the archive is $arch, want linux/arm64"
skopeo --override-arch amd64 inspect "oci-archive:$A:$ref" >/dev/null 2>&1 && fail "the archive also holds the amd64 image (only arm64 is pulled for rpi4)"
ok "skopeo: $ref in the images archive is linux/arm64; the amd64 image was not pulled"
mkdir -p "$T/ctrd"
containerd --root "$T/ctrd/root" --state "$T/ctrd/state" --address "$T/ctrd/sock" >"$T/ctrd/log" 2>&1 &
CTRD_PID=$!
for _ in $(seq 60); do ctr --address "$T/ctrd/sock" version >/dev/null 2>&1 && break; sleep 0.5; done
ctr --address "$T/ctrd/sock" -n k8s.io images import --platform linux/arm64 "$A" >"$T/ctrd/import.log" 2>&1 \
    || fail "containerd cannot import the archive for linux/arm64 ($T/ctrd/import.log)"
got=$(ctr --address "$T/ctrd/sock" -n k8s.io images ls 2>/dev/null | awk -v r="$ref" '$1 == r {print $3}')
[ "$got" = "$HELLO_DIGEST" ] || fail "containerd imported $ref as '$got', want $HELLO_DIGEST"
out=$(ctr --address "$T/ctrd/sock" -n k8s.io run --rm --platform linux/arm64 "$ref" edgeimg-rpi4-test /bin/cat /hello.txt 2>&1) \
    || fail "containerd cannot run the arm64 image under QEMU user emulation: $out"
[ "$out" = "hello from the edgeimg test image (arm64)" ] || fail "unexpected output: $out"
kill "$CTRD_PID"; wait "$CTRD_PID" 2>/dev/null || true; CTRD_PID=
ok "containerd imports it with the pinned index digest and runs it (arm64, under QEMU user emulation): \"$out\""
rm -rf "$T/rootfs" "$T/root-a.img" "$T/verity-a.img" "$T/ctrd"

log "boot: slot A's kernel, device tree and initrd on QEMU raspi4b"
# Test-only device tree patch for what QEMU's BCM2711 lacks: the PCIe root complex, GENET,
# the HDMI/AON block (its interrupt controller, clocks and I2C buses fault when probed),
# the V3D GPU, and the firmware GPIO expander that the SD card regulators and the Wi-Fi
# power sequence hang on (their drivers would wait for it forever). The card then appears
# on the Arasan controller (mmc@7e300000), as QEMU wires it.
cp "$T/boot/bcm2711-rpi-4-b.dtb" "$T/pi4-qemu.dtb"
for node in /scb/pcie@7d500000 /scb/ethernet@7d580000 /soc/clock@7ef00000 /soc/interrupt-controller@7ef00100 \
    /soc/hdmi@7ef00700 /soc/i2c@7ef04500 /soc/hdmi@7ef05700 /soc/i2c@7ef09500 /scb/gpu@7ec00000; do
    fdtput -t s "$T/pi4-qemu.dtb" "$node" status disabled || fail "fdtput cannot disable $node"
done
fdtput -d "$T/pi4-qemu.dtb" /emmc2bus/mmc@7e340000 vqmmc-supply
fdtput -d "$T/pi4-qemu.dtb" /emmc2bus/mmc@7e340000 vmmc-supply
fdtput -d "$T/pi4-qemu.dtb" /soc/mmc@7e300000 mmc-pwrseq
fdtput -r "$T/pi4-qemu.dtb" /soc/mmc@7e300000/wifi@1
# The SD card must be a power of two in size.
cp --sparse=always "$disk" "$T/sd.img"
size=$(stat -c %s "$T/sd.img")
p2=1
while [ $p2 -lt "$size" ]; do p2=$((p2 * 2)); done
truncate -s $p2 "$T/sd.img"
# QEMU's raspi4b has no working network device: do not wait for one.
# Nor the container runtime the real K3s brings: the stand-in needs Debian's containerd,
# which this recipe does not carry (k3s-image.sh boots the stand-in), so K3s and the health
# check that waits for its node are masked: this boot is about the board, not K3s.
qcmd="$(sed -E 's/console=[^ ]+//g' <<<"$cmdline") console=ttyAMA0,115200 clk_ignore_unused systemd.mask=systemd-networkd-wait-online.service"
qcmd+=" systemd.mask=k3s.service systemd.mask=edgeimg-health.service"
# The emulated SD controller's driver can take minutes to load under TCG on a loaded host:
# wait for the root partition longer than systemd's default 90 s.
qcmd+=" systemd.default_device_timeout_sec=600"
t0=$(now)
timeout -k 5 900 qemu-system-aarch64 -M raspi4b -accel tcg -kernel "$T/boot/edgeimg/slot-a/linux" -dtb "$T/pi4-qemu.dtb" \
    -initrd "$T/boot/edgeimg/slot-a/initrd" -append "$qcmd" -drive "file=$T/sd.img,if=sd,format=raw" \
    -display none -serial "file:$T/boot.log" -monitor none -no-reboot </dev/null 2>"$T/qemu.err" &
qpid=$!
for _ in $(seq 1 880); do
    grep -aq "EDGEIMG-SELFTEST end" "$T/boot.log" 2>/dev/null && break
    kill -0 $qpid 2>/dev/null || break
    sleep 1
done
kill $qpid 2>/dev/null
wait $qpid 2>/dev/null
grep -aq "EDGEIMG-SELFTEST end" "$T/boot.log" || fail "slot A did not reach userspace on raspi4b (serial log $T/boot.log)"
ok "raspi4b: slot A booted to the self-test in $(elapsed "$t0") s"
L=$T/boot.log
expect arch aarch64 "$L"
expect slot a "$L"
expect root-fstype erofs "$L"
expect verity-status V "$L"
expect verity-roothash "$roothash" "$L"
expect data-writable yes "$L"
expect uboot-state "boot_slot=a,bootcount=0,bootlimit=1,upgrade_available=0," "$L"
rm -f "$T/sd.img"

log "the tryboot layout (boards/rpi4-tryboot.toml's, with Debian's kernel) from the same cached trees"
# Raspberry Pi's kernel repository is out of reach here, so this board is rpi4-tryboot with
# Debian's kernel and rpi4's firmware packages and initrd drivers: its base tree and board
# layer are then the ones the rpi4 build above made (libubootenv-tool, which only U-Boot
# boards install, is added to the recipe for the same reason), and the build shows the
# tryboot partitions, autoboot.txt, each slot's boot partition and the update payload.
mkdir -p "$T/boards"
# What makes a board share rpi4's base tree and board layer: rpi4's initrd drivers and
# firmware packages, with Debian's kernel. The board-specific part goes before it.
rpi4_trees="$(grep '^initrd_drivers' "$ROOT/boards/rpi4.toml")
[firmware]
packages = [\"raspi-firmware\", \"u-boot-rpi\", \"firmware-brcm80211\"]
components = [\"non-free-firmware\"]
[disk]
esp_mib = 64
boot_mib = 256
root_mib = 2048
verity_mib = 24
data_mib = 512"
grep -q '^packages = \["raspi-firmware", "u-boot-rpi", "firmware-brcm80211"\]' "$ROOT/boards/rpi4.toml" \
    || fail "boards/rpi4.toml's firmware packages changed: update rpi4_trees here so that these boards share rpi4's board layer"
cat >"$T/boards/rpi4-tryboot-debian.toml" <<BOARD
name = "rpi4-tryboot-debian"
arch = "arm64"
[boot]
backend = "tryboot"
[[boot.files]]
from = "/usr/lib/raspi-firmware/start4.elf"
to = "/"
[[boot.files]]
from = "/usr/lib/raspi-firmware/fixup4.dat"
to = "/"
[[boot.files]]
from = "/usr/lib/linux-image-*/broadcom/bcm2711-*.dtb"
to = "/"
[boot.write]
"/config.txt" = "arm_64bit=1\\nenable_uart=1\\nupstream_kernel=1\\n"
[kernel]
console = "ttyS1,115200"
$rpi4_trees
BOARD
sed 's/^packages = \["openssh-server"/packages = ["libubootenv-tool", "openssh-server"/' "$R/k3s-edge.toml" >"$R/k3s-edge-tryboot.toml"
grep -q libubootenv-tool "$R/k3s-edge-tryboot.toml" || fail "recipes/k3s-edge.toml's packages line changed"
# build_standin NAME WHAT: build $T/boards/NAME.toml from rpi4's cached trees and check its
# GPT; sets B (the output directory), disk and labels ("1:esp 2:… ").
build_standin() {
    local t0 log=$T/build-$1.log
    t0=$(now)
    "$EDGEIMG" build --board "$T/boards/$1.toml" --recipe "$R/k3s-edge-tryboot.toml" --out "$OUT" --updater "$updater" \
        >"$log" 2>&1 || { tail -n 30 "$log"; fail "$2 build failed (log $log)"; }
    B=$OUT/$1/k3s-edge/1.0.0
    jq -e '.debian.rootfs_cached and .debian.board_layer_cached' "$B/report.json" >/dev/null \
        || fail "the $2 build did not reuse rpi4's trees: $(jq -c .debian "$B/report.json")"
    ok "built in $(elapsed "$t0") s from rpi4's cached base tree and board layer"
    disk=$B/disk.img
    sgdisk -v "$disk" | grep -q "No problems found" || fail "sgdisk finds problems in the GPT"
    labels=$(sgdisk -p "$disk" | awk '/^ +[0-9]/ {printf "%s:%s ", $1, $7}')
}
build_standin rpi4-tryboot-debian tryboot
[ "$labels" = "1:esp 2:boot-a 3:boot-b 4:root-a 5:verity-a 6:root-b 7:verity-b 8:data " ] || fail "partitions: $labels"
ok "sgdisk: 8 partitions; slot A boots from partition 2, slot B from 3 ($labels)"
MTOOLS_SKIP_CHECK=1 mtype -i "$disk@@$(part_offset "$disk" esp)" ::/autoboot.txt >"$T/autoboot.txt" || fail "no autoboot.txt on partition 1"
sed 's/#.*//' "$T/autoboot.txt" | grep -v '^$' | tr '\n' ' ' >"$T/autoboot.flat"
[ "$(cat "$T/autoboot.flat")" = "[all] tryboot_a_b=1 boot_partition=2 [tryboot] boot_partition=3 " ] \
    || fail "autoboot.txt: $(cat "$T/autoboot.txt")"
ok "autoboot.txt: tryboot_a_b=1, slot A (partition 2) committed, slot B (partition 3) for a tryboot"
rm -rf "$T/boot-a"; mkdir -p "$T/boot-a"
MTOOLS_SKIP_CHECK=1 mcopy -s -n -i "$disk@@$(part_offset "$disk" boot-a)" '::/*' "$T/boot-a/" || fail "cannot copy boot-a out"
for f in start4.elf fixup4.dat bcm2711-rpi-4-b.dtb config.txt vmlinuz initrd.img cmdline.txt; do
    [ -s "$T/boot-a/$f" ] || fail "boot-a: no $f ($(ls "$T/boot-a" | tr '\n' ' '))"
done
for l in "kernel=vmlinuz" "initramfs initrd.img followkernel" "cmdline=cmdline.txt" "arm_64bit=1"; do
    grep -qx "$l" "$T/boot-a/config.txt" || fail "boot-a/config.txt lacks '$l': $(cat "$T/boot-a/config.txt")"
done
cmp -s "$T/boot-a/vmlinuz" "$T/boot/edgeimg/slot-a/linux" && cmp -s "$T/boot-a/start4.elf" "$T/boot/start4.elf" \
    || fail "boot-a's kernel or firmware differs from the rpi4 image's"
ok "boot-a: Pi 4 firmware, device trees, config.txt naming the kernel, initrd and cmdline.txt beside it"
tcmd=$(cat "$T/boot-a/cmdline.txt")
troot=$(tr ' ' '\n' <<<"$tcmd" | sed -n 's/^roothash=//p')
grep -qw "edgeimg.slot=a" <<<"$tcmd" && [ ${#troot} = 64 ] || fail "boot-a/cmdline.txt: $tcmd"
part root-a "$T/root-a.img"
part verity-a "$T/verity-a.img"
veritysetup verify "$T/root-a.img" "$T/verity-a.img" "$troot" || fail "veritysetup rejects root-a with boot-a's root hash"
rm -f "$T/root-a.img" "$T/verity-a.img"
ok "veritysetup verify accepts root-a with the root hash in boot-a/cmdline.txt"
b_off=$(part_offset "$disk" boot-b)
[ "$(od -An -tx1 -j $((b_off + 510)) -N2 "$disk" | tr -d ' ')" != 55aa ] || fail "boot-b holds a filesystem in a fresh image"
ok "boot-b is empty until an update writes it (a stray tryboot finds nothing to boot)"
P=$B/payload
jq -e '.slots.a.files == [{"artifact": "boot-a.vfat", "path": "/"}] and .slots.b.files == [{"artifact": "boot-b.vfat", "path": "/"}]
    and ([.artifacts[].name] | sort) == ["boot-a.vfat", "boot-b.vfat", "root.img", "root.verity"]' "$P/payload.json" >/dev/null \
    || fail "payload.json: $(jq -c '{slots, artifacts: [.artifacts[].name]}' "$P/payload.json")"
cmp -s "$P/boot-a.vfat" <(head -c "$(stat -c %s "$P/boot-a.vfat")" <(tail -c +$(($(part_offset "$disk" boot-a) + 1)) "$disk")) \
    || fail "partition boot-a does not start with the payload's boot-a.vfat"
MTOOLS_SKIP_CHECK=1 mtype -i "$P/boot-b.vfat" ::/cmdline.txt | grep -qw "edgeimg.slot=b" || fail "boot-b.vfat's cmdline.txt does not boot slot B"
ok "payload: one image per slot's boot partition (boot-a.vfat is partition 2 byte for byte; boot-b.vfat boots slot B, $(( $(stat -c %s "$P/boot-b.vfat") >> 20 )) MiB)"
log "the L4T layout (boards/jetson-orin-nano.toml's, with Debian's kernel) from the same cached trees"
# NVIDIA's repository and Jetson hardware are out of reach here, so this board is
# jetson-orin-nano's layout with Debian's kernel and rpi4's packages (sharing rpi4's cached
# trees, as the tryboot board above). Checked: the GPT names L4TLauncher looks up, the ESP's
# commit record, extlinux.conf on slot A's APP partition against the root partitions, the
# payload, the retry-count drop-in; then an L4TLauncher stand-in boots slot A on QEMU virt
# from what extlinux.conf names (LINUX, INITRD, APPEND as written).
cat >"$T/boards/jetson-l4t-debian.toml" <<BOARD
name = "jetson-l4t-debian"
arch = "arm64"
[boot]
backend = "l4t"
[kernel]
console = "ttyAMA0,115200"
$rpi4_trees
BOARD
build_standin jetson-l4t-debian L4T
[ "$labels" = "1:esp 2:APP 3:APP_b 4:root-a 5:verity-a 6:root-b 7:verity-b 8:data " ] || fail "partitions: $labels"
ok "sgdisk: slot A boots from partition APP, slot B from APP_b, the names L4TLauncher looks up ($labels)"
rec=$(MTOOLS_SKIP_CHECK=1 mtype -i "$disk@@$(part_offset "$disk" esp)" ::/edgeimg/l4t-committed) || fail "no edgeimg/l4t-committed on the ESP"
[ "$rec" = a ] || fail "the ESP's commit record says '$rec', want a"
ok "ESP: edgeimg/l4t-committed names slot A"
rm -rf "$T/app"; mkdir -p "$T/app"
MTOOLS_SKIP_CHECK=1 mcopy -s -n -i "$disk@@$(part_offset "$disk" APP)" '::/*' "$T/app/" || fail "cannot copy APP out"
ext=$T/app/boot/extlinux/extlinux.conf
[ -s "$ext" ] || fail "APP: no boot/extlinux/extlinux.conf ($(cd "$T/app" && find . -type f | tr '\n' ' '))"
# The entry as L4TLauncher reads it: DEFAULT names a LABEL, whose LINUX, INITRD and APPEND
# are paths on this partition and the kernel command line.
entry() { awk -v key="$1" '$1 == "DEFAULT" {d = $2} $1 == "LABEL" {l = $2} l == d && $1 == key {sub(/^[ \t]*[A-Z]+[ \t]+/, ""); print; exit}' "$ext"; }
linux=$(entry LINUX); initrd=$(entry INITRD); append=$(entry APPEND)
[ "$linux" = /boot/Image ] && [ "$initrd" = /boot/initrd ] || fail "extlinux.conf: LINUX '$linux', INITRD '$initrd': $(cat "$ext")"
file -b "$T/app$linux" | grep -q "Linux kernel ARM64 boot executable Image" || fail "APP$linux: $(file -b "$T/app$linux")"
cmp -s "$T/app$linux" "$T/boot/edgeimg/slot-a/linux" || fail "APP's kernel differs from the rpi4 image's"
lroot=$(tr ' ' '\n' <<<"$append" | sed -n 's/^roothash=//p')
grep -qw "edgeimg.slot=a" <<<"$append" && [ ${#lroot} = 64 ] || fail "extlinux.conf APPEND: $append"
ok "APP: extlinux.conf's default entry boots $linux (ARM64 Image) with $initrd and slot A's command line"
part root-a "$T/root-a.img"
part verity-a "$T/verity-a.img"
veritysetup verify "$T/root-a.img" "$T/verity-a.img" "$lroot" || fail "veritysetup rejects root-a with APP's root hash"
rm -rf "$T/l4t-root"
fsck.erofs --extract="$T/l4t-root" "$T/root-a.img" >/dev/null 2>&1 || fail "fsck.erofs cannot extract root-a"
rm -f "$T/root-a.img" "$T/verity-a.img"
ok "veritysetup verify accepts root-a with the root hash in APP's extlinux.conf"
grep -qx 'ExecCondition=/usr/bin/edgeimg-updater committed' \
    "$T/l4t-root/usr/lib/systemd/system/nv-l4t-bootloader-config.service.d/edgeimg-trial.conf" \
    || fail "the image does not hold L4T's retry-count service back on trial boots"
grep -qx 'backend = "l4t"' "$T/l4t-root/usr/lib/edgeimg/updater.toml" || fail "updater.toml: $(grep backend "$T/l4t-root/usr/lib/edgeimg/updater.toml")"
rm -rf "$T/l4t-root"
ok "root-a: the updater's l4t backend, and the drop-in that holds nv-l4t-bootloader-config back until a commit"
b_off=$(part_offset "$disk" APP_b)
[ "$(od -An -tx1 -j $((b_off + 510)) -N2 "$disk" | tr -d ' ')" != 55aa ] || fail "APP_b holds a filesystem in a fresh image"
P=$B/payload
jq -e '.slots.a.files == [{"artifact": "boot-a.vfat", "path": "/"}] and .slots.b.files == [{"artifact": "boot-b.vfat", "path": "/"}]' \
    "$P/payload.json" >/dev/null || fail "payload.json: $(jq -c '.slots' "$P/payload.json")"
app_off=$(part_offset "$disk" APP)
cmp -s "$P/boot-a.vfat" <(head -c "$(stat -c %s "$P/boot-a.vfat")" <(tail -c +$((app_off + 1)) "$disk")) \
    || fail "partition APP does not start with the payload's boot-a.vfat"
MTOOLS_SKIP_CHECK=1 mtype -i "$P/boot-b.vfat" ::/boot/extlinux/extlinux.conf | grep -q "APPEND .*edgeimg.slot=b" \
    || fail "boot-b.vfat's extlinux.conf does not boot slot B"
ok "APP_b is empty until an update writes it; the payload has one image per slot's APP partition (boot-a.vfat is APP byte for byte)"

log "boot: an L4TLauncher stand-in boots slot A's extlinux.conf entry on QEMU virt"
# What L4TLauncher does with the entry (no NVIDIA firmware here): load LINUX and INITRD
# from the chain's APP partition and start the kernel with APPEND. Test-only additions:
# no network device to wait for, and K3s and its health check masked (as on raspi4b above).
qcmd="$append systemd.mask=systemd-networkd-wait-online.service systemd.mask=k3s.service systemd.mask=edgeimg-health.service systemd.default_device_timeout_sec=600"
t0=$(now)
timeout -k 5 900 qemu-system-aarch64 -M virt -cpu cortex-a72 -accel tcg -smp 2 -m 1024 \
    -kernel "$T/app$linux" -initrd "$T/app$initrd" -append "$qcmd" \
    -drive "file=$disk,if=none,id=d0,format=raw,cache=unsafe,snapshot=on" -device virtio-blk-pci,drive=d0 \
    -nic none -display none -serial "file:$T/boot-l4t.log" -monitor none -no-reboot </dev/null 2>"$T/qemu-l4t.err" &
qpid=$!
for _ in $(seq 1 880); do
    grep -aq "EDGEIMG-SELFTEST end" "$T/boot-l4t.log" 2>/dev/null && break
    kill -0 $qpid 2>/dev/null || break
    sleep 1
done
kill $qpid 2>/dev/null
wait $qpid 2>/dev/null
grep -aq "EDGEIMG-SELFTEST end" "$T/boot-l4t.log" || fail "slot A did not reach userspace from its extlinux.conf (serial log $T/boot-l4t.log)"
ok "virt: slot A booted from APP's extlinux.conf entry to the self-test in $(elapsed "$t0") s"
L=$T/boot-l4t.log
expect slot a "$L"
expect root-fstype erofs "$L"
expect verity-status V "$L"
expect verity-roothash "$lroot" "$L"
expect updater-committed 0 "$L"
rm -rf "$T/app"
done_ok
