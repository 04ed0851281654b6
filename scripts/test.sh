#!/usr/bin/env bash
# All tests: lint, unit tests, end-to-end tests against the real Terraform 1.0.3 and the
# modern one, and the module's `terraform test` suite. Output ends with the runners' own
# summaries.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
# shellcheck source=/dev/null
source "$ROOT/.tools/env"
cd "$ROOT"

echo "== cargo fmt --check / clippy -D warnings"
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets --quiet -- -D warnings

echo "== cargo test (unit + end-to-end)"
cargo test --release --workspace 2>&1 | tee "$ROOT/.tools/cargo-test.log" | grep -vE '^test .* \.\.\. ok$'
summary="$(grep -E '^test result:' "$ROOT/.tools/cargo-test.log")"
grep -q 'FAILED' "$ROOT/.tools/cargo-test.log" && failed=1 || failed=0

echo "== terraform test ($("$LOCALDR_TF_NEW" version | head -n 1))"
mod="$ROOT/iac/modules/protected-data"
rm -rf "$mod/.tftest" "$mod/.terraform" "$mod/.terraform.lock.hcl"
"$LOCALDR_TF_NEW" -chdir="$mod" init -input=false -no-color >/dev/null
set +e
"$LOCALDR_TF_NEW" -chdir="$mod" test -no-color > "$ROOT/.tools/tftest.log" 2>&1
tf_code=$?
set -e
rm -rf "$mod/.tftest"

echo
echo "== summaries"
echo "$summary"
cat "$ROOT/.tools/tftest.log"
[ "$failed" = 0 ] && [ "$tf_code" = 0 ]
