#!/bin/bash
# Run a staged batch on this VM, upload each model's result as it finishes, then delete the VM.
#
#   bash run_analysis.sh [RUN_ID [BUCKET]]      (started by startup.sh; defaults come from metadata)
#
# Instance metadata read here:
#   ops-hpc-run-id, ops-hpc-bucket   which run, which bucket
#   ops-hpc-models                   optional comma/space separated subset of model names (fan-out shards,
#                                    relaunches after preemption); default: every model of the batch
#   ops-hpc-time-scale               local cloud only: model timeouts are divided by it (default 1)
#   ops-hpc-log-interval             seconds between log uploads while a model runs (default 5)
#
# Bucket layout (see README, "run-staged"):
#   in:   _uploads/RUN_ID/batch.json, _uploads/RUN_ID/MODEL.zip
#   out:  RUN_ID/MODEL.zip (the model's new or changed files + opensees.log + MANIFEST.json)
#         _status/RUN_ID/VM.txt, _status/RUN_ID.txt, _status/latest.txt (key=value lines)
#         _logs/RUN_ID/MODEL.log (uploaded every few seconds while it runs), _logs/RUN_ID/_vm-VM.log
# A model that fails or times out still uploads what it produced, marked failed/timeout in its manifest.
# After the last model the VM deletes itself; max run duration stays the backstop. If a result could
# not be uploaded the VM stays up (status upload_failed) so `make emergency` can still save it.
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=vm-scripts/lib.sh
source "$HERE/lib.sh"

RUN_ID="${1:-$(ops_md_attr ops-hpc-run-id)}"
OPS_BUCKET="${2:-$(ops_md_attr ops-hpc-bucket)}"
export OPS_BUCKET
VM=$(ops_md instance/name || hostname)
SUBSET=$(ops_md_attr ops-hpc-models "" | tr ',' ' ')
SCALE=$(ops_md_attr ops-hpc-time-scale 1)
LOG_EVERY=$(ops_md_attr ops-hpc-log-interval 5)
WORK="$(ops_path /opt/ops-hpc/work)/${RUN_ID}"
RUNLOG="${WORK}/_vm-${VM}.log"
STARTED=$(ops_now)
LAST_UPLOAD=""
STATE="booting"
CURRENT=0
CURRENT_MODEL=""
MODEL_TIMEOUT=""
declare -a NAMES=()
declare -A MSTATE=() MSECS=()

mkdir -p "$WORK"
exec > >(tee -a "$RUNLOG") 2>&1

status_text() {
  local name
  printf 'format=1\nrun_id=%s\nvm=%s\nstate=%s\nmodels=%s\ncurrent=%s\ncurrent_model=%s\n' \
    "$RUN_ID" "$VM" "$STATE" "${#NAMES[@]}" "$CURRENT" "$CURRENT_MODEL"
  printf 'current_timeout_s=%s\nstarted=%s\nupdated=%s\nlast_upload=%s\n' "$MODEL_TIMEOUT" "$STARTED" "$(ops_now)" "$LAST_UPLOAD"
  for name in "${NAMES[@]}"; do
    printf 'model.%s=%s%s\n' "$name" "${MSTATE[$name]}" "${MSECS[$name]:+ ${MSECS[$name]}}"
  done
}

publish_status() {
  # this VM's own file first (the PC reads it), then the run's and the bucket's latest views
  local text
  text=$(status_text)
  ops_gcs_put_text "_status/${RUN_ID}/${VM}.txt" "$text" || ops_log "could not write the status file"
  ops_gcs_put_text "_status/${RUN_ID}.txt" "$text" || true
  ops_gcs_put_text "_status/latest.txt" "$text" || true
}

upload_runlog() { ops_gcs_upload "$RUNLOG" "_logs/${RUN_ID}/_vm-${VM}.log" text/plain > /dev/null || true; }

finish() {
  # $1: final state. Self-delete unless a result is stranded on this disk.
  STATE="$1"
  CURRENT_MODEL=""
  publish_status
  ops_log "run ${RUN_ID} on ${VM}: ${STATE}"
  upload_runlog
  if [ "$STATE" = "upload_failed" ]; then
    ops_log "keeping this VM: results are on its disk under ${WORK}; max run duration deletes it"
    exit 1
  fi
  ops_self_delete
  exit 0
}

# shellcheck disable=SC2329  # invoked by the TERM trap
on_term() {
  # spot preemption or shutdown: say so while we can (GCE gives a spot VM 30 s)
  trap - TERM
  STATE="preempted"
  [ -n "$CURRENT_MODEL" ] && MSTATE[$CURRENT_MODEL]="interrupted"
  ops_log "SIGTERM: the VM is being stopped (preempted?)"
  publish_status
  upload_runlog
  exit 143
}
trap on_term TERM

ops_log "run ${RUN_ID} on VM ${VM}, bucket ${OPS_BUCKET}"
publish_status  # the PC's launch waits for this first status: the VM is up and can reach the bucket

if ! ops_gcs_download "_uploads/${RUN_ID}/batch.json" "$WORK/batch.json"; then
  ops_log "no staged batch at gs://${OPS_BUCKET}/_uploads/${RUN_ID}/batch.json"
  finish error
fi
# name <TAB> main <TAB> cores <TAB> timeout seconds (scaled) <TAB> zip object <TAB> crc32c
ops_python - "$WORK/batch.json" "$SCALE" "$SUBSET" > "$WORK/models.tsv" <<'PY'
import json, sys
batch = json.load(open(sys.argv[1]))
scale = float(sys.argv[2] or 1) or 1.0
subset = sys.argv[3].split()
for m in batch["models"]:
    if subset and m["name"] not in subset:
        continue
    print("\t".join([m["name"], m["main"], str(m["cores"]), "%.3f" % (m["timeout_min"] * 60.0 / scale), m["zip"], m["crc32c"]]))
PY
while IFS=$'\t' read -r name _; do
  NAMES+=("$name")
  MSTATE[$name]="pending"
done < "$WORK/models.tsv"
[ "${#NAMES[@]}" -gt 0 ] || { ops_log "no models to run (subset: ${SUBSET:-all})"; finish error; }
STATE="running"
STRANDED=0

while IFS=$'\t' read -r -u 3 name main cores secs zip crc; do
  CURRENT=$((CURRENT + 1))
  CURRENT_MODEL="$name"
  MODEL_TIMEOUT="$secs"
  MSTATE[$name]="running"
  publish_status
  dir="$WORK/models/$name"
  log="$dir/opensees.log"
  rm -rf "$dir"
  mkdir -p "$dir"
  ops_log "model ${CURRENT}/${#NAMES[@]} ${name}: downloading"
  state="failed"
  rc=1
  t0=$(ops_epoch)
  started=$(ops_now)
  got=""
  if ops_gcs_download "$zip" "$WORK/$name.in.zip"; then got=$(ops_crc32c "$WORK/$name.in.zip"); fi
  if [ "$got" != "$crc" ]; then
    echo "ops-hpc: staged input $zip missing or damaged (crc32c ${got:-none}, expected $crc)" > "$log"
    ops_pyhelp snapshot "$dir" "$WORK/$name.inputs"
  else
    ops_python -m zipfile -e "$WORK/$name.in.zip" "$dir/"
    rm -f "$WORK/$name.in.zip"
    ops_pyhelp snapshot "$dir" "$WORK/$name.inputs"
    ops_log "model ${name}: openseesmp ${cores} ${main} (timeout ${secs} s)"
    t0=$(ops_epoch)
    started=$(ops_now)
    (cd "$dir" && exec timeout -k 10 "$secs" openseesmp "$cores" "$main") > "$log" 2>&1 < /dev/null &
    pid=$!
    (while sleep "$LOG_EVERY"; do ops_gcs_upload "$log" "_logs/${RUN_ID}/${name}.log" text/plain > /dev/null; done) &
    streamer=$!
    wait "$pid"
    rc=$?
    kill "$streamer" 2> /dev/null
    wait "$streamer" 2> /dev/null
    case "$rc" in
      0) state="ok" ;;
      124) state="timeout" ;;
      137) state="failed"
           # killed: by timeout's -k after the model ignored SIGTERM, or by something else (OOM)
           ops_python -c 'import sys; sys.exit(0 if float(sys.argv[2]) - float(sys.argv[1]) >= float(sys.argv[3]) else 1)' \
             "$t0" "$(ops_epoch)" "$secs" && state="timeout" ;;
      *) state="failed" ;;
    esac
    [ "$state" = "timeout" ] && echo "ops-hpc: stopped after the model's timeout of ${secs} s" >> "$log"
  fi
  t1=$(ops_epoch)
  seconds=$(ops_python -c 'import sys; print("%.3f" % (float(sys.argv[2]) - float(sys.argv[1])))' "$t0" "$t1")
  MSTATE[$name]="uploading"
  MSECS[$name]="$seconds"
  ops_gcs_upload "$log" "_logs/${RUN_ID}/${name}.log" text/plain > /dev/null || true
  read -r nfiles nbytes < <(ops_pyhelp result "$dir" "$WORK/$name.inputs" "$WORK/$name.zip" \
    "run_id=${RUN_ID}" "model=${name}" "state=${state}" "exit_code=${rc}" "started=${started}" \
    "finished=$(ops_now)" "seconds=${seconds}" "vm=${VM}")
  ops_log "model ${name}: ${state} (exit ${rc}, ${seconds} s), ${nfiles:-?} file(s), ${nbytes:-?} bytes: uploading"
  if ops_gcs_upload_verified "$WORK/$name.zip" "${RUN_ID}/${name}.zip" application/zip; then
    LAST_UPLOAD=$(ops_epoch)
    MSTATE[$name]="$state"
    rm -rf "$dir" "$WORK/$name.zip" "$WORK/$name.inputs"
  else
    MSTATE[$name]="upload_failed"
    STRANDED=$((STRANDED + 1))
    ops_log "model ${name}: result upload FAILED; it stays at ${WORK}/${name}.zip"
  fi
done 3< "$WORK/models.tsv"

if [ "$STRANDED" -gt 0 ]; then finish upload_failed; fi
finish "done"
