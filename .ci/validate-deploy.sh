#!/usr/bin/env bash
# Offline validation of the deployment files: docker/compose.yml, docker/Dockerfile,
# docker/k8s/*.yaml, the Fluent Bit pipeline with its sample records, and Grafana's
# provisioning (docker/grafana/: data source, dashboard provider, dashboards).
#
#   bash .ci/validate-deploy.sh
#
# Needs Python 3 with pip and venv, and network access to PyPI on the first run only: the
# tools are installed into virtual environments under
# ${XDG_CACHE_HOME:-$HOME/.cache}/panopticon-ci/ and reused afterwards. kubectl (for the
# kustomization) and bash, curl and jq (to run the Fluent Bit sidecar script against a fake
# kubelet) are used when present; each missing one skips only its own check.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/panopticon-ci"
# The Kubernetes versions the manifests are checked against: an older one still common on
# kind and managed clusters, and the newest the schemas know.
K8S_VERSIONS=(1.29.0 1.37.0)

PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" > /dev/null 2>&1; then
      PYTHON="$candidate"
      break
    fi
  done
fi
if [ -z "$PYTHON" ]; then
  echo "validate-deploy: python3 not found" >&2
  exit 1
fi

passed=0
failed=0
skipped=0
summary=()

# run_check NAME COMMAND...: runs one check, records its outcome, never stops the script.
run_check() {
  local name="$1"
  shift
  echo
  echo "== $name"
  if "$@"; then
    passed=$((passed + 1))
    summary+=("PASS  $name")
  else
    failed=$((failed + 1))
    summary+=("FAIL  $name")
  fi
}

skip_check() {
  echo
  echo "== $1"
  echo "  skip $2"
  skipped=$((skipped + 1))
  summary+=("SKIP  $1 ($2)")
}

# ensure_venv DIR STAMP INSTALL_COMMAND...: creates DIR once per STAMP (the pinned
# requirements), so that reruns reuse it and a changed pin rebuilds it.
ensure_venv() {
  local dir="$1" stamp="$2"
  shift 2
  if [ -f "$dir/.stamp" ] && [ "$(cat "$dir/.stamp")" = "$stamp" ] && [ -x "$dir/bin/python" ]; then
    return 0
  fi
  echo "validate-deploy: creating $dir"
  rm -rf "$dir"
  mkdir -p "$(dirname "$dir")"
  "$PYTHON" -m venv "$dir"
  "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  "$@"
  echo "$stamp" > "$dir/.stamp"
}

# docker-compose 1.29 (the last Python release; it reads the Compose Specification incl.
# depends_on conditions and profiles). Its PyYAML 5.4.1 only builds with Cython < 3.
COMPOSE_VENV="$CACHE_DIR/venv-compose"
install_compose() {
  local pip=("$COMPOSE_VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
  "${pip[@]}" "cython<3" wheel
  "${pip[@]}" --no-build-isolation "pyyaml==5.4.1"
  "${pip[@]}" "docker-compose==1.29.2"
}

# kubernetes-validate (schemas per Kubernetes version), lupa (LuaJIT, to run the Fluent
# Bit Lua filter), dockerfile (BuildKit's Dockerfile parser).
TOOLS_VENV="$CACHE_DIR/venv-tools"
install_tools() {
  "$TOOLS_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "kubernetes-validate==1.37.0" "lupa==2.8" "dockerfile==3.4.0"
}

ensure_venv "$COMPOSE_VENV" "cython<3 wheel pyyaml==5.4.1 docker-compose==1.29.2" install_compose
ensure_venv "$TOOLS_VENV" "kubernetes-validate==1.37.0 lupa==2.8 dockerfile==3.4.0" install_tools

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

compose_config() {
  # No .env or shell values leak in: the file's own defaults are what is checked.
  env -u KAFKA_KIND_HOST -u PANOPTICON_IMAGE -u RUST_LOG -u SIMULATOR_PODS -u SIMULATOR_INTERVAL_MS \
    "$COMPOSE_VENV/bin/docker-compose" --project-directory docker -f docker/compose.yml "$@"
}

check_compose() {
  compose_config config -q &&
    echo "  ok   docker-compose 1.29.2 config -q" &&
    compose_config --profile simulator config > "$WORK/compose.resolved.yml" &&
    "$TOOLS_VENV/bin/python" .ci/validate_deploy.py compose "$WORK/compose.resolved.yml"
}

check_grafana() {
  compose_config config > "$WORK/compose.grafana.yml" &&
    "$TOOLS_VENV/bin/python" .ci/validate_deploy.py grafana docker/grafana "$WORK/compose.grafana.yml"
}

check_dockerfile() {
  "$TOOLS_VENV/bin/python" .ci/validate_deploy.py dockerfile docker/Dockerfile
}

K8S_FILES=()
for file in docker/k8s/*.yaml; do
  [ "$(basename "$file")" = "kustomization.yaml" ] || K8S_FILES+=("$file")
done

check_manifests() {
  local version
  for version in "${K8S_VERSIONS[@]}"; do
    "$TOOLS_VENV/bin/kubernetes-validate" --strict --quiet -k "$version" "${K8S_FILES[@]}" || return 1
    echo "  ok   ${#K8S_FILES[@]} files valid against Kubernetes $version (strict)"
  done
}

check_kustomization() {
  kubectl kustomize docker/k8s > "$WORK/kustomized.yaml" || return 1
  local count
  count="$(grep -c '^kind:' "$WORK/kustomized.yaml")"
  echo "  ok   kubectl kustomize docker/k8s renders $count resources"
  local version
  for version in "${K8S_VERSIONS[@]}"; do
    "$TOOLS_VENV/bin/kubernetes-validate" --strict --quiet -k "$version" "$WORK/kustomized.yaml" || return 1
    echo "  ok   rendered resources valid against Kubernetes $version (strict)"
  done
}

check_fluent_bit() {
  "$TOOLS_VENV/bin/python" .ci/validate_deploy.py fluent-bit \
    docker/k8s/fluent-bit.yaml docker/k8s/fluent-bit-sample-records.jsonl
}

run_check "compose: docker/compose.yml" check_compose
run_check "grafana: docker/grafana provisioning" check_grafana
run_check "image: docker/Dockerfile" check_dockerfile
run_check "kubernetes: docker/k8s/*.yaml" check_manifests
if command -v kubectl > /dev/null 2>&1; then
  run_check "kubernetes: kustomization" check_kustomization
else
  skip_check "kubernetes: kustomization" "kubectl not installed"
fi
run_check "fluent bit: pipeline and sample records" check_fluent_bit

echo
echo "== summary"
for line in "${summary[@]}"; do
  echo "  $line"
done
echo "validate-deploy: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
