#!/usr/bin/env bash
# PostgreSQL backup/restore benchmark, side by side in one run: `pg_dump -Fc` + `pg_restore`
# by hand against `localdr backup --postgres` + `localdr restore --to-database`, on a
# throwaway server holding `pgbench -i -s SCALE` (default 20, ~300 MB of tables).
# Each pair runs REPS times (default 3), order alternated; the table shows medians.
# Usage: SCALE=20 REPS=3 bash bench/postgres.sh [WORKDIR]   (not part of the tests)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
W="${1:-$ROOT/bench/out/postgres}"
SCALE="${SCALE:-20}"
REPS="${REPS:-3}"
bash "$ROOT/scripts/setup.sh"
# shellcheck source=/dev/null
source "$ROOT/.tools/env"
PGBIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
rm -rf "$W"; mkdir -p "$W"
AS=(); [ "$(id -u)" = 0 ] && { chown postgres:postgres "$W"; AS=(runuser -u postgres --); }
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
export PGPASSWORD="bench-$$"
echo "$PGPASSWORD" > "$W/pw"; [ "$(id -u)" = 0 ] && chown postgres:postgres "$W/pw"
"${AS[@]}" "$PGBIN/initdb" -D "$W/data" -U postgres -A scram-sha-256 --pwfile "$W/pw" >/dev/null
"${AS[@]}" "$PGBIN/pg_ctl" -D "$W/data" -l "$W/server.log" -o "-p $PORT -c listen_addresses=127.0.0.1 -k $W" -w start >/dev/null
trap '"${AS[@]}" "$PGBIN/pg_ctl" -D "$W/data" -m immediate -w stop >/dev/null 2>&1 || true' EXIT
C=(-h 127.0.0.1 -p "$PORT" -U postgres)
"$PGBIN/createdb" "${C[@]}" bench
echo "loading pgbench -i -s $SCALE …"
"$PGBIN/pgbench" "${C[@]}" -i -s "$SCALE" -q bench 2>/dev/null
SIZE=$("$PGBIN/psql" "${C[@]}" -Atc "select pg_size_pretty(pg_database_size('bench'))" bench)
echo "database size: $SIZE"
LOCALDR="$ROOT/target/release/localdr"

t() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>"$W/err" || { cat "$W/err"; exit 1; }; e=$(date +%s.%N); python3 -c "print(f'{$e-$s:.3f}')"; }
drop_db() { "$PGBIN/psql" "${C[@]}" -qc "drop database if exists $1 with (force)" postgres; }
raw_backup() { "$PGBIN/pg_dump" "${C[@]}" -Fc -f "$W/raw.dump" bench; }
raw_restore() { drop_db raw_r; "$PGBIN/createdb" "${C[@]}" raw_r; "$PGBIN/pg_restore" "${C[@]}" --no-owner --exit-on-error --single-transaction -d raw_r "$W/raw.dump"; }
ldr_backup() { "$LOCALDR" backup --vault "$W/vault" --name bench --postgres bench --pg-port "$PORT" --keep-last 2; }
ldr_restore() { drop_db ldr_r; "$LOCALDR" restore --vault "$W/vault" --name bench --latest --to-database ldr_r --yes; }

declare -a RB RR LB LR
for i in $(seq 1 "$REPS"); do
  if [ $((i % 2)) = 1 ]; then
    RB+=("$(t raw_backup)"); LB+=("$(t ldr_backup)"); RR+=("$(t raw_restore)"); LR+=("$(t ldr_restore)")
  else
    LB+=("$(t ldr_backup)"); RB+=("$(t raw_backup)"); LR+=("$(t ldr_restore)"); RR+=("$(t raw_restore)")
  fi
done
med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
rb=$(med "${RB[@]}"); rr=$(med "${RR[@]}"); lb=$(med "${LB[@]}"); lr=$(med "${LR[@]}")
dump_size=$(du -b "$W/raw.dump" | cut -f1)
vault_size=$(du -sb "$W/vault/packs" | cut -f1)
echo
echo "pgbench -s $SCALE ($SIZE), median of $REPS, order alternated"
printf '%-28s %10s %10s %8s\n' "step" "raw tools" "localdr" "ratio"
printf '%-28s %9ss %9ss %7.2fx\n' "backup (pg_dump -Fc)" "$rb" "$lb" "$(python3 -c "print($lb/$rb)")"
printf '%-28s %9ss %9ss %7.2fx\n' "restore (new database)" "$rr" "$lr" "$(python3 -c "print($lr/$rr)")"
printf '%-28s %9ss %9ss %7.2fx\n' "backup + restore" "$(python3 -c "print(f'{$rb+$rr:.3f}')")" "$(python3 -c "print(f'{$lb+$lr:.3f}')")" "$(python3 -c "print(($lb+$lr)/($rb+$rr))")"
echo "stored: pg_dump -Fc file $((dump_size/1000000)) MB; localdr packs (2 snapshots kept) $((vault_size/1000000)) MB"
echo "all runs (s): raw backup ${RB[*]} | localdr backup ${LB[*]} | raw restore ${RR[*]} | localdr restore ${LR[*]}"
