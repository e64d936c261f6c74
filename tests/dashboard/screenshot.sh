#!/bin/bash
# Dashboard check with the real binary: seed a demo repository, start `edgeimg serve` on
# 127.0.0.1, let a demo fleet enrol and report (two canary devices roll back, so the server
# auto-halts the canary channel), then render the page with headless Chromium: a screenshot
# and assertions on the DOM Chromium built.
#   tests/dashboard/screenshot.sh [OUT.png]     (default: target/dashboard.png)
# Env: EDGEIMG (the binary; default: build target/debug/edgeimg), CARGO_TARGET_DIR (where the
#      helpers are built; default target/), PROFILE (debug or release; default debug),
#      CHROMIUM, PORT, WINDOW (w,h).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${1:-$ROOT/target/dashboard.png}
EDGEIMG=${EDGEIMG:-}
CHROMIUM=${CHROMIUM:-chromium}
PORT=${PORT:-18080}
WINDOW=${WINDOW:-1400,1000}
URL=http://127.0.0.1:$PORT

command -v "$CHROMIUM" >/dev/null || { echo "chromium is needed (apt-get install chromium)" >&2; exit 1; }
cd "$ROOT"
TARGET=$(realpath -m "${CARGO_TARGET_DIR:-target}")
PROFILE=${PROFILE:-debug}
case $PROFILE in
    debug) profile=() ;;
    release) profile=(--release) ;;
    *) echo "PROFILE is debug or release, not $PROFILE" >&2; exit 1 ;;
esac
if [ -z "$EDGEIMG" ]; then
    cargo build -q "${profile[@]}" -p edgeimg --bin edgeimg
    EDGEIMG=$TARGET/$PROFILE/edgeimg
fi
cargo build -q "${profile[@]}" -p edgeimg-server --example fleet-sim
SIM=$TARGET/$PROFILE/examples/fleet-sim

W=$(mktemp -d)
server=
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
    rm -rf "$W"
}
trap cleanup EXIT

"$SIM" seed "$W"
"$EDGEIMG" serve --repo "$W/repo" --keys "$W/online" --enroll-token-file "$W/enroll-token" \
    --state-dir "$W/state" --listen "127.0.0.1:$PORT" >"$W/serve.log" 2>&1 &
server=$!
for _ in $(seq 100); do curl -fs "$URL/healthz" >/dev/null && break; sleep 0.1; done
curl -fs "$URL/healthz" >/dev/null || { cat "$W/serve.log"; exit 1; }
"$SIM" devices "$URL"
for _ in $(seq 100); do
    curl -fs "$URL/api/v1/channels" | jq -e '.channels[] | select(.name == "canary") | .boards[0].rollout.paused' >/dev/null && break
    sleep 0.2
done

chrome() {
    "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync --hide-scrollbars \
        --user-data-dir="$(mktemp -d -p "$W")" "$@" 2>>"$W/chromium.log"
}
mkdir -p "$(dirname "$OUT")"
rm -f "$OUT"
chrome --window-size="$WINDOW" --screenshot="$OUT" "$URL/" >/dev/null
chrome --dump-dom "$URL/" >"$W/dom.html"

fail=0
check() { grep -qF -- "$1" "$W/dom.html" || { echo "FAIL: the page lacks: $1" >&2; fail=1; }; }
check "<title>edgeimg fleet</title>"
check "auto-halt: 2 of 3 devices failed 1.2.0"
check "waiting for the change window (CHG-1234)"
check "edge-qemu-01"
check "lab-bench-7"
check "awaiting approval"
check "new key awaiting approval"
check "online keys: auto-halt + refresh on"
check "(0 attested, required)"
check '&lt;disk "data" at 100% &amp; rising&gt;'
if grep -qF "<disk" "$W/dom.html"; then echo "FAIL: device text became markup" >&2; fail=1; fi
[ -s "$OUT" ] && head -c 8 "$OUT" | grep -q PNG || { echo "FAIL: no screenshot" >&2; fail=1; }
grep -q "auto-halt" "$W/serve.log" || { echo "FAIL: the server did not log the auto-halt" >&2; fail=1; }
[ $fail = 0 ] || { echo "--- server log"; cat "$W/serve.log"; exit 1; }
echo "dashboard OK; screenshot: $OUT"
