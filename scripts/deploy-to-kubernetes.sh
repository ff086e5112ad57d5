#!/usr/bin/env bash
# Deploys Clairon to Kubernetes from deploy/kubernetes, step by step: namespace,
# network policies, configuration and secrets, MySQL and Kafka (waiting until
# they are up), the topic Job, the services and Kafka UI (waiting for their
# rollouts), the Ingress, and the monitoring objects when Prometheus Operator is
# installed. Then prints the URLs.
#
#   REGISTRY=registry.example.com TAG=1.4.0 scripts/deploy-to-kubernetes.sh --overlay production
#   scripts/deploy-to-kubernetes.sh --dry-run > rendered.yaml      # no cluster needed
#
# Options:
#   --overlay NAME   base (one Kafka node, one replica each; the default) or production
#   --dry-run        render the manifests to stdout and the plan to stderr; touches no cluster
#   --renderer R     kubectl (kubectl kustomize), python (deploy/render.py) or files (just
#                    list the files); default: kubectl if installed, else python, else files
#   --no-monitoring  skip the ServiceMonitor, PrometheusRule and Grafana dashboard
#   --timeout T      how long to wait for each rollout (kubectl duration)   default: 10m
# Settings (environment):
#   REGISTRY, IMAGE_NAME, TAG   the image: $REGISTRY/$IMAGE_NAME:$TAG, as built by
#                               scripts/build-docker-images.sh (defaults: registry.example.com,
#                               clairon, latest); IMAGE overrides all three
#   KUBECTL                     the kubectl to use                       default: kubectl
# Secrets: created only when missing from the cluster (never overwritten), from
#   CLAIRON_JWT_SECRET, CLAIRON_ADMIN_PASSWORD, CLAIRON_DB_PASSWORD, MYSQL_ROOT_PASSWORD,
#   KAFKA_UI_PASSWORD (each generated when unset) and, when set, CLAIRON_SMTP_URL,
#   CLAIRON_SMTP_USERNAME, CLAIRON_SMTP_PASSWORD, CLAIRON_SMS_URL, CLAIRON_SMS_TOKEN,
#   CLAIRON_KAFKA_SASL_MECHANISM, CLAIRON_KAFKA_SASL_USERNAME, CLAIRON_KAFKA_SASL_PASSWORD.
set -euo pipefail
cd "$(dirname "$0")/.."

NS=notifications-platform
PLACEHOLDER_IMAGE=registry.example.com/clairon:latest
PHASES=(namespace policy config secrets data topics services edge)

die() { printf 'deploy-to-kubernetes.sh: %s\n' "$*" >&2; exit 1; }
say() { printf '%s\n' "$*" >&2; }
step() { printf '\n==> %s\n' "$*" >&2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

overlay=base
dry_run=false
renderer=
monitoring=true
timeout=10m
while [ $# -gt 0 ]; do
  case "$1" in
    --overlay) [ $# -ge 2 ] || die "--overlay needs a name"; overlay="$2"; shift ;;
    --overlay=*) overlay="${1#*=}" ;;
    --dry-run) dry_run=true ;;
    --renderer) [ $# -ge 2 ] || die "--renderer needs a value"; renderer="$2"; shift ;;
    --renderer=*) renderer="${1#*=}" ;;
    --no-monitoring) monitoring=false ;;
    --timeout) [ $# -ge 2 ] || die "--timeout needs a duration"; timeout="$2"; shift ;;
    --timeout=*) timeout="${1#*=}" ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done

case "$overlay" in
  base) kdir=deploy/kubernetes/base ;;
  production) kdir=deploy/kubernetes/overlays/production ;;
  *) die "unknown overlay $overlay (base or production)" ;;
esac
mdir=deploy/kubernetes/monitoring
dashboard=deploy/grafana/clairon-dashboard.json

KUBECTL="${KUBECTL:-kubectl}"
have_kubectl=false
if command -v "$KUBECTL" >/dev/null 2>&1; then
  have_kubectl=true
fi
have_python=false
if command -v python3 >/dev/null 2>&1 && python3 -c 'import yaml' >/dev/null 2>&1; then
  have_python=true
fi
if [ -z "$renderer" ]; then
  if $have_kubectl; then renderer=kubectl
  elif $have_python; then renderer=python
  else renderer=files
  fi
fi
case "$renderer" in
  kubectl) $have_kubectl || die "--renderer kubectl: $KUBECTL is not installed" ;;
  python) $have_python || die "--renderer python: needs python3 with PyYAML (pip install pyyaml)" ;;
  files) $dry_run || die "--renderer files only lists files: it needs --dry-run" ;;
  *) die "unknown renderer $renderer (kubectl, python or files)" ;;
esac
if ! $dry_run && ! $have_kubectl; then
  die "$KUBECTL is not installed: install kubectl, or use --dry-run"
fi

if [ -n "${IMAGE:-}" ]; then
  image="$IMAGE"
else
  registry="${REGISTRY:-registry.example.com}"
  image="${registry%/}/${IMAGE_NAME:-clairon}:${TAG:-latest}"
fi
case "$image" in
  *[!A-Za-z0-9_.:/@-]*) die "image \"$image\" has characters an image reference cannot have" ;;
esac

work="$(mktemp -d)"
chmod 700 "$work"
trap 'rm -rf "$work"' EXIT

# Renders a kustomization directory to stdout, with the chosen image.
render() {
  case "$renderer" in
    kubectl) "$KUBECTL" kustomize "$1" ;;
    python) python3 deploy/render.py "$1" ;;
  esac | sed "s|image: ${PLACEHOLDER_IMAGE}\$|image: ${image}|"
}

# Prints "phase kind name" for each object of a rendered stream (kustomize and
# render.py both write top-level keys at column 0 and two-space indents).
objects() {
  awk '
    function flush() { if (kind != "") printf "%s %s %s\n", (phase == "" ? "-" : phase), kind, name }
    /^---/ { flush(); kind = ""; name = ""; phase = ""; top = ""; next }
    /^[A-Za-z]/ { top = $1 }
    /^kind: / { kind = $2 }
    top == "metadata:" && /^  name: / { name = $2 }
    top == "metadata:" && /^    clairon.dev\/deploy-phase: / { phase = $2 }
    END { flush() }
  ' "$1"
}

# The files a kustomization lists, in order (for --renderer files).
list_files() {
  local dir="$1" res
  sed -n '/^resources:/,/^[a-z]/{s/^  - //p}' "$dir/kustomization.yaml" | while read -r res; do
    if [ -d "$dir/$res" ]; then
      res="$(cd "$dir/$res" && pwd -P)"
      list_files "${res#"$(pwd -P)/"}"
    else
      printf '%s\n' "$dir/$res"
    fi
  done
  sed -n '/^patches:/,/^[a-z]/{s/^  - path: //p}' "$dir/kustomization.yaml" | while read -r res; do
    printf '%s (patch)\n' "$dir/$res"
  done
}

host_of() {
  awk '/^kind: Ingress/ { ing = 1 } /^---/ { ing = 0 } ing && /- host: / { print $3; exit }' "$1"
}

print_urls() {
  local scheme="$1" host="$2"
  say ""
  say "Clairon at ${scheme}://${host}:"
  say "  Web interface:   ${scheme}://${host}/"
  say "  Dashboard:       ${scheme}://${host}/dashboard"
  say "  Notifications:   ${scheme}://${host}/notifications"
  say "  Monitoring:      ${scheme}://${host}/monitoring"
  say "  API gateway:     ${scheme}://${host}/api"
  say "    Users:         ${scheme}://${host}/api/users"
  say "    Notifications: ${scheme}://${host}/api/notifications"
  say "    Events:        ${scheme}://${host}/api/events"
  say "    Logs:          ${scheme}://${host}/api/logs"
  say "  WebSocket:       ${scheme/http/ws}://${host}/ws"
  say "  Kafka UI:        ${scheme}://${host}/kafka-ui"
}

# ---------------------------------------------------------------- dry run
if $dry_run; then
  if [ "$renderer" = files ]; then
    say "No kubectl and no python3 with PyYAML: listing the files instead of rendering them."
    say "These files, with the namespace ${NS}, the image ${image} and the patches applied, would be deployed:"
    list_files "$kdir"
    if $monitoring; then
      say "Then, when the Prometheus Operator CRDs exist:"
      list_files "$mdir"
      printf '%s\n' "$dashboard"
    fi
    scheme=http
    if [ -f "$kdir/ingress.yaml" ] && grep -q '^  tls:' "$kdir/ingress.yaml"; then scheme=https; fi
    print_urls "$scheme" "$(host_of deploy/kubernetes/base/ingress.yaml)"
    exit 0
  fi
  render "$kdir" >"$work/platform.yaml"
  objects "$work/platform.yaml" >"$work/objects"
  say "Dry run: overlay ${overlay}, rendered with ${renderer}, image ${image}. Nothing is applied."
  say "Plan:"
  for phase in "${PHASES[@]}"; do
    list="$(awk -v p="$phase" '$1 == p { printf "%s%s/%s", sep, $2, $3; sep = ", " }' "$work/objects")"
    case "$phase" in
      secrets) say "  ${phase}: created with generated values when missing, never overwritten: ${list}" ;;
      data) say "  ${phase}: ${list}; then wait for the MySQL and Kafka rollouts" ;;
      topics) say "  ${phase}: ${list} (deleted and run anew); then wait for it to complete" ;;
      services) say "  ${phase}: ${list}; then wait for every rollout" ;;
      *) say "  ${phase}: ${list}" ;;
    esac
  done
  unphased="$(awk '$1 == "-" { printf "%s/%s ", $2, $3 }' "$work/objects")"
  [ -z "$unphased" ] || die "objects without a clairon.dev/deploy-phase label: $unphased"
  cat "$work/platform.yaml"
  if $monitoring; then
    render "$mdir" >"$work/monitoring.yaml"
    say "  monitoring (when the Prometheus Operator CRDs exist): $(objects "$work/monitoring.yaml" | awk '{ printf "%s%s/%s", sep, $2, $3; sep = ", " }'), and the Grafana dashboard ConfigMap from ${dashboard}"
    printf -- '---\n'
    cat "$work/monitoring.yaml"
  fi
  host="$(host_of "$work/platform.yaml")"
  scheme=http
  if grep -q '^  tls:' "$work/platform.yaml"; then scheme=https; fi
  print_urls "$scheme" "$host"
  exit 0
fi

# ---------------------------------------------------------------- deploy
k() { "$KUBECTL" "$@"; }
kn() { "$KUBECTL" -n "$NS" "$@"; }

apply_phase() {
  step "Applying phase $1"
  k apply -f "$work/platform.yaml" --selector "clairon.dev/deploy-phase=$1"
}

secret_exists() { kn get secret "$1" >/dev/null 2>&1; }

random_string() {
  # Hex from the kernel's generator; $1 characters (at most 128).
  head -c 64 /dev/urandom | od -An -tx1 | tr -d ' \n' | cut -c "1-$1"
}

# Creates Secret $1 from the KEY=VALUE lines of file $2 (values never reach the
# command line), with the platform's labels.
create_secret() {
  kn create secret generic "$1" --from-env-file="$2"
  kn label secret "$1" app.kubernetes.io/part-of=clairon clairon.dev/deploy-phase=secrets >/dev/null
  rm -f "$2"
}

ensure_secrets() {
  step "Secrets"
  local have_app=false have_db=false generated_admin=""
  secret_exists clairon-secrets && have_app=true
  secret_exists mysql-credentials && have_db=true
  if $have_app && $have_db; then
    say "clairon-secrets and mysql-credentials exist: kept as they are."
  elif ! $have_app && ! $have_db; then
    local db_password="${CLAIRON_DB_PASSWORD:-$(random_string 32)}"
    local jwt="${CLAIRON_JWT_SECRET:-$(random_string 64)}"
    [ "${#jwt}" -ge 32 ] || die "CLAIRON_JWT_SECRET must be at least 32 bytes"
    local admin="${CLAIRON_ADMIN_PASSWORD:-}"
    if [ -z "$admin" ]; then
      admin="$(random_string 20)"
      generated_admin="$admin"
    fi
    umask 077
    {
      printf 'MYSQL_ROOT_PASSWORD=%s\n' "${MYSQL_ROOT_PASSWORD:-$(random_string 32)}"
      printf 'MYSQL_DATABASE=clairon\nMYSQL_USER=clairon\n'
      printf 'MYSQL_PASSWORD=%s\n' "$db_password"
    } >"$work/mysql.env"
    {
      printf 'CLAIRON_JWT_SECRET=%s\n' "$jwt"
      printf 'CLAIRON_DATABASE_URL=mysql://clairon:%s@mysql.%s.svc.cluster.local:3306/clairon\n' "$db_password" "$NS"
      printf 'CLAIRON_ADMIN_PASSWORD=%s\n' "$admin"
      local var
      for var in CLAIRON_SMTP_URL CLAIRON_SMTP_USERNAME CLAIRON_SMTP_PASSWORD CLAIRON_SMS_URL \
        CLAIRON_SMS_TOKEN CLAIRON_KAFKA_SASL_MECHANISM CLAIRON_KAFKA_SASL_USERNAME CLAIRON_KAFKA_SASL_PASSWORD; do
        if [ -n "${!var:-}" ]; then
          printf '%s=%s\n' "$var" "${!var}"
        fi
      done
    } >"$work/clairon.env"
    create_secret mysql-credentials "$work/mysql.env"
    create_secret clairon-secrets "$work/clairon.env"
  else
    die "only one of the Secrets clairon-secrets and mysql-credentials exists; their database passwords must agree: create the missing one by hand (see deploy/kubernetes/base/secrets.yaml) or delete both"
  fi
  if secret_exists kafka-ui-credentials; then
    say "kafka-ui-credentials exists: kept as it is."
  else
    local ui_password="${KAFKA_UI_PASSWORD:-$(random_string 20)}"
    umask 077
    printf 'SPRING_SECURITY_USER_NAME=admin\nSPRING_SECURITY_USER_PASSWORD=%s\n' "$ui_password" >"$work/ui.env"
    create_secret kafka-ui-credentials "$work/ui.env"
    if [ -z "${KAFKA_UI_PASSWORD:-}" ]; then
      say "Kafka UI login: admin / ${ui_password} (kept in the Secret kafka-ui-credentials)"
    fi
  fi
  if [ -n "$generated_admin" ]; then
    say "Clairon administrator: ${CLAIRON_ADMIN_EMAIL:-admin@clairon.local} / ${generated_admin} (kept in the Secret clairon-secrets)"
  fi
}

step "Rendering ${kdir} with ${renderer} (image ${image})"
render "$kdir" >"$work/platform.yaml"
k cluster-info >/dev/null 2>&1 || die "$KUBECTL cannot reach a cluster (check your kubeconfig context)"

apply_phase namespace
apply_phase policy
apply_phase config
ensure_secrets

apply_phase data
step "Waiting for MySQL and Kafka"
kn rollout status statefulset/mysql --timeout="$timeout"
kn rollout status statefulset/kafka --timeout="$timeout"

step "Creating the topics (job/kafka-topics)"
kn delete job kafka-topics --ignore-not-found --wait=true
apply_phase topics
if ! kn wait --for=condition=complete job/kafka-topics --timeout="$timeout"; then
  kn logs job/kafka-topics --tail=50 >&2 || true
  die "the topic Job did not complete"
fi

apply_phase services
step "Waiting for the services"
for d in users notifications events logs web kafka-ui; do
  kn rollout status "deployment/$d" --timeout="$timeout"
done

apply_phase edge

if $monitoring; then
  if k get crd servicemonitors.monitoring.coreos.com prometheusrules.monitoring.coreos.com >/dev/null 2>&1; then
    step "Monitoring: ServiceMonitor, PrometheusRule, Grafana dashboard"
    render "$mdir" >"$work/monitoring.yaml"
    k apply -f "$work/monitoring.yaml"
    # The Grafana sidecar of kube-prometheus-stack loads ConfigMaps labelled grafana_dashboard.
    kn create configmap clairon-grafana-dashboard --from-file=clairon.json="$dashboard" \
      --dry-run=client -o yaml >"$work/dashboard.yaml"
    k label --local -f "$work/dashboard.yaml" grafana_dashboard=1 app.kubernetes.io/part-of=clairon \
      clairon.dev/deploy-phase=monitoring -o yaml >"$work/dashboard-labelled.yaml"
    k apply -f "$work/dashboard-labelled.yaml"
  else
    say "Prometheus Operator CRDs not found: skipped the ServiceMonitor, PrometheusRule and dashboard (apply them with: kubectl apply -k ${mdir})."
  fi
fi

step "Deployed"
kn get pods -o wide >&2
host="$(kn get ingress clairon -o jsonpath='{.spec.rules[0].host}')"
scheme=http
if [ -n "$(kn get ingress clairon -o jsonpath='{.spec.tls[0].secretName}')" ]; then scheme=https; fi
address="$(kn get ingress clairon -o jsonpath='{.status.loadBalancer.ingress[0].ip}{.status.loadBalancer.ingress[0].hostname}')"
print_urls "$scheme" "$host"
if [ -n "$address" ]; then
  say "The Ingress answers at ${address}: point ${host} at it (DNS, or /etc/hosts for a test)."
else
  say "The Ingress has no address yet: kubectl -n ${NS} get ingress clairon"
fi
