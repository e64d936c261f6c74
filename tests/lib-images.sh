# Test inputs served on 127.0.0.1 (sourced after lib.sh): a local OCI registry (Debian's
# docker-registry), test images built with umoci and pushed with skopeo, and a local HTTP
# mirror holding the K3s stand-in and a stand-in airgap archive.

REGISTRY_PORT=${REGISTRY_PORT:-5000}
REGISTRY=127.0.0.1:$REGISTRY_PORT
MIRROR_PORT=${MIRROR_PORT:-8088}
K3S_VERSION=v1.34.2+k3s1

# start_registry DIR: run docker-registry with its storage in DIR until the test exits.
start_registry() {
    local dir=$1
    mkdir -p "$dir/storage"
    cat >"$dir/config.yml" <<CFG
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
http:
  addr: $REGISTRY
CFG
    docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
    REGISTRY_PID=$!
    for _ in $(seq 50); do
        curl -sf "http://$REGISTRY/v2/" >/dev/null && return 0
        sleep 0.2
    done
    fail "docker-registry did not start ($dir/registry.log)"
}

# start_mirror DIR: static HTTP server for DIR on 127.0.0.1:$MIRROR_PORT.
start_mirror() {
    python3 -m http.server "$MIRROR_PORT" --bind 127.0.0.1 --directory "$1" >"$1.log" 2>&1 &
    MIRROR_PID=$!
    for _ in $(seq 50); do
        curl -sf "http://127.0.0.1:$MIRROR_PORT/" >/dev/null && return 0
        sleep 0.2
    done
    fail "mirror did not start ($1.log)"
}

# k3s_pins: set K3S_SHA256, AIRGAP_AMD64 and AIRGAP_ARM64, the sha256 pins of what
# make_test_images put on the mirror (after make_test_images).
k3s_pins() {
    K3S_SHA256=$(sha256sum <"$ROOT/tests/k3s-standin/k3s" | cut -c1-64)
    AIRGAP_AMD64=$(sha256sum <"$T/inputs/mirror/$K3S_VERSION/k3s-airgap-images-amd64.tar.zst" | cut -c1-64)
    AIRGAP_ARM64=$(sha256sum <"$T/inputs/mirror/$K3S_VERSION/k3s-airgap-images-arm64.tar.zst" | cut -c1-64)
}

# make_vendor_repo DIR: a signed apt repository in DIR, the way a board vendor publishes
# one: suite "edge", component main, amd64 and arm64, holding edgeimg-vendor-firmware 1.0
# (one file under /usr/lib/firmware). Signed by a key made fresh for this run; its public
# half goes to DIR.key.asc, and a key that did not sign anything to DIR.other.asc. Both are
# INSECURE throwaway test keys.
make_vendor_repo() {
    local R=$1 P=$1.pkg G=$1.gnupg a k
    rm -rf "$R" "$P" "$G"
    mkdir -p "$R/pool" "$P/DEBIAN" "$P/usr/lib/firmware/edgeimg-vendor"
    echo "edgeimg test vendor firmware" >"$P/usr/lib/firmware/edgeimg-vendor/marker.bin"
    printf 'Package: edgeimg-vendor-firmware\nVersion: 1.0\nArchitecture: all\nMaintainer: edgeimg tests <tests@example.invalid>\nDescription: edgeimg test package from a vendor repository\n' \
        >"$P/DEBIAN/control"
    dpkg-deb --root-owner-group -Zgzip --build "$P" "$R/pool/edgeimg-vendor-firmware_1.0_all.deb" >/dev/null
    for a in amd64 arm64; do
        mkdir -p "$R/dists/edge/main/binary-$a"
        (cd "$R" && apt-ftparchive --arch "$a" packages pool >"dists/edge/main/binary-$a/Packages")
    done
    (cd "$R/dists/edge" && apt-ftparchive -o APT::FTPArchive::Release::Suite=edge -o APT::FTPArchive::Release::Codename=edge \
        -o APT::FTPArchive::Release::Architectures="amd64 arm64" -o APT::FTPArchive::Release::Components=main release . >"$R.Release")
    mv "$R.Release" "$R/dists/edge/Release"
    for k in key other; do
        mkdir -p -m 700 "$G/$k"
        GNUPGHOME=$G/$k gpg -q --batch --pinentry-mode loopback --passphrase '' \
            --quick-gen-key "edgeimg test vendor $k (INSECURE, test only)" ed25519 sign never 2>/dev/null
        GNUPGHOME=$G/$k gpg -q --armor --export >"$R.$k.asc"
    done
    GNUPGHOME=$G/key gpg -q --batch --yes --clearsign -o "$R/dists/edge/InRelease" "$R/dists/edge/Release"
    rm -rf "$P" "$G"
}

stop_services() {
    [ -n "${REGISTRY_PID:-}" ] && kill "$REGISTRY_PID" 2>/dev/null
    [ -n "${MIRROR_PID:-}" ] && kill "$MIRROR_PID" 2>/dev/null
    true
}

# busybox_for ARCH DIR: a static busybox for ARCH (from Debian's busybox-static).
busybox_for() {
    local arch=$1 dir=$2
    mkdir -p "$dir"
    if [ ! -f "$dir/busybox-$arch" ]; then
        (cd "$dir" && apt-get download -qq "busybox-static:$arch" >/dev/null 2>&1) || fail "cannot download busybox-static:$arch (dpkg --add-architecture $arch; apt-get update)"
        dpkg-deb -x "$dir"/busybox-static_*_"$arch".deb "$dir/x-$arch"
        cp "$dir/x-$arch/bin/busybox" "$dir/busybox-$arch"
        rm -rf "$dir/x-$arch" "$dir"/busybox-static_*_"$arch".deb
    fi
}

# umoci_image LAYOUT TAG ARCH BUSYBOX [EXTRA_FILE_CONTENT]: one image, busybox as /bin,
# plus an optional second layer with /hello.txt. Same busybox => same first layer.
umoci_image() {
    local L=$1 tag=$2 arch=$3 bb=$4 extra=${5:-}
    local b; b=$(mktemp -d)
    umoci new --image "$L:$tag-base" 2>/dev/null || true
    umoci unpack --image "$L:$tag-base" "$b/bundle" >/dev/null
    mkdir -p "$b/bundle/rootfs/bin"
    cp "$bb" "$b/bundle/rootfs/bin/busybox"
    for c in sh echo cat ls; do ln -sf busybox "$b/bundle/rootfs/bin/$c"; done
    # Fixed mtimes: the same busybox gives the same layer digest in every image.
    find "$b/bundle/rootfs" -exec touch -h -d @1735689600 {} +
    umoci repack --image "$L:$tag" --history.created=2025-01-01T00:00:00Z "$b/bundle" >/dev/null
    if [ -n "$extra" ]; then
        rm -rf "$b/bundle"
        umoci unpack --image "$L:$tag" "$b/bundle" >/dev/null
        printf '%s\n' "$extra" >"$b/bundle/rootfs/hello.txt"
        find "$b/bundle/rootfs" -exec touch -h -d @1735689600 {} +
        umoci repack --image "$L:$tag" --history.created=2025-01-01T00:00:00Z "$b/bundle" >/dev/null
    fi
    umoci config --image "$L:$tag" --architecture "$arch" --os linux --config.cmd /bin/sh \
        --created 2025-01-01T00:00:00Z --history.created=2025-01-01T00:00:00Z >/dev/null
    umoci rm --image "$L:$tag-base" 2>/dev/null || true
    rm -rf "$b"
}

# oci_index LAYOUT TAG AMD64_TAG ARM64_TAG: add an image index TAG over two manifests.
oci_index() {
    local L=$1 tag=$2 a=$3 r=$4 da db sa sb idx d
    da=$(jq -r --arg t "$a" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' "$L/index.json")
    db=$(jq -r --arg t "$r" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' "$L/index.json")
    sa=$(stat -c %s "$L/blobs/sha256/${da#sha256:}")
    sb=$(stat -c %s "$L/blobs/sha256/${db#sha256:}")
    idx=$(jq -cn --arg da "$da" --arg db "$db" --argjson sa "$sa" --argjson sb "$sb" '{schemaVersion:2, mediaType:"application/vnd.oci.image.index.v1+json", manifests:[
        {mediaType:"application/vnd.oci.image.manifest.v1+json", digest:$da, size:$sa, platform:{os:"linux", architecture:"amd64"}},
        {mediaType:"application/vnd.oci.image.manifest.v1+json", digest:$db, size:$sb, platform:{os:"linux", architecture:"arm64", variant:"v8"}}]}')
    d=$(printf '%s' "$idx" | sha256sum | cut -c1-64)
    printf '%s' "$idx" >"$L/blobs/sha256/$d"
    jq --arg d "sha256:$d" --argjson s "${#idx}" --arg t "$tag" \
        '.manifests += [{mediaType:"application/vnd.oci.image.index.v1+json", digest:$d, size:$s, annotations:{"org.opencontainers.image.ref.name":$t}}]' \
        "$L/index.json" >"$L/index.json.new" && mv "$L/index.json.new" "$L/index.json"
}

# registry_digest REPO TAG: the digest the registry serves for a tag (index if multi-arch).
registry_digest() {
    curl -sf -I -H "Accept: application/vnd.oci.image.index.v1+json" -H "Accept: application/vnd.oci.image.manifest.v1+json" \
        "http://$REGISTRY/v2/$1/manifests/$2" | tr -d '\r' | awk -F': ' 'tolower($1) == "docker-content-digest" {print $2}'
}

# make_test_images WORKDIR: push edgeimg/hello:1.0 (amd64+arm64 index) and
# edgeimg/app:2.0 (amd64+arm64, shares hello's busybox layer) to the registry, and build
# the stand-in airgap archives. Sets HELLO_DIGEST and APP_DIGEST.
make_test_images() {
    local W=$1 L=$1/layout
    rm -rf "$L" && umoci init --layout "$L"
    busybox_for amd64 "$W/bb"
    busybox_for arm64 "$W/bb"
    for a in amd64 arm64; do
        umoci_image "$L" "hello-$a" "$a" "$W/bb/busybox-$a" "hello from the edgeimg test image ($a)"
        umoci_image "$L" "app-$a" "$a" "$W/bb/busybox-$a" "app 2.0 ($a)"
        umoci_image "$L" "pause-$a" "$a" "$W/bb/busybox-$a"
    done
    oci_index "$L" hello-multi hello-amd64 hello-arm64
    oci_index "$L" app-multi app-amd64 app-arm64
    skopeo copy -q --all --dest-tls-verify=false "oci:$L:hello-multi" "docker://$REGISTRY/edgeimg/hello:1.0"
    skopeo copy -q --all --dest-tls-verify=false "oci:$L:app-multi" "docker://$REGISTRY/edgeimg/app:2.0"
    HELLO_DIGEST=$(registry_digest edgeimg/hello 1.0)
    APP_DIGEST=$(registry_digest edgeimg/app 2.0)
    [ -n "$HELLO_DIGEST" ] && [ -n "$APP_DIGEST" ] || fail "test images are not in the registry"
    # Stand-ins for K3s's airgap archive: a "pause" image under K3s's real name.
    mkdir -p "$W/mirror/$K3S_VERSION"
    for a in amd64 arm64; do
        rm -f "$W/airgap-$a.tar"
        skopeo copy -q "oci:$L:pause-$a" "oci-archive:$W/airgap-$a.tar:docker.io/rancher/mirrored-pause:3.6"
        zstd -q -f --long=25 "$W/airgap-$a.tar" -o "$W/mirror/$K3S_VERSION/k3s-airgap-images-$a.tar.zst"
    done
    cp "$ROOT/tests/k3s-standin/k3s" "$W/mirror/$K3S_VERSION/k3s"
    cp "$ROOT/tests/k3s-standin/k3s" "$W/mirror/$K3S_VERSION/k3s-arm64"
}
