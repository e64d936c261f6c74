#!/bin/bash
# ARM boards' TPM tool: edgeimg-tpm cross-compiled for aarch64 (against libtss2-dev:arm64)
# runs under QEMU user emulation against a software TPM (swtpm) on 127.0.0.1 and does what
# the updater asks of it on a device: measure a release into PCR 15, read it, make the
# attestation key, quote, keep the security floor in NV storage. The amd64 tool, driving
# the same TPM, must agree on every value: the PCR, the EK, the AK and the floor.
source "$(dirname "$0")/../lib.sh"
trap '[ -n "${TPM_PID:-}" ] && kill "$TPM_PID" 2>/dev/null; true' EXIT

arm=${EDGEIMG_TPM_TOOL_ARM64:-$ROOT/target/aarch64-unknown-linux-gnu/device/edgeimg-tpm}
x86=${EDGEIMG_TPM_TOOL_AMD64:-$ROOT/target/device/edgeimg-tpm}
[ -x "$arm" ] || fail "no arm64 TPM tool at $arm: cargo build --profile device --target aarch64-unknown-linux-gnu -p edgeimg-tpm"
[ -x "$x86" ] || fail "no amd64 TPM tool at $x86: cargo build --profile device -p edgeimg-tpm"
command -v swtpm >/dev/null || fail "swtpm is needed (apt-get install swtpm swtpm-tools)"
file -b "$arm" | grep -q "ARM aarch64" || fail "$arm is not an aarch64 binary: $(file -b "$arm")"
ok "edgeimg-tpm for arm64 is an aarch64 binary ($(stat -c %s "$arm") bytes)"

rm -rf "$T/tpm" "$T/ak-arm" "$T/ak-x86"
mkdir -p "$T/tpm"
swtpm_setup --tpm2 --tpmstate "$T/tpm" --createek --overwrite >"$T/swtpm-setup.log" 2>&1 \
    || fail "swtpm_setup failed ($T/swtpm-setup.log)"
# Two consecutive free ports on 127.0.0.1 (data, control).
port=$(python3 -c 'import socket
for p in range(24000, 25000, 2):
    try:
        a, b = socket.socket(), socket.socket(); a.bind(("127.0.0.1", p)); b.bind(("127.0.0.1", p + 1)); a.close(); b.close(); print(p); break
    except OSError: pass')
[ -n "$port" ] || fail "no two free consecutive ports on 127.0.0.1"
swtpm socket --tpm2 --tpmstate dir="$T/tpm" --flags not-need-init,startup-clear \
    --server type=tcp,port="$port",bindaddr=127.0.0.1 --ctrl type=tcp,port=$((port + 1)),bindaddr=127.0.0.1 \
    >"$T/swtpm.log" 2>&1 &
TPM_PID=$!
export EDGEIMG_TPM_TCTI="swtpm:host=127.0.0.1,port=$port"
for _ in $(seq 50); do "$x86" pcr >/dev/null 2>&1 && break; sleep 0.1; done

tool() { # tool ARM|X86 ARGS...: run it, print its JSON
    local bin=$arm
    [ "$1" = X86 ] && bin=$x86
    shift
    "$bin" "$@" 2>>"$T/tool.err" || fail "edgeimg-tpm ($bin) $* failed: $(tail -n 3 "$T/tool.err")"
}

hash=$(printf 'edgeimg-arm64-tpm-test' | sha256sum | cut -d' ' -f1)
[ "$(tool ARM pcr | jq -r .value)" = "$(printf '0%.0s' $(seq 64))" ] || fail "PCR 15 is not zero after a reset"
v_arm=$(tool ARM measure --image edge --release 1.0.0 --root-hash "$hash" | jq -r .value)
v_x86=$(tool X86 pcr | jq -r .value)
# PCR extend: sha256(old value || sha256(event)), from zero after a reset.
want=$(python3 -c 'import hashlib, sys
e = hashlib.sha256(("edgeimg-release:v1:edge:1.0.0:" + sys.argv[1]).encode()).digest()
print(hashlib.sha256(bytes(32) + e).hexdigest())' "$hash")
[ "$v_arm" = "$want" ] && [ "$v_x86" = "$want" ] \
    || fail "PCR 15 after the arm64 measure: arm64 says $v_arm, amd64 reads $v_x86, the event gives $want"
ok "measure: the arm64 tool extends PCR 15 with the release event; the amd64 tool reads the value the event gives"

keys_arm=$(tool ARM keys --dir "$T/ak-arm")
keys_x86=$(tool X86 keys --dir "$T/ak-arm")
[ "$(jq -r .ek <<<"$keys_arm")" = "$(jq -r .ek <<<"$keys_x86")" ] || fail "the EK differs between the tools"
[ "$(jq -r .ak <<<"$keys_arm")" = "$(jq -r .ak <<<"$keys_x86")" ] || fail "the amd64 tool loads a different AK from the arm64 tool's blobs"
ok "keys: the arm64 tool makes the AK; the amd64 tool loads it from the same blobs (same EK, same AK)"

nonce=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
q=$(tool ARM quote --dir "$T/ak-arm" --nonce "$nonce")
grep -q "$nonce" <<<"$(jq -r .attest <<<"$q")" || fail "the quote's attestation does not carry the nonce"
[ "$(jq -r '.signature | length' <<<"$q")" -ge 128 ] || fail "the quote has no signature: $q"
ok "quote: the arm64 tool quotes PCR 15 with the AK over the server's nonce"

[ "$(tool ARM floor | jq -r .floor)" = 0 ] || fail "a fresh TPM's security floor is not 0"
tool ARM raise-floor 7 >/dev/null
tool ARM raise-floor 3 >/dev/null
[ "$(tool X86 floor | jq -r .floor)" = 7 ] || fail "the floor the arm64 tool raised is not 7 for the amd64 tool"
ok "security floor: raised to 7 by the arm64 tool (a later 3 does not lower it), read as 7 by the amd64 tool"
done_ok
