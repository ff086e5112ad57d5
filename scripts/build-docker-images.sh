#!/usr/bin/env bash
# Builds the Clairon image (one image: the `clairon` binary runs every service)
# from the repository's Dockerfile, tags it, and pushes it with --push.
#
#   REGISTRY=registry.example.com TAG=1.4.0 scripts/build-docker-images.sh --push
#
# Settings (environment):
#   REGISTRY      registry (and path) the image goes to      default: registry.example.com
#   IMAGE_NAME    repository name under REGISTRY              default: clairon
#   TAG           image tag                                   default: the git commit (short), else "dev"
#   PLATFORM      target platform, e.g. linux/arm64           default: the builder's
#   RUST_VERSION  Rust toolchain of the build stage           default: the Dockerfile's
#   DOCKER        the container CLI (docker, podman)          default: docker
# Options:
#   --push        push the tags after building
#   --dry-run     print the commands without running them
#   --no-latest   do not also tag :latest
# The same REGISTRY and TAG given to scripts/deploy-to-kubernetes.sh deploy this image.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { printf 'build-docker-images.sh: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

push=false
dry_run=false
latest=true
while [ $# -gt 0 ]; do
  case "$1" in
    --push) push=true ;;
    --dry-run) dry_run=true ;;
    --no-latest) latest=false ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done

REGISTRY="${REGISTRY:-registry.example.com}"
REGISTRY="${REGISTRY%/}"
IMAGE_NAME="${IMAGE_NAME:-clairon}"
DOCKER="${DOCKER:-docker}"
if [ -z "${TAG:-}" ]; then
  TAG="$(git rev-parse --short=12 HEAD 2>/dev/null || true)"
  TAG="${TAG:-dev}"
fi
case "$TAG" in
  *[!A-Za-z0-9_.-]* | [.-]*) die "TAG \"$TAG\" is not a valid image tag" ;;
esac

image="${REGISTRY}/${IMAGE_NAME}"
tags=("${image}:${TAG}")
if $latest && [ "$TAG" != latest ]; then
  tags+=("${image}:latest")
fi

build=("$DOCKER" build --file Dockerfile)
for t in "${tags[@]}"; do
  build+=(--tag "$t")
done
if [ -n "${PLATFORM:-}" ]; then
  build+=(--platform "$PLATFORM")
fi
if [ -n "${RUST_VERSION:-}" ]; then
  build+=(--build-arg "RUST_VERSION=${RUST_VERSION}")
fi
build+=(--label "org.opencontainers.image.version=${TAG}")
revision="$(git rev-parse HEAD 2>/dev/null || true)"
if [ -n "$revision" ]; then
  build+=(--label "org.opencontainers.image.revision=${revision}")
fi
build+=(.)

run() {
  printf '+ %s\n' "$*"
  if ! $dry_run; then
    "$@"
  fi
}

if ! $dry_run; then
  command -v "$DOCKER" >/dev/null || die "$DOCKER is not installed (set DOCKER=podman to use podman)"
  "$DOCKER" info >/dev/null 2>&1 || die "$DOCKER cannot reach its engine (is the daemon running?)"
fi

# The Dockerfile uses BuildKit cache mounts.
export DOCKER_BUILDKIT=1
run "${build[@]}"
if $push; then
  for t in "${tags[@]}"; do
    run "$DOCKER" push "$t"
  done
fi

printf '\nImage: %s\n' "${tags[*]}"
if ! $push; then
  printf 'Push it with --push, or load it into your cluster (e.g. minikube image load %s).\n' "${tags[0]}"
fi
printf 'Deploy it: REGISTRY=%s TAG=%s scripts/deploy-to-kubernetes.sh\n' "$REGISTRY" "$TAG"
