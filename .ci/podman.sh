#!/usr/bin/env bash
# Build the CPU variant of containers/Dockerfile with podman, offline from Docker Hub (CI, as root).
#
#   sudo bash .ci/podman.sh          # idempotent: re-running reuses the cached base image
#
# 1. installs podman, runc and debootstrap from apt (skipped when present);
# 2. writes a containers.conf drop-in (runc, cgroupfs, file events logger, ulimits) that makes
#    podman work on a machine without systemd;
# 3. builds a minimal Debian bookworm base image with debootstrap + `podman import`
#    (skipped when the image exists; MIA_HPC_REBUILD_BASE=1 forces it);
# 4. builds containers/Dockerfile on that base as $MIA_HPC_IMAGE (default localhost/mia-hpc:cpu),
#    with the host CA bundle and the host's wheel directories mounted read-only, so torch comes
#    from this disk and only what is missing there is fetched from PyPI.
# tests/test_containers.py then runs that image.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE="${MIA_HPC_BASE_IMAGE:-localhost/mia-hpc-base:bookworm}"
IMAGE="${MIA_HPC_IMAGE:-localhost/mia-hpc:cpu}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CA_FILE="${CA_FILE:-/etc/ssl/certs/ca-certificates.crt}"
# Host wheel directories (pip --find-links) and local simple indexes (DIR/simple), when present.
WHEEL_DIRS="${MIA_HPC_WHEEL_DIRS:-/opt/wheels}"
INDEX_DIRS="${MIA_HPC_INDEX_DIRS:-/opt/pypi /opt/pypi-more}"

log() { echo "podman.sh: $*" >&2; }
t0=$SECONDS

if [ "$(id -u)" != 0 ]; then
  log "must run as root (apt, debootstrap, rootful podman)"; exit 2
fi

# 1. packages
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then
  log "installing podman runc debootstrap"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq podman runc debootstrap ca-certificates >/dev/null
fi

# 2. containers.conf (a drop-in, so a machine's own containers.conf is left alone)
mkdir -p /etc/containers/containers.conf.d
cat >/etc/containers/containers.conf.d/50-mia-hpc.conf <<'EOF'
# Written by mia-hpc .ci/podman.sh: podman on a machine without systemd (CI containers/VMs).
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF

# 3. base image: minimal bookworm with python3 (cached)
if [ "${MIA_HPC_REBUILD_BASE:-0}" = 1 ] || ! podman image exists "$BASE_IMAGE"; then
  log "debootstrap bookworm -> $BASE_IMAGE"
  rootfs="$(mktemp -d /var/tmp/mia-hpc-rootfs.XXXXXX)"
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,passwd,ca-certificates \
    bookworm "$rootfs" "$MIRROR" >/dev/null
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import \
    --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
else
  log "base image $BASE_IMAGE exists (MIA_HPC_REBUILD_BASE=1 to rebuild)"
fi

# 4. the image: host wheel dirs and CA bundle read-only; pip is pointed at them by build args.
mounts=(-v "$CA_FILE:/etc/ssl/certs/host-ca.crt:ro")
find_links="" extra_index=""
for d in $WHEEL_DIRS; do
  if [ -d "$d" ]; then mounts+=(-v "$d:$d:ro"); find_links="$find_links $d"; fi
done
for d in $INDEX_DIRS; do
  if [ -d "$d/simple" ]; then mounts+=(-v "$d:$d:ro"); extra_index="$extra_index file://$d/simple"; fi
done
log "building $IMAGE from $BASE_IMAGE"
old_id="$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
podman build --network host --pull=never \
  "${mounts[@]}" \
  --build-arg BASE="$BASE_IMAGE" \
  --build-arg TORCH=cpu \
  --build-arg PIP_CERT=/etc/ssl/certs/host-ca.crt \
  --build-arg PIP_FIND_LINKS="${find_links# }" \
  --build-arg PIP_EXTRA_INDEX_URL="${extra_index# }" \
  -f containers/Dockerfile -t "$IMAGE" .
new_id="$(podman image inspect --format '{{.Id}}' "$IMAGE")"
# Drop only our own previous image (the build cache of unchanged steps stays for fast rebuilds).
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then podman rmi "$old_id" >/dev/null 2>&1 || true; fi
log "done in $((SECONDS - t0)) s: $(podman image inspect --format '{{.Id}} {{.Size}} bytes' "$IMAGE")"
