#!/bin/bash
# K3s baked in: a recipe with the K3s stand-in (served with a pinned sha256 from a mirror on
# 127.0.0.1), the upstream-style airgap archive, and two images from a docker-registry on
# 127.0.0.1 (a multi-arch index pinned by digest, and a tag resolved by `edgeimg lock`).
# Checks the archives with independent tools (sha256sum, skopeo, Debian's containerd),
# boots the image (the stand-in imports the archives through edgeimg's symlinks and runs
# the image offline), provisioning from the boot partition, and the build's errors. A Helm
# chart served by the mirror is vendored into a HelmChart manifest (checked structurally:
# the stand-in has no helm-controller).
source "$(dirname "$0")/../lib.sh"
source "$ROOT/tests/lib-images.sh"
trap 'stop_services; [ -n "${CTRD_PID:-}" ] && kill "$CTRD_PID" 2>/dev/null; true' EXIT

# A fresh registry: an earlier run tampers a layer in its storage on purpose.
rm -rf "$T/out" "$T/recipe" "$T/x" "$T/registry" "$T"/*.log
log "inputs on 127.0.0.1: registry, test images, K3s stand-in mirror"
start_registry "$T/registry"
make_test_images "$T/inputs"
start_mirror "$T/inputs/mirror"
ok "registry $REGISTRY: edgeimg/hello:1.0 = $HELLO_DIGEST, edgeimg/app:2.0 = $APP_DIGEST"
k3s_pins

R=$T/recipe
mkdir -p "$R"
cp -r "$ROOT/tests/recipes/selftest-overlay" "$ROOT/tests/recipes/k3s-test-overlay" "$ROOT/tests/recipes/k3s-test" "$R/"
render() { # render OUT [sed expressions...]
    local out=$1; shift
    sed -e "s|@MIRROR_PORT@|$MIRROR_PORT|g; s|@REGISTRY_PORT@|$REGISTRY_PORT|g; s|@K3S_SHA256@|$K3S_SHA256|g" \
        -e "s|@AIRGAP_AMD64@|$AIRGAP_AMD64|g; s|@AIRGAP_ARM64@|$AIRGAP_ARM64|g; s|@HELLO_DIGEST@|$HELLO_DIGEST|g" \
        "$@" "$ROOT/tests/recipes/k3s-test.toml.in" >"$out"
}
# A Helm chart on the mirror (like a chart repository's .tgz), running the hello image.
mkdir -p "$T/chart/hello/templates" "$T/inputs/mirror/charts"
printf 'apiVersion: v2\nname: hello\nversion: 0.1.0\nappVersion: "1.0"\n' >"$T/chart/hello/Chart.yaml"
printf 'image:\n  repository: %s/edgeimg/hello\n  tag: "1.0"\nreplicas: 1\n' "$REGISTRY" >"$T/chart/hello/values.yaml"
printf 'apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {{ .Release.Name }}\n' >"$T/chart/hello/templates/deployment.yaml"
tar -czf "$T/inputs/mirror/charts/hello-0.1.0.tgz" -C "$T/chart" hello
CHART_SHA=$(sha256sum <"$T/inputs/mirror/charts/hello-0.1.0.tgz" | cut -c1-64)
# The same chart in the registry, the way `helm push` stores it (an OCI manifest with the
# chart as its layer), pushed with the registry API.
push_blob() { # push_blob REPO FILE: upload a blob, print its digest
    local d loc sep
    d=sha256:$(sha256sum <"$2" | cut -c1-64)
    loc=$(curl -sfi -X POST "http://$REGISTRY/v2/$1/blobs/uploads/" | awk -F': ' 'tolower($1) == "location" {print $2}' | tr -d '\r')
    case $loc in http*) ;; *) loc=http://$REGISTRY$loc ;; esac
    sep='?'; [[ $loc == *\?* ]] && sep='&'
    curl -sf -X PUT -H 'Content-Type: application/octet-stream' --data-binary @"$2" "$loc${sep}digest=$d" >/dev/null \
        || fail "cannot push $2 to $REGISTRY/$1"
    echo "$d"
}
printf '{"name":"hello","version":"0.1.0","apiVersion":"v2","appVersion":"1.0"}' >"$T/chart-config.json"
CFG=$(push_blob charts/hello "$T/chart-config.json")
LAYER=$(push_blob charts/hello "$T/inputs/mirror/charts/hello-0.1.0.tgz")
[ "$LAYER" = "sha256:$CHART_SHA" ] || fail "the chart layer's digest is not the archive's sha256"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.cncf.helm.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.cncf.helm.chart.content.v1.tar+gzip","digest":"%s","size":%s}]}' \
    "$CFG" "$(stat -c %s "$T/chart-config.json")" "$LAYER" "$(stat -c %s "$T/inputs/mirror/charts/hello-0.1.0.tgz")" >"$T/chart-manifest.json"
curl -sf -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary @"$T/chart-manifest.json" \
    "http://$REGISTRY/v2/charts/hello/manifests/0.1.0" >/dev/null || fail "cannot push the chart manifest"
oci_helm_entry() { # oci_helm_entry SHA256: a [[helm]] entry for the chart in the registry
    printf '\n[[helm]]\nname = "hello-oci"\nchart = "oci://%s/charts/hello"\nversion = "0.1.0"\nsha256 = "%s"\nnamespace = "apps"\nimages = ["%s/edgeimg/hello:1.0@%s"]\n' \
        "$REGISTRY" "$1" "$REGISTRY" "$HELLO_DIGEST"
}
helm_entry() { # helm_entry SHA256 IMAGES: a [[helm]] entry for the mirror's chart
    printf '\n[[helm]]\nname = "hello"\nchart = "http://127.0.0.1:%s/charts/hello-0.1.0.tgz"\nversion = "0.1.0"\nsha256 = "%s"\nnamespace = "apps"\nvalues = "replicas: 2\\n"\nimages = [%s]\n' \
        "$MIRROR_PORT" "$1" "$2"
}
# A stand-in for Flux's install.yaml on the mirror (its "controller" runs the app image).
mkdir -p "$T/inputs/mirror/flux"
cat >"$T/inputs/mirror/flux/install.yaml" <<YAML
apiVersion: v1
kind: Namespace
metadata:
  name: flux-system
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: source-controller
  namespace: flux-system
spec:
  template:
    spec:
      containers:
      - name: manager
        image: $REGISTRY/edgeimg/app:2.0
YAML
FLUX_SHA=$(sha256sum <"$T/inputs/mirror/flux/install.yaml" | cut -c1-64)
gitops_section() { # gitops_section IMAGES [EXTRA LINES]: a [gitops] section for the mirror's install.yaml
    printf '\n[gitops]\ninstall = "http://127.0.0.1:%s/flux/install.yaml"\nsha256 = "%s"\nimages = [%s]\nrepository = "https://git.example.com/fleet/edge-apps.git"\npath = "./clusters/edge"\nauth = "https"\n%b' \
        "$MIRROR_PORT" "$FLUX_SHA" "$1" "${2:-}"
}
# node-exporter as a pre-pulled workload (monitoring/node-exporter.yaml; its image is not
# reachable here, so the hello image stands in for it).
sed "s|image: quay.io/prometheus/node-exporter:v1.9.1|image: $REGISTRY/edgeimg/hello:1.0@$HELLO_DIGEST|" \
    "$ROOT/monitoring/node-exporter.yaml" >"$R/node-exporter.yaml"
render "$R/k3s-test.toml" -e 's|^manifests = \["k3s-test/hello.yaml"\]|manifests = ["k3s-test/hello.yaml", "node-exporter.yaml"]|'
grep -q '"node-exporter.yaml"' "$R/k3s-test.toml" || fail "recipe template changed: cannot add node-exporter.yaml"
helm_entry "$CHART_SHA" "\"$REGISTRY/edgeimg/hello:1.0@$HELLO_DIGEST\"" >>"$R/k3s-test.toml"
oci_helm_entry "$CHART_SHA" >>"$R/k3s-test.toml"
gitops_section "\"$REGISTRY/edgeimg/app:2.0\"" >>"$R/k3s-test.toml"
# The board: qemu-x86_64 plus a vendor's apt repository (signed, on the mirror) that
# supplies a firmware package, the way rpi5 and Jetson boards get their vendors' kernels.
make_vendor_repo "$T/inputs/mirror/vendor"
board_with_key() { # board_with_key DIR KEYFILE: qemu-x86_64 with the vendor source trusted with KEYFILE
    mkdir -p "$1"
    cp "$2" "$1/vendor.asc"
    { cat "$ROOT/boards/qemu-x86_64.toml"
      printf '\n[firmware]\npackages = ["edgeimg-vendor-firmware"]\n\n[[apt.sources]]\nurl = "http://127.0.0.1:%s/vendor"\nsuite = "edge"\nkey = "vendor.asc"\n' "$MIRROR_PORT"
    } >"$1/qemu-x86_64.toml"
}
board_with_key "$T/board" "$T/inputs/mirror/vendor.key.asc"
BOARD=$T/board/qemu-x86_64.toml
build() { "$EDGEIMG" build --board "$BOARD" --out "$T/out" "$@"; }

log "an image given by tag only and not locked is refused"
must_fail "unpinned image" "edgeimg/app:2.0\` is not pinned" -- build --recipe "$R/k3s-test.toml"
must_fail "unpinned image" "edgeimg lock --recipe" -- build --recipe "$R/k3s-test.toml"

log "edgeimg lock resolves the tag"
"$EDGEIMG" lock --recipe "$R/k3s-test.toml" >"$T/lock.log" 2>&1 || { cat "$T/lock.log"; fail "edgeimg lock failed"; }
grep -q "\"$REGISTRY/edgeimg/app:2.0\" = \"$APP_DIGEST\"" "$R/k3s-test.lock" || fail "lock file does not pin app:2.0 to $APP_DIGEST: $(cat "$R/k3s-test.lock")"
ok "k3s-test.lock: $REGISTRY/edgeimg/app:2.0 = $APP_DIGEST"

log "building the K3s image"
t0=$(now)
build --recipe "$R/k3s-test.toml" >"$T/build.log" 2>&1 || { tail -n 30 "$T/build.log"; fail "build failed ($T/build.log)"; }
ok "built in $(elapsed "$t0") s"
B=$T/out/qemu-x86_64/k3s-test/1.0.0
jq -e --arg s "$K3S_SHA256" '.k3s.binary_sha256 == $s and .k3s.version == "v1.34.2+k3s1" and .k3s.import_cache == false' "$B/report.json" >/dev/null \
    || fail "report.json k3s section wrong: $(jq -c .k3s "$B/report.json")"
ok "report: K3s v1.34.2+k3s1, binary sha256 ${K3S_SHA256:0:16}…, import cache off (v1.34.2 lacks the July 2026 fixes)"
jq -e '.k3s.images.images | length == 2' "$B/report.json" >/dev/null || fail "report lists $(jq '.k3s.images.images | length' "$B/report.json") images, want 2"
shared=$(jq .k3s.images.shared_bytes "$B/report.json")
[ "$shared" -gt 0 ] || fail "the two images share busybox's layer, but nothing was stored once"
ok "images archive $(jq .k3s.images.size "$B/report.json") bytes; $shared bytes of shared layers stored once"
for n in k3s k3s-airgap-images-amd64.tar.zst "$REGISTRY/edgeimg/hello" "$REGISTRY/edgeimg/app"; do
    jq -e --arg n "$n" '[.packages[].name] | index($n) != null' "$B/sbom.spdx.json" >/dev/null || fail "SBOM lacks $n"
done
jq -e --arg s "$K3S_SHA256" '.packages[] | select(.name == "k3s") | .checksums[0].checksumValue == $s' "$B/sbom.spdx.json" >/dev/null || fail "SBOM k3s checksum"
jq -e --arg s "$CHART_SHA" '.packages[] | select(.name == "helm chart hello") | .checksums[0].checksumValue == $s' "$B/sbom.spdx.json" >/dev/null || fail "SBOM lacks the chart"
ok "SBOM lists k3s (with sha256), the airgap archive, both images and the Helm chart"

log "the archives inside the verity root, checked with independent tools"
fsck.erofs --extract="$T/x" "$B/payload/root.img" >/dev/null 2>&1 || fail "fsck.erofs --extract failed"
cmp "$T/x/usr/local/bin/k3s" "$ROOT/tests/k3s-standin/k3s" || fail "/usr/local/bin/k3s is not the pinned binary"
ok "/usr/local/bin/k3s is the pinned binary"
[ "$(cat "$T/x/usr/lib/firmware/edgeimg-vendor/marker.bin" 2>/dev/null)" = "edgeimg test vendor firmware" ] \
    || fail "the vendor repository's firmware package is not in the root"
jq -e '.packages[] | select(.name == "edgeimg-vendor-firmware") | .versionInfo == "1.0"' "$B/sbom.spdx.json" >/dev/null \
    || fail "the SBOM lacks edgeimg-vendor-firmware 1.0"
ok "board apt source: edgeimg-vendor-firmware 1.0 from the signed vendor repository is in the root and the SBOM"
HC=$T/x/usr/lib/edgeimg/k3s/manifests/helm-hello.yaml
[ -f "$HC" ] || fail "no HelmChart manifest for the chart in the image"
grep -q '^kind: HelmChart$' "$HC" && grep -q '^  targetNamespace: "apps"$' "$HC" || fail "helm-hello.yaml is not the HelmChart expected: $(head -c 600 "$HC")"
sed -n 's/^  chartContent: //p' "$HC" | base64 -d >"$T/chart-from-image.tgz"
cmp -s "$T/chart-from-image.tgz" "$T/inputs/mirror/charts/hello-0.1.0.tgz" || fail "chartContent is not the pinned chart archive"
tar -xzOf "$T/chart-from-image.tgz" hello/Chart.yaml | grep -q '^version: 0.1.0$' || fail "the vendored chart is not hello 0.1.0"
grep -q '^    replicas: 2$' "$HC" || fail "the recipe's values are not in valuesContent"
jq -e '.k3s.charts[0] | .name == "hello" and .version == "0.1.0" and (.images | length == 1)' "$B/report.json" >/dev/null \
    || fail "report.json k3s.charts: $(jq -c .k3s.charts "$B/report.json")"
ok "helm-hello.yaml: a HelmChart carrying the pinned chart byte for byte (base64 -d | cmp), values inline"
sed -n 's/^  chartContent: //p' "$T/x/usr/lib/edgeimg/k3s/manifests/helm-hello-oci.yaml" | base64 -d | cmp -s - "$T/inputs/mirror/charts/hello-0.1.0.tgz" \
    || fail "helm-hello-oci.yaml does not carry the chart pulled from the registry"
ok "helm-hello-oci.yaml: the same chart pulled from the OCI registry (oci://$REGISTRY/charts/hello, version 0.1.0 = tag)"
M=$T/x/usr/lib/edgeimg/k3s/manifests
cmp -s "$M/flux-install.yaml" "$T/inputs/mirror/flux/install.yaml" || fail "flux-install.yaml is not the pinned install manifest"
grep -q '^  url: "https://git.example.com/fleet/edge-apps.git"$' "$M/flux-sync.yaml" && grep -q '^    name: edgeimg-gitops-auth$' "$M/flux-sync.yaml" \
    || fail "flux-sync.yaml does not point at the repository with the provisioned secret: $(cat "$M/flux-sync.yaml")"
grep -rqs "INSECURE-test-git-password" "$T/x" && fail "a Git credential is in the image"
ok "GitOps: the pinned install manifest, a GitRepository + Kustomization for the repository, no credential in the image"
A=$(ls "$T"/x/usr/lib/edgeimg/k3s/images/edgeimg-images-*.tar)
mkdir -p "$T/x/archive" && tar -xf "$A" -C "$T/x/archive"
for f in "$T"/x/archive/blobs/sha256/*; do
    [ "$(sha256sum <"$f" | cut -c1-64)" = "$(basename "$f")" ] || fail "blob $(basename "$f") does not match its digest"
done
ok "every blob in $(basename "$A") matches its digest ($(ls "$T/x/archive/blobs/sha256" | wc -l) blobs)"
# Delta-friendly: blobs start on 4 KiB in the archive, and EROFS stores the archive as is.
python3 - "$A" <<'PY' || fail "a blob of $(basename "$A") does not start on a 4 KiB boundary"
import sys, tarfile
with tarfile.open(sys.argv[1]) as t:
    bad = [m.name for m in t.getmembers() if m.name.startswith("blobs/") and m.offset_data % 4096]
sys.exit(1 if bad else 0)
PY
dump.erofs --path="/usr/lib/edgeimg/k3s/images/$(basename "$A")" "$B/payload/root.img" | grep -q "Layout: 0" \
    || fail "the images archive is compressed in the root image: $(dump.erofs --path="/usr/lib/edgeimg/k3s/images/$(basename "$A")" "$B/payload/root.img" | head -n 3)"
ok "images archive: blobs on 4 KiB boundaries, stored uncompressed in EROFS"
for ref in "$REGISTRY/edgeimg/hello:1.0" "$REGISTRY/edgeimg/app:2.0"; do
    arch=$(skopeo inspect "oci-archive:$A:$ref" | jq -r .Architecture) || fail "skopeo cannot read $ref from the archive"
    [ "$arch" = amd64 ] || fail "$ref in the archive is $arch, want amd64"
done
ok "skopeo reads both images from the archive, both linux/amd64"
mkdir -p "$T/ctrd"
containerd --root "$T/ctrd/root" --state "$T/ctrd/state" --address "$T/ctrd/sock" >"$T/ctrd/log" 2>&1 &
CTRD_PID=$!
for _ in $(seq 60); do ctr --address "$T/ctrd/sock" version >/dev/null 2>&1 && break; sleep 0.5; done
ctr --address "$T/ctrd/sock" -n k8s.io images import "$A" >"$T/ctrd/import.log" 2>&1 || fail "containerd cannot import the archive ($T/ctrd/import.log)"
got=$(ctr --address "$T/ctrd/sock" -n k8s.io images ls | awk -v r="$REGISTRY/edgeimg/hello:1.0" '$1 == r {print $3}')
[ "$got" = "$HELLO_DIGEST" ] || fail "containerd imported hello:1.0 as '$got', want $HELLO_DIGEST"
ok "containerd imports hello:1.0 with the pinned index digest"
out=$(ctr --address "$T/ctrd/sock" -n k8s.io run --rm "$REGISTRY/edgeimg/hello:1.0" edgeimg-test /bin/cat /hello.txt 2>&1) || fail "containerd cannot run the image: $out"
[ "$out" = "hello from the edgeimg test image (amd64)" ] || fail "unexpected output: $out"
ok "containerd + runc run it offline: \"$out\""
kill "$CTRD_PID"; wait "$CTRD_PID" 2>/dev/null || true; CTRD_PID=

log "boot: K3s (stand-in) imports the baked archives and runs the image; provisioning from the boot partition"
cp --sparse=always "$B/disk.img" "$T/disk.img"
printf 'hostname = "shop-042"\n[k3s]\ntoken = "K10-INSECURE-test-token"\n[gitops]\nusername = "edge"\npassword = "INSECURE-test-git-password"\n' >"$T/edgeimg-provision.toml"
MTOOLS_SKIP_CHECK=1 mcopy -i "$T/disk.img@@$(part_offset "$T/disk.img" esp)" "$T/edgeimg-provision.toml" ::/edgeimg-provision.toml
t0=$(now)
"$ROOT/tests/qemu-boot" --poweroff --timeout 700 --in-place --log "$T/boot.log" "$T/disk.img" || fail "boot failed (serial log $T/boot.log)"
grep -aq "EDGEIMG-SELFTEST end" "$T/boot.log" || fail "the self-test did not finish (serial log $T/boot.log)"
ok "booted and powered off in $(elapsed "$t0") s"
L=$T/boot.log
expect k3s-active active "$L"
expect k3s-prepare active "$L"
expect_match k3s-links "edgeimg-images-[0-9a-f]{16}\.tar->/usr/lib/edgeimg/k3s/images/edgeimg-images-" "$L"
expect_match k3s-links "k3s-airgap-images-amd64-[0-9a-f]{16}\.tar\.zst->/usr/lib/edgeimg/k3s/images/" "$L"
expect k3s-cache-json no "$L"
expect k3s-manifests "edgeimg-flux-install.yaml,edgeimg-flux-sync.yaml,edgeimg-gitops-auth.yaml,edgeimg-hello.yaml,edgeimg-helm-hello-oci.yaml,edgeimg-helm-hello.yaml,edgeimg-node-exporter.yaml," "$L"
expect k3s-node-ready True "$L"
expect k3s-kubeconfig-link /var/lib/rancher/k3s/k3s.yaml "$L"
expect k3s-node-dir /var/lib/rancher/node "$L"
expect provision-hostname shop-042 "$L"
expect failed-units "" "$L"
grep -aq "EDGEIMG-K3S token-file /var/lib/edgeimg/k3s/token present=yes" "$L" || fail "K3s did not get the provisioned token file"
ok "K3s got the provisioned token as a file (K3S_TOKEN_FILE), not in its config"
grep -a "EDGEIMG-K3S import file=edgeimg-images-" "$L" | grep -aq "rc=0" || fail "the stand-in could not import the images archive"
grep -a "EDGEIMG-K3S import file=k3s-airgap-images-amd64" "$L" | grep -aq "rc=0" || fail "the stand-in could not import the airgap archive"
ok "containerd in the guest imported both archives through the symlinks"
grep -aq "EDGEIMG-K3S image $REGISTRY/edgeimg/hello:1.0 $HELLO_DIGEST" "$L" || fail "hello:1.0 not imported with its digest"
grep -aq "EDGEIMG-K3S image docker.io/rancher/mirrored-pause:3.6 " "$L" || fail "the airgap image is not imported under its name"
grep -a "EDGEIMG-K3S image $REGISTRY/edgeimg/hello:1.0 " "$L" | grep -aq "io.cri-containerd.pinned=pinned" || fail "imported images are not pinned against GC"
ok "images in the guest: hello:1.0 @ ${HELLO_DIGEST:7:12}…, app:2.0, rancher/mirrored-pause:3.6, all pinned against GC"
grep -aq "EDGEIMG-K3S run image=$REGISTRY/edgeimg/hello:1.0 rc=0 output=hello from the edgeimg test image (amd64)" "$L" \
    || fail "the pre-pulled image did not run offline: $(grep -a 'EDGEIMG-K3S run' "$L" | head -n 1)"
ok "the pre-pulled image ran offline in the guest"
MTOOLS_SKIP_CHECK=1 mdir -b -i "$T/disk.img@@$(part_offset "$T/disk.img" esp)" :: | grep -q edgeimg-provision && fail "the provisioning file (with a token) is still on the boot partition"
ok "the provisioning file left the boot partition"
rm -f "$T/disk.img"

log "rebuild with a warm cache: same bytes, pull time"
t0=$(now)
"$EDGEIMG" build --board "$BOARD" --out "$T/out2" --recipe "$R/k3s-test.toml" >"$T/build2.log" 2>&1 || fail "rebuild failed"
ok "warm rebuild in $(elapsed "$t0") s; k3s step (cached downloads + pulls + archive) $(jq '.timings_seconds.k3s' "$T/out2/qemu-x86_64/k3s-test/1.0.0/report.json") s"
cmp -s "$B/disk.img" "$T/out2/qemu-x86_64/k3s-test/1.0.0/disk.img" || fail "the rebuild differs"
ok "the rebuild's disk.img is identical"
rm -rf "$T/out2"

log "bad inputs fail the build, name the artifact, leave nothing behind"
render "$R/bad-chart.toml"
helm_entry "$(printf '2%.0s' {1..64})" "\"$REGISTRY/edgeimg/hello:1.0@$HELLO_DIGEST\"" >>"$R/bad-chart.toml"
cp "$R/k3s-test.lock" "$R/bad-chart.lock"
must_fail "wrong chart sha256" "Helm chart hello 0.1.0 (helm[0])" -- build --recipe "$R/bad-chart.toml"
must_fail "wrong chart sha256" "has sha256 $CHART_SHA" -- build --recipe "$R/bad-chart.toml"
render "$R/bad-oci-chart.toml"
oci_helm_entry "$(printf '3%.0s' {1..64})" >>"$R/bad-oci-chart.toml"
cp "$R/k3s-test.lock" "$R/bad-oci-chart.lock"
must_fail "wrong OCI chart digest" "Helm chart sha256:$(printf '3%.0s' {1..64}): the registry sent content with digest sha256:$CHART_SHA" -- build --recipe "$R/bad-oci-chart.toml"
render "$R/chart-image.toml"
helm_entry "$CHART_SHA" "" >>"$R/chart-image.toml"
cp "$R/k3s-test.lock" "$R/chart-image.lock"
must_fail "chart image not pulled" "chart hello runs image $REGISTRY/edgeimg/hello:1.0 (values: image) but helm[0].images does not list it" -- build --recipe "$R/chart-image.toml"
render "$R/git-secret.toml"
gitops_section "\"$REGISTRY/edgeimg/app:2.0\"" 'password = "hunter2"\n' >>"$R/git-secret.toml"
must_fail "Git credential in the recipe" "gitops.password" -- build --recipe "$R/git-secret.toml"
must_fail "Git credential in the recipe" "put the credentials in each device's provisioning file" -- build --recipe "$R/git-secret.toml"
render "$R/git-url.toml"
gitops_section "\"$REGISTRY/edgeimg/app:2.0\"" >>"$R/git-url.toml"
sed -i 's|https://git.example.com/fleet|https://edge:hunter2@git.example.com/fleet|' "$R/git-url.toml"
must_fail "Git credential in the repository URL" "the URL carries credentials" -- build --recipe "$R/git-url.toml"
render "$R/flux-image.toml"
gitops_section "" >>"$R/flux-image.toml"
cp "$R/k3s-test.lock" "$R/flux-image.lock"
must_fail "agent image not pulled" "the GitOps install manifest runs image $REGISTRY/edgeimg/app:2.0" -- build --recipe "$R/flux-image.toml"
render "$R/bad-sha.toml" -e "s|sha256 = { amd64 = \"$K3S_SHA256\"|sha256 = { amd64 = \"$(printf '1%.0s' {1..64})\"|"
cp "$R/k3s-test.lock" "$R/bad-sha.lock"
must_fail "wrong K3s sha256" "K3s v1.34.2+k3s1 binary (k3s)" -- build --recipe "$R/bad-sha.toml"
must_fail "wrong K3s sha256" "but the recipe pins $(printf '1%.0s' {1..64})" -- build --recipe "$R/bad-sha.toml"
must_fail "wrong K3s sha256" "has sha256 $K3S_SHA256" -- build --recipe "$R/bad-sha.toml"
# A digest nothing has cached (a cached one would not need the registry at all: blobs are
# content-addressed, wherever they came from).
uncached=sha256:$(printf 'not in any cache' | sha256sum | cut -c1-64)
render "$R/bad-registry.toml" -e "s|$REGISTRY/edgeimg/app:2.0\"|127.0.0.1:1/edgeimg/app:2.0@$uncached\"|"
must_fail "unreachable registry" "registry 127.0.0.1:1 did not answer" -- build --recipe "$R/bad-registry.toml"
# A registry that serves other bytes for a digest: tamper hello's amd64 layer in its storage.
layer=$(jq -r '.layers[-1].digest' "$T/inputs/layout/blobs/sha256/$(jq -r '.manifests[] | select(.platform.architecture == "amd64") | .digest' "$T/inputs/layout/blobs/sha256/${HELLO_DIGEST#sha256:}" | cut -d: -f2)")
hexd=${layer#sha256:}
data=$T/registry/storage/docker/registry/v2/blobs/sha256/${hexd:0:2}/$hexd/data
[ -f "$data" ] || fail "cannot find layer $layer in the registry storage"
printf 'tampered' >>"$data"
rm -f "$EDGEIMG_CACHE/blobs/sha256/$hexd"
must_fail "digest mismatch from the registry" "layer $layer: the registry sent content with digest" -- build --recipe "$R/k3s-test.toml"
ls "$EDGEIMG_CACHE/blobs/sha256/$hexd" >/dev/null 2>&1 && fail "the tampered blob entered the cache"
ok "the tampered layer was not cached"
# A vendor repository whose InRelease the board's key did not sign.
board_with_key "$T/board-wrong-key" "$T/inputs/mirror/vendor.other.asc"
must_fail "vendor repository signed by another key" "is its InRelease signed by the key the board gives?" -- \
    "$EDGEIMG" build --board "$T/board-wrong-key/qemu-x86_64.toml" --out "$T/out" --recipe "$R/k3s-test.toml"
must_fail "vendor repository signed by another key" "http://127.0.0.1:$MIRROR_PORT/vendor edge" -- \
    "$EDGEIMG" build --board "$T/board-wrong-key/qemu-x86_64.toml" --out "$T/out" --recipe "$R/k3s-test.toml"
[ -z "$(find "$T/out" -maxdepth 3 -name '.*partial*')" ] || fail "a failed build left a partial directory"
[ "$(ls "$T/out/qemu-x86_64/k3s-test")" = "1.0.0" ] || fail "failed builds left output: $(ls "$T/out/qemu-x86_64/k3s-test")"
ok "no output left by the failed builds"
done_ok
