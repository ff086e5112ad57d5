#!/usr/bin/env bash
# Offline checks of the deployment files (no Docker engine, no cluster):
#   - shellcheck on every scripts/*.sh;
#   - the Kubernetes manifests (base and production overlay) render, with
#     kubectl kustomize when kubectl is installed and with deploy/render.py,
#     to the same objects, and pass `kubernetes-validate --strict` for
#     Kubernetes $K8S_VERSION;
#   - the deploy and build scripts run in --dry-run mode, and a whole deploy runs
#     against a fake kubectl (tests/deploy/test_deploy_script.py: phase order,
#     waits, images, Secrets generated only when missing);
#   - the ServiceMonitor and PrometheusRule pass tests/deploy/check_crds.py, the
#     alert rules `promtool check rules` and `promtool test rules`
#     (tests/deploy/alerts.test.yaml), the dashboard's queries `promtool check rules`;
#   - tests/deploy/check_consistency.py: manifests against the binary (settings,
#     ports, routes, metrics), the Dockerfile, the Ingress paths of the specification;
#     the Docker build context (per .dockerignore) holds the workspace and a Cargo.lock
#     that `cargo build --locked` accepts;
#   - tests/deploy/test_checks_catch_errors.py: those checks catch planted mistakes.
# Installs what it needs when missing: PyYAML and kubernetes-validate (pip), the
# Debian package of shellcheck (apt), and promtool, unpacked from Debian's
# prometheus package without installing it (no Prometheus server is set up).
# Exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

K8S_VERSION="${K8S_VERSION:-1.31.0}"
# No __pycache__ folders in the work tree.
export PYTHONDONTWRITEBYTECODE=1
KUBERNETES_VALIDATE_VERSION=1.37.0
TOOLS_DIR="${CLAIRON_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/clairon-deploy-tools}"

passed=0
failed=0
failures=()
step() { printf '\n==> %s\n' "$*"; }
die() { printf 'check-deploy.sh: %s\n' "$*" >&2; exit 1; }
# check NAME COMMAND...: runs it, records the outcome, goes on either way.
check() {
  local name="$1"
  shift
  if "$@"; then
    passed=$((passed + 1))
    printf 'PASS %s\n' "$name"
  else
    failed=$((failed + 1))
    failures+=("$name")
    printf 'FAIL %s\n' "$name"
  fi
}

pip_install() {
  export PIP_ROOT_USER_ACTION=ignore
  python3 -m pip install --quiet --disable-pip-version-check "$@" \
    || python3 -m pip install --quiet --disable-pip-version-check --user --break-system-packages "$@"
}

apt_ready=false
apt_update_once() {
  if ! $apt_ready; then
    [ "$(id -u)" = 0 ] || return 1
    apt-get update -qq >/dev/null 2>&1 || return 1
    apt_ready=true
  fi
}

step "Prerequisites"
command -v python3 >/dev/null || die "python3 is required"
if ! python3 -c 'import yaml' 2>/dev/null; then
  pip_install pyyaml || die "could not install PyYAML (pip install pyyaml)"
fi
if ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
  echo "installing kubernetes-validate ${KUBERNETES_VALIDATE_VERSION} (pip)"
  pip_install "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}" || die "could not install kubernetes-validate"
fi
if ! command -v shellcheck >/dev/null; then
  echo "installing shellcheck (apt)"
  { apt_update_once && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends shellcheck >/dev/null; } \
    || die "could not install shellcheck (apt-get install shellcheck, as root)"
fi
PROMTOOL="$(command -v promtool || true)"
if [ -z "$PROMTOOL" ]; then
  PROMTOOL="$TOOLS_DIR/promtool"
  if [ ! -x "$PROMTOOL" ]; then
    echo "unpacking promtool from Debian's prometheus package into $TOOLS_DIR"
    deb_dir="$(mktemp -d)"
    download() { (cd "$deb_dir" && apt-get download prometheus >/dev/null 2>&1); }
    if ! download; then
      if ! { apt_update_once && download; }; then
        die "could not download Debian's prometheus package (run apt-get update as root, or install promtool)"
      fi
    fi
    if ! { mkdir -p "$TOOLS_DIR" && dpkg-deb -x "$deb_dir"/prometheus_*.deb "$deb_dir/x" \
      && install -m 0755 "$deb_dir/x/usr/bin/promtool" "$PROMTOOL"; }; then
      die "could not unpack promtool"
    fi
    rm -rf "$deb_dir"
  fi
fi
KUBECTL="${KUBECTL:-kubectl}"
have_kubectl=false
if command -v "$KUBECTL" >/dev/null 2>&1; then
  have_kubectl=true
fi
printf 'python3 %s, kubernetes-validate %s, %s, %s, kubectl: %s\n' \
  "$(python3 -c 'import sys; print(sys.version.split()[0])')" \
  "$(python3 -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))')" \
  "$(shellcheck --version | sed -n 's/^version: /shellcheck /p')" \
  "$("$PROMTOOL" --version 2>&1 | head -1 | cut -d' ' -f1-3)" \
  "$($have_kubectl && "$KUBECTL" version --client 2>/dev/null | head -1 || echo 'not installed (render.py only)')"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

step "Shell scripts"
for f in scripts/*.sh; do
  check "bash -n $f" bash -n "$f"
  check "shellcheck $f" shellcheck "$f"
done

step "Rendering the manifests"
render_python() { python3 deploy/render.py "$1" >"$2"; }
render_kubectl() { "$KUBECTL" kustomize "$1" >"$2"; }
same_objects() {
  python3 - "$1" "$2" <<'EOF'
import sys, yaml
def load(p):
    with open(p) as f:
        return {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o
                for o in yaml.safe_load_all(f) if o}
a, b = load(sys.argv[1]), load(sys.argv[2])
diff = sorted(set(a) ^ set(b)) + sorted(k for k in set(a) & set(b) if a[k] != b[k])
for k in diff:
    print("  differs:", "/".join(k))
sys.exit(1 if diff else 0)
EOF
}
declare -A rendered
for overlay in base production monitoring; do
  case "$overlay" in
    base) dir=deploy/kubernetes/base ;;
    production) dir=deploy/kubernetes/overlays/production ;;
    monitoring) dir=deploy/kubernetes/monitoring ;;
  esac
  check "render.py renders $dir" render_python "$dir" "$work/$overlay.python.yaml"
  rendered[$overlay]="$work/$overlay.python.yaml"
  if $have_kubectl; then
    check "kubectl kustomize renders $dir" render_kubectl "$dir" "$work/$overlay.kubectl.yaml"
    check "render.py and kubectl kustomize agree on $dir" same_objects "$work/$overlay.kubectl.yaml" "$work/$overlay.python.yaml"
    rendered[$overlay]="$work/$overlay.kubectl.yaml"
  fi
done

step "kubernetes-validate --strict, Kubernetes ${K8S_VERSION}"
for overlay in base production; do
  check "kubernetes-validate --strict $overlay" \
    python3 -m kubernetes_validate --strict --quiet -k "$K8S_VERSION" "${rendered[$overlay]}"
done

step "Scripts in dry-run mode"
dry_run() {
  local out="$work/dry-$1-$2.yaml"
  KUBECTL="$3" scripts/deploy-to-kubernetes.sh --dry-run --overlay "$1" ${4:+--renderer "$4"} >"$out" 2>"$out.err" || {
    cat "$out.err"
    return 1
  }
  grep -q 'https\?://notifications.example.com/kafka-ui' "$out.err" || { echo "  no URLs printed"; return 1; }
  [ "$4" = files ] && return 0
  python3 -c 'import sys, yaml; objs = [o for o in yaml.safe_load_all(open(sys.argv[1])) if o]; sys.exit(0 if len(objs) > 40 else 1)' "$out"
}
for overlay in base production; do
  check "deploy-to-kubernetes.sh --dry-run --overlay $overlay (no kubectl)" dry_run "$overlay" python /nonexistent/kubectl ""
  check "deploy-to-kubernetes.sh --dry-run --overlay $overlay --renderer files" dry_run "$overlay" files /nonexistent/kubectl files
  if $have_kubectl; then
    check "deploy-to-kubernetes.sh --dry-run --overlay $overlay (kubectl)" dry_run "$overlay" kubectl "$KUBECTL" ""
  fi
done
image_set() {
  local n
  n="$(REGISTRY=reg.example.org/team TAG=1.2.3 KUBECTL=/nonexistent/kubectl \
    scripts/deploy-to-kubernetes.sh --dry-run 2>/dev/null | grep -c 'image: reg.example.org/team/clairon:1.2.3$')"
  # Five services and the topic Job.
  [ "$n" = 6 ] || { echo "  $n containers got the image"; return 1; }
}
build_dry_run() {
  REGISTRY=reg.example.org/team TAG=1.2.3 scripts/build-docker-images.sh --dry-run --push >"$work/build.out" || return 1
  grep -q '^+ docker build --file Dockerfile --tag reg.example.org/team/clairon:1.2.3 --tag reg.example.org/team/clairon:latest ' "$work/build.out" \
    && grep -q '^+ docker push reg.example.org/team/clairon:1.2.3$' "$work/build.out" \
    && grep -q '^+ docker push reg.example.org/team/clairon:latest$' "$work/build.out"
}
check "deploy-to-kubernetes.sh deploys \$REGISTRY/clairon:\$TAG" image_set
check "build-docker-images.sh --dry-run --push" build_dry_run
check "tests/deploy/test_deploy_script.py (a deploy against a fake kubectl)" python3 tests/deploy/test_deploy_script.py

step "The image's build context"
# What `docker build .` receives (per .dockerignore) must hold the whole
# workspace, with a Cargo.lock that `cargo build --locked` accepts.
build_context() {
  python3 tests/deploy/check_consistency.py --build-context "$work/context" || return 1
  if ! command -v cargo >/dev/null; then
    echo "  cargo is not installed: the workspace check is skipped"
    return 0
  fi
  (cd "$work/context" && { cargo metadata --locked --offline --format-version 1 >/dev/null 2>&1 \
    || cargo metadata --locked --format-version 1 >/dev/null; })
}
check "the build context holds the whole workspace and an up-to-date Cargo.lock" build_context

step "Prometheus Operator objects and alert rules"
mkdir -p "$work/rules"
check "tests/deploy/check_crds.py" python3 tests/deploy/check_crds.py --monitoring "${rendered[monitoring]}" \
  --platform "${rendered[base]}" --platform "${rendered[production]}" --extract-rules "$work/rules/clairon.rules.yaml"
cp tests/deploy/alerts.test.yaml "$work/rules/"
check "promtool check rules" "$PROMTOOL" check rules "$work/rules/clairon.rules.yaml"
check "promtool test rules tests/deploy/alerts.test.yaml" "$PROMTOOL" test rules "$work/rules/alerts.test.yaml"

step "Consistency with the binary"
check "tests/deploy/check_consistency.py" python3 tests/deploy/check_consistency.py \
  --rendered "base=${rendered[base]}" --rendered "production=${rendered[production]}" \
  --monitoring "${rendered[monitoring]}" --dashboard-rules "$work/dashboard.rules.yaml"
check "promtool check rules (the dashboard's queries)" "$PROMTOOL" check rules "$work/dashboard.rules.yaml"
check "tests/deploy/test_checks_catch_errors.py" python3 tests/deploy/test_checks_catch_errors.py

printf '\n'
if [ "$failed" -gt 0 ]; then
  printf 'Failed:\n'
  printf '  %s\n' "${failures[@]}"
fi
printf 'check-deploy: %d passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
