#!/usr/bin/env bash
# The main job: set up, apply the reference stack in iac/ (a real Terraform state and a data
# directory, backed up with retention and a DR copy), then damage a snapshot, let
# `localdr drift` report it, let `terraform apply` repair it, and restore the state.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
# shellcheck source=/dev/null
source "$ROOT/.tools/env"
TF="$LOCALDR_TF_NEW"
cd "$ROOT/iac"
step() { printf '\n=== %s\n' "$*"; }

# The demo is a sandbox: each run starts from scratch so it tells the same story.
localdr agent stop --state-dir .localdr >/dev/null 2>&1 || true
rm -rf demo logs .localdr terraform.tfstate terraform.tfstate.backup

step "1. the stand-in application stack (its state file is what we protect)"
"$TF" -chdir=app init -input=false -no-color >/dev/null
"$TF" -chdir=app apply -auto-approve -input=false -no-color | tail -n 4

step "2. application data"
mkdir -p demo/data/uploads demo/data/db
for i in $(seq 1 20); do
  [ -f "demo/data/uploads/file-$i.txt" ] || echo "upload $i $(date -u +%s)" > "demo/data/uploads/file-$i.txt"
done
[ -f demo/data/db/orders.csv ] || printf 'id,total\n1,10.50\n2,99.00\n' > demo/data/db/orders.csv
ls -R demo/data | head -n 8

step "3. terraform apply: the backup stack"
rm -f .terraform.lock.hcl   # the provider is rebuilt locally: its checksum changes
"$TF" init -input=false -no-color >/dev/null
"$TF" apply -auto-approve -input=false -no-color | tail -n 12
"$TF" plan -detailed-exitcode -input=false -no-color >/dev/null && echo "re-plan: no changes"

step "4. what is in the vaults"
localdr list --vault demo/vault
localdr verify --vault demo/vault
localdr verify --vault demo/dr-vault --max-age 24h

step "5. disaster: a byte of the newest state snapshot rots"
snap="$("$TF" output -raw state_snapshot_id)"
pack="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["packs"][0]["id"])' "demo/vault/snapshots/$snap.json")"
python3 - "demo/vault/packs/$pack.pack" <<'PY'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(8); b = f.read(1); f.seek(8); f.write(bytes([b[0] ^ 0xFF]))
PY
echo "flipped one byte in demo/vault/packs/$pack.pack"
set +e
localdr verify --vault demo/vault --name app-state; echo "localdr verify exit code: $?"
localdr drift --dir .; code=$?
set -e
echo "localdr drift exit code: $code (2 = drift)"
[ "$code" = 2 ]

step "6. terraform apply repairs it"
"$TF" apply -auto-approve -input=false -no-color | grep -E 'ensure_valid|Apply complete'
localdr drift --dir .
echo "report files: $(ls logs | tr '\n' ' ')"

step "7. the damaged snapshot is kept (nothing is deleted behind your back); forget it"
localdr forget --vault demo/vault --id "$snap"
localdr verify --vault demo/vault

step "8. restore the protected state next to the original"
localdr restore --vault demo/vault --name app-state --latest --to demo/restored.tfstate
python3 -c 'import json; s=json.load(open("demo/restored.tfstate")); print("restored state: serial", s["serial"], "lineage", s["lineage"])'
step "9. the web tier: a pool of 3 replicas kept running by the agent"
localdr status --state-dir .localdr
desired="$(localdr status --state-dir .localdr --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["services"][0]["status"]["desired"])')"
if [ "$desired" -gt 0 ]; then
  for port in $(seq 18080 $((18080 + desired - 1))); do
    printf '127.0.0.1:%s -> HTTP %s\n' "$port" "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/")"
  done

  step "10. chaos: kill -9 replica 1; the agent restarts it"
  localdr chaos kill --state-dir .localdr --service web --replica 1
  sleep 1
  localdr status --state-dir .localdr | sed -n '1,6p'
else
  echo "(the night window is in force: the pool is scaled to zero, which is not drift)"
fi

step "11. disaster: the agent dies (kill -9); plan shows it, apply brings it back"
kill -9 "$(python3 -c 'import json; print(json.load(open(".localdr/agent.json"))["pid"])')"
sleep 0.5
set +e
localdr drift --dir .; code=$?
set -e
echo "localdr drift exit code: $code (2 = drift)"
[ "$code" = 2 ]
"$TF" apply -auto-approve -input=false -no-color | grep -E 'ensure_running|Apply complete'
"$TF" plan -detailed-exitcode -input=false -no-color >/dev/null && echo "re-plan: no changes"

step "12. what the pool cost so far, and what the night window saves"
localdr cost --state-dir .localdr --since 1h

step "13. stop the agent (the pool with it); the next terraform apply starts both again"
localdr agent stop --state-dir .localdr
echo
echo "demo complete: vaults in iac/demo/, drift reports in iac/logs/, agent state in iac/.localdr/"
