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
PGBIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
AS=(); [ "$(id -u)" = 0 ] && AS=(runuser -u postgres --)
pg_stop() { [ -d demo/pg/data ] && "${AS[@]}" "$PGBIN/pg_ctl" -D demo/pg/data -m fast -w stop >/dev/null 2>&1 || true; }
pg_stop
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

step "2b. the application database: a throwaway PostgreSQL with the seed's shop schema"
mkdir -p demo/pg
[ "$(id -u)" = 0 ] && chown postgres:postgres demo/pg
PGPORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
head -c 18 /dev/urandom | base64 | tr -d '/+=' > demo/pg/password
chmod 600 demo/pg/password; [ "$(id -u)" = 0 ] && chown postgres:postgres demo/pg/password
"${AS[@]}" "$PGBIN/initdb" -D "$PWD/demo/pg/data" -U postgres -A scram-sha-256 --pwfile "$PWD/demo/pg/password" >/dev/null
"${AS[@]}" "$PGBIN/pg_ctl" -D "$PWD/demo/pg/data" -l "$PWD/demo/pg/server.log" -o "-p $PGPORT -c listen_addresses=127.0.0.1 -k $PWD/demo/pg" -w start >/dev/null
export PGPASSFILE="$PWD/demo/pg/pgpass"; echo "*:*:*:*:$(cat demo/pg/password)" > "$PGPASSFILE"; chmod 600 "$PGPASSFILE"
PSQL=(psql -X -q -h 127.0.0.1 -p "$PGPORT" -U postgres)
"${PSQL[@]}" -c "create database tienda" postgres
"${PSQL[@]}" tienda <<'SQL'
create table usuarios (usuario_id serial primary key, nombre varchar(100) not null, email varchar(100) unique not null);
create table productos (producto_id serial primary key, nombre varchar(100) not null, precio numeric(10,2) not null, stock integer default 0);
create table pedidos (pedido_id serial primary key, usuario_id integer not null references usuarios on delete cascade, producto_id integer not null references productos on delete cascade, cantidad integer not null);
insert into usuarios (nombre, email) select 'user ' || i, 'u' || i || '@example.com' from generate_series(1, 500) i;
insert into productos (nombre, precio, stock) select 'product ' || i, i * 1.5, i from generate_series(1, 100) i;
insert into pedidos (usuario_id, producto_id, cantidad) select 1 + i % 500, 1 + i % 100, 1 + i % 7 from generate_series(1, 5000) i;
SQL
export TF_VAR_database="{\"port\": $PGPORT, \"name\": \"tienda\", \"password_file\": \"$PWD/demo/pg/password\"}"
echo "PostgreSQL on 127.0.0.1:$PGPORT, database tienda: $("${PSQL[@]}" -Atc 'select count(*) from pedidos' tienda) pedidos"

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

  step "9b. the load balancer in front of the pool"
  for i in 1 2 3 4 5 6; do curl -s -D - -o /dev/null "http://127.0.0.1:18000/" | grep -i '^x-request-id' | tr -d '\r' | sed "s/^/request $i: /"; done
  curl -s "http://$("$TF" output -raw web_admin)/targets"; echo
  curl -s "http://$("$TF" output -raw web_admin)/metrics" | grep -E '^localdr_requests_total'

  step "9c. the request queue: 20 request files and one malformed, dispatched to the pool"
  localdr loadgen --queue-dir demo/queue/incoming --files 20
  echo '{"not": "a request"}' > demo/queue/incoming/.bad.tmp && mv demo/queue/incoming/.bad.tmp demo/queue/incoming/bad_request.json
  for _ in $(seq 100); do
    [ -z "$(find demo/queue/incoming -maxdepth 1 -type f ! -name '.*')" ] && [ -f demo/queue/errors/bad_request.json ] \
      && [ "$(find demo/queue/workers -path '*/processed/*' -type f | wc -l)" -ge 20 ] && break
    sleep 0.1
  done
  sleep 0.6  # the agent publishes the counts every 500 ms
  localdr status --state-dir .localdr | sed -n '/^balancer requests/,$p'
  echo "processed per worker: $(for w in demo/queue/workers/*/; do printf '%s=%s ' "$(basename "$w")" "$(find "$w/processed" -type f | wc -l)"; done)"
  echo "errors/: $(ls demo/queue/errors | tr '\n' ' ')"
  python3 -c 'import json; print("reason:", json.load(open("demo/queue/errors/bad_request.json.reason.json"))["output"])'

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

step "13. the database: a bad deploy deletes orders; restore into a new database, then drill"
"${PSQL[@]}" -c "delete from pedidos where pedido_id % 3 = 0" tienda
echo "pedidos now: $("${PSQL[@]}" -Atc 'select count(*) from pedidos' tienda)"
localdr restore --vault demo/vault --name app-db --latest --to-database tienda_restored --pg-password-file demo/pg/password --yes
echo "pedidos in tienda_restored: $("${PSQL[@]}" -Atc 'select count(*) from pedidos' tienda_restored)"
localdr drill --vault demo/vault --backup app-db --pg-password-file demo/pg/password

step "14. stop the agent (the pool with it) and the demo database; terraform apply starts the agent again"
localdr agent stop --state-dir .localdr
pg_stop
echo
echo "demo complete: vaults in iac/demo/, drift reports in iac/logs/, agent state in iac/.localdr/"
