#!/usr/bin/env bash
# Backup benchmark, side by side in one run (recipe: ../shared/design/bench-backup.md).
# localdr backup (first, no change), restore, verify, DR copy — against `tar | zstd -1 -T0`,
# `zstd -dc | tar -x` and restic 0.14 (backup, no change, restore, check --read-data, copy).
# Page cache dropped before every step when allowed; each step under /usr/bin/time.
# Every step runs REPS times (default 3; this disk's speed swings ±25% run to run): the
# table shows the median time and the largest peak RSS.
# Usage: REPS=3 bash bench/backup.sh [WORKDIR]   (needs ~8 GB free; not part of the tests)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
W="${1:-$ROOT/bench/out/backup}"
GEN="${BENCH_DATASET_GEN:-$ROOT/../shared/bench/gen_backup_dataset.py}"
bash "$ROOT/scripts/setup.sh"
# shellcheck source=/dev/null
source "$ROOT/.tools/env"
for tool in restic zstd; do
  command -v "$tool" >/dev/null || { sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo; $sudo_ apt-get install -y -q "$tool" >/dev/null; }
done
[ -x /usr/bin/time ] || { sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo; $sudo_ apt-get install -y -q time >/dev/null; }
LOCALDR="$ROOT/target/release/localdr"
mkdir -p "$W"
DATA="$W/data"
if [ ! -f "$DATA/.complete" ]; then
  [ -f "$GEN" ] || { echo "dataset generator not found at $GEN (set BENCH_DATASET_GEN)"; exit 1; }
  echo "generating the dataset in $DATA (once)…"
  rm -rf "$DATA"; python3 "$GEN" "$DATA"; touch "$DATA/.complete"
fi
BYTES=$(du -sb --exclude=.complete "$DATA" | cut -f1)
MB=$(python3 -c "print($BYTES/1e6)")
export RESTIC_PASSWORD=bench RESTIC_CACHE_DIR="$W/restic-cache"

drop() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || DROP_WARN=1; }
DROP_WARN=0
REPS="${REPS:-3}"
declare -A SEC RSS ALL
# step NAME CMD...: run under /usr/bin/time after dropping caches; record seconds and peak RSS.
step() {
  local name="$1"; shift
  drop
  /usr/bin/time -f "%e %M" -o "$W/time.txt" "$@" >"$W/$name.log" 2>&1 || { echo "step $name failed:"; tail -5 "$W/$name.log"; exit 1; }
  read -r s k < "$W/time.txt"
  ALL[$name]="${ALL[$name]:-} $s"
  SEC[$name]=$(python3 -c "import statistics,sys; print(statistics.median(map(float, sys.argv[1:])))" ${ALL[$name]})
  local mib=$((k / 1024)); [ "$mib" -gt "${RSS[$name]:-0}" ] && RSS[$name]=$mib
  printf '  %-22s %7.2f s  %5d MiB\n' "$name" "$s" "$mib"
}
clean() { rm -rf "$W"/ldv "$W"/ldv-dr "$W"/ld-restore "$W"/tar.zst "$W"/untar "$W"/restic "$W"/restic2 "$W"/restic-restore "$W/restic-cache"; }
clean
echo "dataset: $(python3 -c "print(round($BYTES/2**20))") MiB in $(find "$DATA" -type f | wc -l) files; $(nproc) cores"

# Steps that are compared run back to back, and which of the two goes first alternates
# from run to run: on a disk whose speed drifts, this keeps the comparison fair.
pair() { # rep FIRST SECOND: run two step functions, swapping their order on even runs
  if [ $(( $1 % 2 )) = 1 ]; then "$2"; "$3"; else "$3"; "$2"; fi
}
s_tar()        { step tar_zstd      bash -c "tar -C '$DATA' -cf - . | zstd -1 -T0 -q -o '$W/tar.zst'"; }
s_untar()      { rm -rf "$W/untar"; mkdir -p "$W/untar"; step unzstd_untar bash -c "zstd -dc -q '$W/tar.zst' | tar -C '$W/untar' -xf -"; }
s_rbackup()    { step restic_backup   restic -q -r "$W/restic" backup "$DATA"; }
s_rnochange()  { step restic_nochange restic -q -r "$W/restic" backup "$DATA"; }
s_rrestore()   { step restic_restore  restic -q -r "$W/restic" restore latest --target "$W/restic-restore"; }
s_rcheck()     { step restic_check    restic -q -r "$W/restic" check --read-data; }
s_rcopy()      { step restic_copy     restic -q -r "$W/restic2" copy --from-repo "$W/restic" --from-password-command "echo bench"; }
s_lbackup()    { step ld_backup   "$LOCALDR" backup --vault "$W/ldv" --name data --path "$DATA"; }
s_lnochange()  { step ld_nochange "$LOCALDR" backup --vault "$W/ldv" --name data --path "$DATA"; }
s_lrestore()   { step ld_restore  "$LOCALDR" restore --vault "$W/ldv" --latest --to "$W/ld-restore"; }
s_lverify()    { step ld_verify   "$LOCALDR" verify --vault "$W/ldv"; }
s_lcopy()      { step ld_copy     "$LOCALDR" copy --vault "$W/ldv" --to-vault "$W/ldv-dr"; }
for rep in $(seq "$REPS"); do
  echo "run $rep of $REPS:"
  clean
  restic init -q -r "$W/restic" >/dev/null
  pair "$rep" s_tar s_lbackup
  s_rbackup
  pair "$rep" s_rnochange s_lnochange
  pair "$rep" s_untar s_lrestore
  s_rrestore
  pair "$rep" s_rcheck s_lverify
  restic init -q -r "$W/restic2" --from-repo "$W/restic" --from-password-command "echo bench" --copy-chunker-params >/dev/null
  pair "$rep" s_rcopy s_lcopy
  diff -r --exclude=.complete "$DATA" "$W/ld-restore" >/dev/null || { echo "localdr restore differs from the source"; exit 1; }
  echo "  restore verified identical with diff -r"
done
stored=$(du -sb "$W/ldv/packs" | cut -f1); tarz=$(stat -c %s "$W/tar.zst")

r() { python3 -c "print(f'{$1:.2f}')"; }
mbs() { python3 -c "print(f'{$MB/$1:7.0f}')"; }
echo
echo "== backup benchmark: median of $REPS runs, $(python3 -c "print(round($MB))") MB, stored $(($stored/1048576)) MiB (tar.zst $(($tarz/1048576)) MiB)$([ "$DROP_WARN" = 1 ] && echo '; page cache NOT dropped (no permission)')"
printf '%-18s %9s %8s %8s   %-30s %9s %8s %8s\n' "localdr step" "s" "MB/s" "RSS MiB" "peer" "s" "MB/s" "RSS MiB"
row() { printf '%-18s %9.2f %8s %8d   %-30s %9.2f %8s %8d\n' "$1" "${SEC[$2]}" "$(mbs "${SEC[$2]}")" "${RSS[$2]}" "$3" "${SEC[$4]}" "$(mbs "${SEC[$4]}")" "${RSS[$4]}"; }
row "backup (first)"  ld_backup   "tar -c | zstd -1 -T0"      tar_zstd
row "backup (first)"  ld_backup   "restic backup"             restic_backup
row "backup no-change" ld_nochange "restic backup, no change" restic_nochange
row "restore"         ld_restore  "zstd -dc | tar -x"         unzstd_untar
row "restore"         ld_restore  "restic restore"            restic_restore
row "verify"          ld_verify   "restic check --read-data"  restic_check
row "DR copy"         ld_copy     "restic copy"               restic_copy
echo
echo "targets (speed ratio = peer seconds / localdr seconds):"
chk() { python3 -c "
v=$2
ok = v >= $3 if '$4' == '>=' else v <= $3
print(f'  {\"PASS\" if ok else \"MISS\"}  {\"$1\":44s} {v:6.2f}  (target $4 $3)')"; }
chk "first backup vs tar|zstd -1 -T0 (speed)"  "${SEC[tar_zstd]}/${SEC[ld_backup]}"         1.0 ">="
chk "first backup vs restic (speed)"           "${SEC[restic_backup]}/${SEC[ld_backup]}"    1.5 ">="
chk "no-change time / restic no-change time"   "${SEC[ld_nochange]}/${SEC[restic_nochange]}" 0.5 "<="
chk "restore vs zstd -dc|tar -x (speed)"       "${SEC[unzstd_untar]}/${SEC[ld_restore]}"    1.0 ">="
chk "verify vs restic check --read-data"       "${SEC[restic_check]}/${SEC[ld_verify]}"     1.0 ">="
chk "DR copy vs restic copy (speed)"           "${SEC[restic_copy]}/${SEC[ld_copy]}"        5.0 ">="
maxrss=0; for k in ld_backup ld_nochange ld_restore ld_verify ld_copy; do [ "${RSS[$k]}" -gt "$maxrss" ] && maxrss=${RSS[$k]}; done
chk "peak RSS of any localdr step (MiB)"       "$maxrss" 100 "<="
clean
