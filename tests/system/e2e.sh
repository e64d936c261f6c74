#!/bin/bash
# End to end: one device in QEMU (TCG, OVMF) updates itself from `edgeimg serve` on
# 127.0.0.1, reached through QEMU user networking (restrict=on, guestfwd 10.0.2.100:8080).
#   v1  built, flashed (with a provisioning file carrying the fleet enrollment token), booted;
#       the device enrolls and reports v1.
#   v2  published at 100%: downloaded into the other slot, tried once, healthy (K3s stand-in
#       node Ready), committed, reported.
#   v3  its health check fails: the device falls back to v2 by itself, reports the failure,
#       never retries v3, and the server auto-halts the channel (threshold: one device).
#   v4  QEMU is killed while v4 is being written (E2E_POWERCUT=0 skips it); the device boots v2
#       again, resumes the download where it stopped, and commits v4.
# The firmware runs with Secure Boot on and the example keys enrolled (tests/secure-boot-vars):
# every release boots a signed UKI per slot, and a copy of the disk whose UKI was altered
# after signing is refused by the firmware.
# Asserts on the serial log and the server's API; prints a timing table. Logs, serial
# consoles and the server's database stay in $T (printed on failure).
source "$(dirname "$0")/../lib.sh"
source "$ROOT/tests/lib-images.sh"
SERVER_PORT=${SERVER_PORT:-18480}
API=http://127.0.0.1:$SERVER_PORT
QEMU_PID=
SERVER_PID=
# kill_vm [SIGNAL]: stop QEMU itself (not only the tests/qemu-boot wrapper) and wait for it.
kill_vm() {
    pkill -f -- "file=$T/vm-tampered/disk.qcow2" 2>/dev/null || true
    pkill "-${1:-TERM}" -f -- "-drive file=$T/disk.img," 2>/dev/null || true
    [ -z "$QEMU_PID" ] || wait "$QEMU_PID" 2>/dev/null || true
    while pgrep -f -- "-drive file=$T/disk.img," >/dev/null; do sleep 0.2; done
    QEMU_PID=
}
cleanup() {
    kill_vm
    [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null
    stop_services
    true
}
trap cleanup EXIT
command -v swtpm >/dev/null || fail "swtpm is needed for the device's TPM (apt-get install swtpm swtpm-tools)"
command -v busybox >/dev/null || fail "busybox is needed for the guest forward (apt-get install busybox-static)"
command -v sbverify >/dev/null || fail "sbverify is needed to check Secure Boot signatures (apt-get install sbsigntool)"

rm -rf "$T/out" "$T/recipe" "$T/keys" "$T/repo" "$T/repo.state" "$T/vm" "$T/vm-tampered" "$T/tpm" "$T"/*.log "$T/disk.img" \
    "$T/tampered.img"
timings=()
timing() { timings+=("$(printf '%-44s %7s s' "$1" "$2")"); }

log "inputs on 127.0.0.1: registry, test images, K3s stand-in mirror; release keys"
start_registry "$T/registry"
make_test_images "$T/inputs"
start_mirror "$T/inputs/mirror"
"$EDGEIMG" keys init --out "$T/keys" >"$T/keys.log" 2>&1 || { cat "$T/keys.log"; fail "keys init failed"; }
ok "fresh release keys and root.json in $T/keys"

k3s_pins
R=$T/recipe
mkdir -p "$R"
cp -r "$ROOT/tests/recipes/selftest-overlay" "$ROOT/tests/recipes/k3s-test-overlay" "$ROOT/tests/recipes/e2e-overlay" \
    "$ROOT/tests/recipes/k3s-test" "$R/"
cp "$T/keys/root.json" "$R/root.json"
cp -r "$ROOT/keys-example/secureboot" "$R/sb"
# render OUT HEALTH_COMMANDS: the K3s test recipe (the app image pinned by digest, no lock
# file needed) plus the updater: this server, a short poll, the host's clock (QEMU's RTC).
render() {
    sed -e "s|@MIRROR_PORT@|$MIRROR_PORT|g; s|@REGISTRY_PORT@|$REGISTRY_PORT|g; s|@K3S_SHA256@|$K3S_SHA256|g" \
        -e "s|@AIRGAP_AMD64@|$AIRGAP_AMD64|g; s|@AIRGAP_ARM64@|$AIRGAP_ARM64|g; s|@HELLO_DIGEST@|$HELLO_DIGEST|g" \
        -e "s|\"127.0.0.1:@REGISTRY_PORT@/edgeimg/app:2.0\"|\"127.0.0.1:$REGISTRY_PORT/edgeimg/app:2.0@$APP_DIGEST\"|" \
        -e "s|127.0.0.1:$REGISTRY_PORT/edgeimg/app:2.0\"|127.0.0.1:$REGISTRY_PORT/edgeimg/app:2.0@$APP_DIGEST\"|" \
        -e 's|^overlays = \["selftest-overlay", "k3s-test-overlay"\]|overlays = ["selftest-overlay", "k3s-test-overlay", "e2e-overlay"]|' \
        "$ROOT/tests/recipes/k3s-test.toml.in" >"$1"
    cat >>"$1" <<TOML

[updater]
server = "http://10.0.2.100:8080"
root = "root.json"
channel = "stable"
poll_interval = "10s"
time = "system"
health_deadline = "240s"
# The power-cut step kills QEMU once a quarter of the ~300 MB root image is written: at
# 25 MB/s that leaves it seconds in the middle of the image.
rate_limit = 25000000
# Measure the release into PCR 15, attest to the server, keep the floor in TPM NV.
tpm = true
health_commands = $2

# Signed loader and one signed UKI per slot (INSECURE example db key).
[secure_boot]
key = "sb/db.key"
cert = "sb/db.crt"
TOML
}
render "$R/good.toml" '[["/usr/bin/true"]]'
# v3's check knows it cannot pass and exits 100: the trial fails at once, not at the deadline.
render "$R/bad.toml" '[["/bin/sh", "-c", "echo v3 is broken; exit 100"]]'
BAD_CHECK='health command:/bin/sh -c echo v3 is broken; exit 100: FAILED'
grep -q "app:2.0@$APP_DIGEST" "$R/good.toml" || fail "recipe template changed: app image not pinned ($R/good.toml)"

build() { # build VERSION RECIPE
    local t0
    t0=$(now)
    "$EDGEIMG" build --board qemu-x86_64 --recipe "$2" --version "$1" --out "$T/out" >"$T/build-$1.log" 2>&1 \
        || { tail -n 30 "$T/build-$1.log"; fail "build of $1 failed ($T/build-$1.log)"; }
    timing "build $1" "$(elapsed "$t0")"
}
OUT=$T/out/qemu-x86_64/k3s-test
publish() { # publish VERSION [ARGS...]: sign into the repository and put it on stable at 100%
    local v=$1
    shift
    "$EDGEIMG" publish "$OUT/$v" --repo "$T/repo" --keys "$T/keys" --channel stable --percent 100 "$@" >"$T/publish-$v.log" 2>&1 \
        || { cat "$T/publish-$v.log"; fail "publish $v failed"; }
}

log "building v1 and v2 (the same recipe), v3 (its health check fails) and v4"
build 1.0.0 "$R/good.toml"
build 2.0.0 "$R/good.toml"
build 3.0.0 "$R/bad.toml"
build 4.0.0 "$R/good.toml"
jq -e '.version == "2.0.0"' "$OUT/2.0.0/report.json" >/dev/null || fail "v2 report.json has the wrong version"
ok "four releases built"

log "repository and server"
publish 1.0.0
"$EDGEIMG" rollout stable --repo "$T/repo" --keys "$T/keys" --board qemu-x86_64 --release 1.0.0 --percent 100 \
    --halt-after-failures 0 --halt-min-devices 1 --require-attestation true >"$T/rollout.log" 2>&1 || { cat "$T/rollout.log"; fail "rollout failed"; }
head -c 24 /dev/urandom | base64 >"$T/enroll-token"
"$EDGEIMG" serve --repo "$T/repo" --keys "$T/keys" --listen "127.0.0.1:$SERVER_PORT" --enroll-token-file "$T/enroll-token" \
    --refresh-interval 30s -v >"$T/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do curl -sf "$API/healthz" >/dev/null && break; sleep 0.2; done
curl -sf "$API/healthz" >/dev/null || fail "edgeimg serve did not start ($T/server.log)"
curl -sf "$API/tuf/metadata/timestamp.json" | jq -e '.signed._type == "timestamp"' >/dev/null || fail "no timestamp.json served"
ok "edgeimg serve on 127.0.0.1:$SERVER_PORT; stable = 1.0.0 at 100%, auto-halt after one failed device"

log "flashing v1 with a provisioning file (enrollment token) and booting it"
cp --sparse=always "$OUT/1.0.0/disk.img" "$T/disk.img"
printf 'hostname = "e2e-dev1"\n[updater]\nenroll_token = "%s"\n' "$(cat "$T/enroll-token")" >"$T/provision.toml"
"$EDGEIMG" flash --yes --provision "$T/provision.toml" "$OUT/1.0.0/disk.img.zst" "$T/disk.img" >"$T/flash.log" 2>&1 \
    || { cat "$T/flash.log"; fail "edgeimg flash failed"; }
grep -q "$(cat "$T/enroll-token")" "$T/flash.log" && fail "the enrollment token appears in the flash output"
ok "flashed with edgeimg flash --provision (token not in its output)"

# boot_vm LOG: boot the disk in place (UEFI variables kept in $T/vm), rebooting inside one
# QEMU run, the update server reachable from the guest at 10.0.2.100:8080.
boot_vm() {
    "$ROOT/tests/qemu-boot" --state "$T/vm" --in-place --reboot --mem 2048 --tpm "$T/tpm" \
        --net-fwd "tcp:10.0.2.100:8080-cmd:busybox nc 127.0.0.1 $SERVER_PORT" --log "$1" "$T/disk.img" &
    QEMU_PID=$!
}
# wait_for WHAT TIMEOUT COMMAND...: poll until COMMAND succeeds.
wait_for() {
    local what=$1 limit=$2 t0=$SECONDS
    shift 2
    until "$@" >/dev/null 2>&1; do
        [ $((SECONDS - t0)) -lt "$limit" ] || fail "timed out after ${limit}s waiting for: $what"
        kill -0 "$QEMU_PID" 2>/dev/null || fail "QEMU exited while waiting for: $what"
        sleep 2
    done
}
device() { curl -sf "$API/api/v1/devices" | jq -c '.devices[0] // empty'; }
dev_is() { # dev_is VERSION STATE
    curl -sf "$API/api/v1/devices" | jq -e --arg v "$1" --arg s "$2" '.devices[0] | .version == $v and .state == $s'
}
dev_on() { # dev_on VERSION SLOT
    curl -sf "$API/api/v1/devices" | jq -e --arg v "$1" --arg s "$2" '.devices[0] | .version == $v and .slot == $s'
}
dev_attested() { # dev_attested VERSION: the server verified a TPM quote of this release
    curl -sf "$API/api/v1/devices" | jq -e --arg v "$1" '.devices[0].attestation | .result == "passed" and .version == $v'
}
attested_ok() { # attested_ok VERSION: wait for it, say what the server found
    wait_for "$1: the server verifies the device's TPM quote" 180 dev_attested "$1"
    ok "attested $1: $(device | jq -r '.attestation.detail')"
}
dev_event() { # dev_event KIND VERSION: the device reported this event
    local id
    id=$(device | jq -r .id)
    curl -sf "$API/api/v1/devices/$id" | jq -e --arg k "$1" --arg v "$2" '[.events[] | select(.kind == $k and .version == $v)] | length > 0'
}
serial_count() { grep -ac "$1" "$2" || true; }
reboots_more_than() { [ "$(serial_count 'reboot: Restarting system' "$2")" -gt "$1" ]; } # reboots_more_than N LOG

log "Secure Boot: signed loader and UKIs; the firmware refuses a UKI altered after signing"
for slot in a b; do
    sbverify --cert "$R/sb/db.crt" "$OUT/1.0.0/payload/uki-$slot.efi" >/dev/null 2>&1 \
        || fail "payload uki-$slot.efi is not signed by the recipe's db key"
done
"$EDGEIMG" inspect "$T/disk.img" >"$T/inspect-v1.txt" 2>&1 || { cat "$T/inspect-v1.txt"; fail "edgeimg inspect failed"; }
grep -q "slot-a.conf .*root hash $(jq -r .roothash "$OUT/1.0.0/payload/payload.json" | cut -c1-16)  UKI /edgeimg/slot-a/uki.efi (signed)" \
    "$T/inspect-v1.txt" || { cat "$T/inspect-v1.txt"; fail "edgeimg inspect does not show slot A booting a signed UKI"; }
"$ROOT/tests/secure-boot-vars" "$T/sb-vars.fd" >/dev/null
mkdir -p "$T/vm" && cp "$T/sb-vars.fd" "$T/vm/vars.fd"
# The tampered copy: one hex digit of the root hash in slot A's signed command line changed.
cp --sparse=always "$T/disk.img" "$T/tampered.img"
ESP="$T/tampered.img@@$(part_offset "$T/tampered.img" esp)"
MTOOLS_SKIP_CHECK=1 mcopy -n -i "$ESP" ::/edgeimg/slot-a/uki.efi "$T/uki-tampered.efi"
python3 - "$T/uki-tampered.efi" <<'PY'
import sys
b = bytearray(open(sys.argv[1], "rb").read())
i = b.index(b"roothash=") + len("roothash=")
b[i] = ord("0") if b[i] != ord("0") else ord("1")
open(sys.argv[1], "wb").write(b)
PY
sbverify --cert "$R/sb/db.crt" "$T/uki-tampered.efi" >/dev/null 2>&1 && fail "the altered UKI still verifies"
MTOOLS_SKIP_CHECK=1 mcopy -o -i "$ESP" "$T/uki-tampered.efi" ::/edgeimg/slot-a/uki.efi
LT=$T/serial-tampered.log
"$ROOT/tests/qemu-boot" --state "$T/vm-tampered" --vars "$T/sb-vars.fd" --log "$LT" --timeout 180 "$T/tampered.img" &
QEMU_PID=$!
wait_for "the firmware refuses the altered UKI" 170 grep -aqi "uki.efi: Access denied" "$LT"
kill_vm
grep -aq "Linux version" "$LT" && fail "a kernel started from the altered UKI ($LT)"
ok "altered UKI refused by the firmware: $(grep -ai -m1 'uki.efi: Access denied' "$LT" | tr -d '\r' | sed 's/^.*Error/Error/')"
rm -rf "$T/tampered.img" "$T/vm-tampered"

L1=$T/serial-1.log
t0=$(now)
boot_vm "$L1"
wait_for "v1: K3s node Ready on the serial console" 600 grep -aq "EDGEIMG-SELFTEST k3s-node-ready=True" "$L1"
timing "boot v1 to K3s node Ready" "$(elapsed "$t0")"
grep -aq "secureboot: Secure boot enabled" "$L1" || fail "v1 did not boot with Secure Boot enforced ($L1)"
ok "v1 booted from its signed UKI with Secure Boot enforced (kernel lockdown on)"
wait_for "v1: the device enrolls and reports 1.0.0" 180 dev_is 1.0.0 idle
timing "boot v1 to first report" "$(elapsed "$t0")"
D=$(device)
[ "$(jq -r .status <<<"$D")" = approved ] || fail "device not approved by the enrollment token: $D"
[ "$(jq -r .slot <<<"$D")" = a ] || fail "v1 should run in slot a: $D"
ok "device $(jq -r .id <<<"$D") enrolled with the fleet token (approved), reports 1.0.0 in slot a"
grep -aq "measured k3s-test 1.0.0 (root hash $(jq -r .roothash "$OUT/1.0.0/payload/payload.json")) into PCR 15" "$L1" \
    || fail "v1 was not measured into PCR 15 before the network came up (serial log $L1)"
attested_ok 1.0.0
device | jq -e '.ak_bound_at != null' >/dev/null || fail "attested, but the AK is not bound to the EK: $(device)"
grep -aq "binding the attestation key to the TPM's endorsement key" "$L1" || fail "the device never activated a credential ($L1)"
ok "the AK was bound to the EK first (TPM2_ActivateCredential of the server's credential)"

log "v2 at 100%: download, write slot b, reboot, health, commit"
t0=$(now)
publish 2.0.0
wait_for "v2: the device starts installing" 120 grep -aq "installing .*2\.0\.0" "$L1"
wait_for "v2: reboot into slot b" 600 reboots_more_than 0 "$L1"
timing "v2 publish to reboot (download + write)" "$(elapsed "$t0")"
# v2 differs from v1 in its version only: slot b is built from slot a plus deltas (root image,
# and slot b's signed UKI from slot a's), its hash tree computed from the rebuilt root image,
# each checked whole against the signed sha256 before the slot can boot.
for f in root.img uki-b.efi; do
    grep -aq "$f: building it in slot B from slot A (1.0.0) and a [0-9]*-byte delta" "$L1" \
        || fail "v2's $f was not built from a delta (serial log $L1)"
done
grep -aq "root.verity: computed from the rebuilt root image" "$L1" || fail "v2's hash tree was not computed on the device ($L1)"
grep -aq "delta.*not usable" "$L1" && fail "a v2 delta was refused: $(grep -a "not usable" "$L1" | head -n 1)"
v2_bytes=$(grep -ao "k3s-test 2.0.0: [0-9]* bytes downloaded in this run ([0-9.]*% of the [0-9]*" "$L1" | head -n 1)
[ -n "$v2_bytes" ] || fail "the updater did not log what v2 downloaded (serial log $L1)"
ok "v2 from deltas: $v2_bytes bytes of a full download)"
t1=$(now)
# Events queued before the reboot (installed, trying) arrive in the reports of the new boot,
# one per report, then the commit: wait for the committed event itself.
wait_for "v2: committed and reported" 600 dev_event committed 2.0.0
timing "v2 reboot to commit reported" "$(elapsed "$t1")"
wait_for "v2: the device reports 2.0.0, idle" 60 dev_is 2.0.0 idle
D=$(device)
[ "$(jq -r .slot <<<"$D")" = b ] || fail "v2 should run in slot b: $D"
wait_for "v2: the self-test shows 2.0.0 running" 300 grep -aq "EDGEIMG-SELFTEST os-image-version=2.0.0" "$L1"
jq -e '[.health[] | select(.ok and (.check | startswith("k3s-node-ready")))] | length == 1' <<<"$D" >/dev/null \
    || fail "v2's health results did not reach the server: $(jq -c .health <<<"$D")"
ok "v2 runs in slot b, committed (health: $(jq -c '[.health[] | .check + "=" + (.ok | tostring)]' <<<"$D"))"
attested_ok 2.0.0

log "v3 fails its health check: fallback to v2, failure reported, channel auto-halted"
t0=$(now)
reboots=$(serial_count 'reboot: Restarting system' "$L1")
publish 3.0.0
wait_for "v3: reboot into slot a for the trial" 900 reboots_more_than "$reboots" "$L1"
t1=$(now)
timing "v3 publish to trial reboot" "$(elapsed "$t0")"
wait_for "v3: the device is back on v2 and reports the rollback" 900 dev_event rolled-back 3.0.0
timing "v3 trial reboot to rollback reported" "$(elapsed "$t1")"
# The failed check's log line comes from v3's own health step (its console log).
grep -aqF "$BAD_CHECK" "$L1" || fail "v3's health step never ran (serial log $L1)"
wait_for "v3: device reports 2.0.0 in slot b" 120 dev_on 2.0.0 b
ok "v3 was tried, failed health, the device fell back to 2.0.0 by itself"
wait_for "the server auto-halts stable" 120 sh -c \
    "curl -sf $API/api/v1/channels | jq -e '.channels[] | select(.name == \"stable\") | .channel.boards[\"qemu-x86_64\"].paused'"
reason=$(curl -sf "$API/api/v1/channels" | jq -r '.channels[] | select(.name == "stable") | .channel.boards["qemu-x86_64"].pause_reason')
ok "stable auto-halted: $reason"
# The signed channel file the device reads says so too (consistent snapshots: the target is
# served under its hash, which the newest rollout metadata names).
rollout_meta=$(ls "$T/repo/metadata" | grep -E '^[0-9]+\.rollout\.json$' | sort -n | tail -n 1)
chash=$(jq -r '.signed.targets["channel~stable.json"].hashes.sha256' "$T/repo/metadata/$rollout_meta")
curl -sf "$API/tuf/targets/$chash.channel~stable.json" | jq -e '.boards["qemu-x86_64"].paused' >/dev/null \
    || fail "the served channel file ($rollout_meta, $chash) is not paused"
trials=$(grep -acF "$BAD_CHECK" "$L1" || true)
[ "$trials" = 1 ] || fail "v3's health step ran $trials times"
sleep 40 # four poll intervals
[ "$(grep -acF "$BAD_CHECK" "$L1" || true)" = 1 ] || fail "v3 was tried again"
grep -a "installing .*3\.0\.0" "$L1" | wc -l | grep -qx 1 || fail "v3 was downloaded more than once"
ok "v3 not retried (four poll intervals later)"

# The power cut (about 8 minutes under TCG). E2E_POWERCUT=0 skips it for a quicker local run.
if [ "${E2E_POWERCUT:-1}" = 1 ]; then
    log "v4 with a power cut in the middle of writing it"
    n=$(grep -ac "root.img: .* written and synced" "$L1" || true) # progress lines of v2 and v3
    # Published without deltas: this power cut lands in a full download (cuts while a slot
    # is rebuilt from a delta are tested in updater/tests/it/delta.rs).
    publish 4.0.0 --deltas 0
    "$EDGEIMG" rollout stable --repo "$T/repo" --keys "$T/keys" --board qemu-x86_64 --release 4.0.0 --percent 100 --resume \
        >>"$T/rollout.log" 2>&1 || { cat "$T/rollout.log"; fail "resume failed"; }
    t0=$(now)
    wait_for "v4: the device starts installing" 180 grep -aq "installing .*4\.0\.0" "$L1"
    # Cut the power once a quarter of root.img is written and synced (the updater logs each
    # quarter; progress is persisted every 16 MiB), well before the end of the image.
    until [ "$(grep -ac "root.img: .* written and synced" "$L1" || true)" -gt "$n" ]; do
        [ "$(elapsed "$t0" | cut -d. -f1)" -lt 180 ] || fail "v4: no progress of root.img logged (serial log $L1)"
        sleep 0.2
    done
    kill_vm KILL
    ok "QEMU killed $(elapsed "$t0") s after v4's download started, after: $(grep -a "root.img: .* written and synced" "$L1" | tail -n 1 | sed 's/.*INFO //')"
    L2=$T/serial-2.log
    t0=$(now)
    boot_vm "$L2"
    wait_for "after the power cut: v2 boots" 600 grep -aq "EDGEIMG-SELFTEST os-image-version=2.0.0" "$L2"
    grep -aq "EDGEIMG-SELFTEST slot=b" "$L2" || fail "after the power cut the device did not boot slot b"
    ok "after the power cut the device runs 2.0.0 in slot b"
    wait_for "v4: the download resumes" 300 grep -aq "resuming .*4\.0\.0.*: root.img at byte [1-9]" "$L2"
    ok "$(grep -ao "resuming .*4\.0\.0.* at byte [0-9]*" "$L2" | head -n 1)"
    wait_for "v4: committed and reported" 900 dev_event committed 4.0.0
    timing "power cut to v4 committed" "$(elapsed "$t0")"
    wait_for "v4: the device reports 4.0.0, idle" 60 dev_is 4.0.0 idle
    D=$(device)
    [ "$(jq -r .slot <<<"$D")" = a ] || fail "v4 should run in slot a: $D"
    ok "v4 runs in slot a, committed"
    attested_ok 4.0.0 # the TPM kept its seeds across the power cut, the AK its blobs on /data
    kill_vm
else
    kill_vm
    log "power-cut step skipped (E2E_POWERCUT=0)"
fi

log "server state"
curl -sf "$API/metrics" >"$T/metrics.txt" || fail "no /metrics"
grep -q "^edgeimg_" "$T/metrics.txt" || fail "/metrics has no edgeimg_ series"
ok "/metrics serves $(grep -c '^edgeimg_' "$T/metrics.txt") edgeimg_ samples"
if [ "${E2E_POWERCUT:-1}" = 1 ]; then # stable is on 4.0.0 now, which the device runs
    grep -q '^edgeimg_channel_healthy_devices{.*} 1$' "$T/metrics.txt" \
        || fail "the attested, committed device is not counted healthy on stable: $(grep healthy_devices "$T/metrics.txt")"
    ok "stable requires attestation: the device on 4.0.0 counts as healthy"
fi
ok "quotes judged: $(grep '^edgeimg_attestations_total' "$T/metrics.txt" | tr '\n' ' ')"

printf '\n%-44s %9s\n' step time
printf '%s\n' "${timings[@]}"
done_ok
