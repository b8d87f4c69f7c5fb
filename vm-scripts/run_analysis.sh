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
#   ops-hpc-max-run-end              epoch seconds when Google deletes this VM (its max run duration): a
#                                    result whose upload keeps failing is retried until shortly before it
#   ops-hpc-cores, ops-hpc-mem-mb    the usable cores (default: nproc) and memory (default: no limit) that
#                                    models are packed into (lib/packing.py decides them on the PC)
#
# Packing: models run concurrently while the sum of their cores (and mem=) fits; the queue is in pack
# order and ops_helpers.py `pick` (the one scheduling rule) says which to start whenever cores free up.
# Each model runs in its own background subshell (run_model) and reports its phase through files under
# WORK/phase/, which this shell alone turns into the status file. A model frees its cores when its last
# attempt ends (zip and upload do not hold them); retries=N re-runs a failed (not timed-out) model.
#   ops-hpc-notify, ops-hpc-notify-on  webhook URLs told when this VM's run ends ("end") and when a model
#                                    fails or times out ("failure"); ops-hpc-hourly: its list price, USD/h
#
# Bucket layout (see README, "run-staged"):
#   in:   _uploads/RUN_ID/batch.json, _uploads/RUN_ID/MODEL.zip, _uploads/RUN_ID/shared/KEY.zip (once)
#   out:  RUN_ID/MODEL.zip (the model's new or changed files + opensees.log + MANIFEST.json)
#         _status/RUN_ID/VM.txt, _status/RUN_ID.txt, _status/latest.txt (key=value lines)
#         _logs/RUN_ID/MODEL.log (uploaded every few seconds while it runs), _logs/RUN_ID/_vm-VM.log
# A model that fails or times out still uploads what it produced, marked failed/timeout in its manifest.
# After the last model the VM deletes itself; max run duration stays the backstop. If a result could
# not be uploaded, the VM says so (state=upload_failed, stranded=MODELS, work=FOLDER) and keeps retrying
# with backoff until shortly before its max run end, so the following PC or `make emergency` can copy
# the zip off its disk meanwhile. A script that dies early publishes state=error (the PC deletes the
# VM at once); SIGTERM (spot preemption, shutdown) publishes state=preempted with the unfinished models.
# A self-delete refused for good (no compute.instances.delete) publishes state=self_delete_refused and the
# VM stays up (never powered off: a stop would cancel its max run duration); the PC deletes it at once.
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
MAX_END=$(ops_md_attr ops-hpc-max-run-end "")
OPS_NOTIFY=$(ops_md_attr ops-hpc-notify "")
NOTIFY_ON=",$(ops_md_attr ops-hpc-notify-on ""),"
HOURLY=$(ops_md_attr ops-hpc-hourly "")
T_START=$(ops_epoch)
WORK="$(ops_path /opt/ops-hpc/work)/${RUN_ID}"
RUNLOG="${WORK}/_vm-${VM}.log"
STARTED=$(ops_now)
CORES=$(ops_md_attr ops-hpc-cores "")
[ -n "$CORES" ] || CORES=$(nproc 2> /dev/null || echo 1)
MEM_MB=$(ops_md_attr ops-hpc-mem-mb "")
POLL=$(ops_md_attr ops-hpc-poll 0.2)
FREE_CORES=$CORES
FREE_MEM=${MEM_MB:-0}
LAST_UPLOAD=""
STATE="booting"
ERROR=""
CURRENT=0
CURRENT_MODEL=""
MODEL_TIMEOUT=""
FINISHED=""
declare -a NAMES=() STRANDED=()
declare -A MSTATE=() MSECS=() RESULT=()  # RESULT: the model's own outcome (ok/failed/timeout) once zipped
declare -A PID=() HOLD=() SPEC=()  # running model -> its subshell; -> "cores mem" it holds; -> its tsv fields

mkdir -p "$WORK"
exec > >(tee -a "$RUNLOG") 2>&1

status_text() {
  local name stranded
  stranded=$(IFS=,; printf '%s' "${STRANDED[*]}")
  printf 'format=1\nrun_id=%s\nvm=%s\nstate=%s\nmodels=%s\ncurrent=%s\ncurrent_model=%s\n' \
    "$RUN_ID" "$VM" "$STATE" "${#NAMES[@]}" "$CURRENT" "$CURRENT_MODEL"
  printf 'current_timeout_s=%s\nstarted=%s\nupdated=%s\nlast_upload=%s\n' "$MODEL_TIMEOUT" "$STARTED" "$(ops_now)" "$LAST_UPLOAD"
  printf 'cores=%s\ncores_busy=%s\nrunning=%s\n' "$CORES" "$((CORES - FREE_CORES))" \
    "$(for name in "${NAMES[@]}"; do [ "${MSTATE[$name]}" = running ] && printf '%s,' "$name"; done | sed 's/,$//')"
  printf 'stranded=%s\nwork=%s\nerror=%s\n' "$stranded" "/opt/ops-hpc/work/${RUN_ID}" "$ERROR"
  for name in "${NAMES[@]}"; do
    printf 'model.%s=%s%s\n' "$name" "${MSTATE[$name]}" "${MSECS[$name]:+ ${MSECS[$name]}}"
  done
}

publish_status() {
  # this VM's own file first (the PC reads it), then the run's and the bucket's latest views
  local text
  ops_token > /dev/null || true  # refresh the cache here, in the main shell: every upload's subshell reuses it
  text=$(status_text)
  ops_gcs_put_text "_status/${RUN_ID}/${VM}.txt" "$text" || ops_log "could not write the status file"
  ops_gcs_put_text "_status/${RUN_ID}.txt" "$text" || true
  ops_gcs_put_text "_status/latest.txt" "$text" || true
}

upload_runlog() { ops_gcs_upload "$RUNLOG" "_logs/${RUN_ID}/_vm-${VM}.log" text/plain > /dev/null || true; }

notify_end() {
  # The run on this VM is over (done, error, upload_failed, preempted): every model's state, the VM's
  # cost at list prices, where the results are. Sent by the VM itself, so it arrives with the PC off.
  [[ "$NOTIFY_ON" == *,end,* ]] || return 0
  local name lines="" models="" up cost="" counts
  for name in "${NAMES[@]}"; do
    lines+="${name}: ${MSTATE[$name]}${MSECS[$name]:+ (${MSECS[$name]} s)}"$'\n'
    models+="${models:+,}${name}:${MSTATE[$name]}"
  done
  counts=$(for name in "${NAMES[@]}"; do printf '%s\n' "${MSTATE[$name]}"; done | sort | uniq -c |
    awk '{printf "%s%s %s", (NR > 1 ? ", " : ""), $1, $2}')
  up=$(ops_calc "$(ops_epoch) - $T_START")
  [ -n "$HOURLY" ] && cost=$(awk "BEGIN { printf \"%.4f\", $HOURLY * $up / 3600 }")
  ops_notify end "ops-hpc: run ${RUN_ID} ${STATE} on ${VM}${counts:+ (${counts})}" \
    "${lines}VM ${VM}: ${up} s${cost:+, about \$${cost} at list prices}${ERROR:+; error: ${ERROR}}
results: gs://${OPS_BUCKET}/${RUN_ID}/ (\`ops-hpc pull\` fetches them, \`ops-hpc runs\` lists the run)" \
    "run_id=${RUN_ID}" "vm=${VM}" "state=${STATE}" "models=${models}" "cost_usd=${cost}" \
    "results=gs://${OPS_BUCKET}/${RUN_ID}/"
}

finish() {
  # $1: final state. Self-delete unless a result is stranded on this disk.
  FINISHED=1
  STATE="$1"
  CURRENT_MODEL=""
  publish_status
  ops_log "run ${RUN_ID} on ${VM}: ${STATE}"
  notify_end
  upload_runlog
  if [ "$STATE" = "upload_failed" ]; then
    ops_log "keeping this VM: results are on its disk under ${WORK}; max run duration deletes it"
    exit 1
  fi
  ops_self_delete_or_stay publish_refused
  exit 0
}

# shellcheck disable=SC2329  # invoked through ops_self_delete_or_stay
publish_refused() {
  # the VM's delete was refused (IAM): say so, so the PC deletes it now; the models' outcomes stay as they are
  ERROR="${ERROR:+${ERROR}; }self-delete refused after state ${STATE}; waiting for the PC (follow/status/sweep) or the max run end"
  STATE="self_delete_refused"
  publish_status
  upload_runlog
}

# shellcheck disable=SC2329  # invoked by the TERM trap
on_term() {
  # Spot preemption or shutdown: say so while we can (GCE gives a spot VM 30 s). The same signal has
  # killed the `tee` behind stdout, so write to the run log directly and ignore SIGPIPE, or the first
  # write of this trap would end the script before the status is out.
  trap '' PIPE
  trap - TERM
  [ -n "$FINISHED" ] && exit 0  # the TERM of this VM's own self-delete: the final status is already out
  exec >> "$RUNLOG" 2>&1
  FINISHED=1
  STATE="preempted"
  sync_phases term
  for name in "${!PID[@]}"; do MSTATE[$name]="interrupted"; done
  ops_log "SIGTERM: the VM is being stopped (preempted?)"
  publish_status
  OPS_NOTIFY_ATTEMPTS=1 OPS_NOTIFY_TIMEOUT=5 notify_end  # a spot VM has 30 s: one quick try
  upload_runlog
  exit 143
}
trap on_term TERM

# shellcheck disable=SC2329  # invoked by the EXIT trap
on_exit() {
  # The script ended without finish(): publish a failure so the PC deletes this VM now, not at its max run end.
  local rc=$?
  [ -n "$FINISHED" ] && return
  FINISHED=1
  trap '' PIPE
  exec >> "$RUNLOG" 2>&1
  STATE="error"
  ERROR="run_analysis.sh ended unexpectedly (exit ${rc})"
  CURRENT_MODEL=""
  ops_log "$ERROR"
  publish_status
  notify_end
  upload_runlog
  [ "${#STRANDED[@]}" -eq 0 ] && ops_self_delete_or_stay publish_refused
}
trap on_exit EXIT

set_phase() {
  # set_phase NAME TEXT: what a model's subshell tells the main shell (atomically: it polls the file)
  printf '%s\n' "$2" > "$WORK/phase/$1.tmp" && mv -f "$WORK/phase/$1.tmp" "$WORK/phase/$1"
}

prepare() {
  # prepare NAME ZIP CRC: download and check a model's input into WORK/models/NAME with its input snapshot;
  # fails (leaving a note in its opensees.log) when the staged zip is missing or damaged.
  local name="$1" zip="$2" crc="$3" dir="$WORK/models/$1" got=""
  rm -rf "$dir"
  mkdir -p "$dir"
  if ops_gcs_download "$zip" "$WORK/$name.in.zip"; then got=$(ops_crc32c "$WORK/$name.in.zip"); fi
  if [ "$got" != "$crc" ]; then
    echo "ops-hpc: staged input $zip missing or damaged (crc32c ${got:-none}, expected $crc)" > "$dir/opensees.log"
    ops_pyhelp snapshot "$dir" "$WORK/$name.inputs"
    return 1
  fi
  ops_python -m zipfile -e "$WORK/$name.in.zip" "$dir/"
  rm -f "$WORK/$name.in.zip"
  ops_pyhelp snapshot "$dir" "$WORK/$name.inputs"
}

prefetch() {
  # In the background: prepare the queued models' inputs ahead of their start (at most CORES waiting), so
  # a model's cores go to OpenSees at once. Whoever creates WORK/claim/NAME first (this or the model's own
  # first attempt) prepares it; WORK/ready/NAME says ok or bad when the prefetch is done.
  local name main cores secs zip crc rest waiting n
  local -a mine=()
  for name in "${NAMES[@]}"; do
    while :; do
      waiting=0
      for n in "${mine[@]}"; do [ -e "$WORK/phase/$n" ] || waiting=$((waiting + 1)); done
      [ "$waiting" -lt "$CORES" ] && break
      sleep 0.2
    done
    mkdir "$WORK/claim/$name" 2> /dev/null || continue
    IFS=$'\t' read -r main cores secs zip crc rest <<< "${SPEC[$name]}"
    if prepare "$name" "$zip" "$crc"; then echo ok > "$WORK/ready/$name"; else echo bad > "$WORK/ready/$name"; fi
    mine+=("$name")
  done
}

run_once() {
  # run_once NAME MAIN CORES TIMEOUT_S ZIP CRC: take the prepared input (or prepare it now), run OpenSees
  # under its timeout. Sets state, rc, t0, started (run_model's locals; attempt says which attempt).
  local name="$1" main="$2" cores="$3" secs="$4" zip="$5" crc="$6"
  local dir="$WORK/models/$1" log pid streamer ok=ok
  log="$dir/opensees.log"
  state="failed"
  rc=1
  t0=$(ops_epoch)
  started=$(ops_now)
  if [ "$attempt" -gt 1 ] || mkdir "$WORK/claim/$name" 2> /dev/null; then
    prepare "$name" "$zip" "$crc" || ok=bad
  else
    while [ ! -s "$WORK/ready/$name" ]; do sleep 0.1; done  # the prefetch has it (or is on it)
    ok=$(cat "$WORK/ready/$name")
  fi
  [ "$ok" = ok ] || return 0
  ops_log "model ${name}: ${main} on ${cores} core(s) (timeout ${secs} s)"
  t0=$(ops_epoch)
  started=$(ops_now)
  # the helper links the shared folder, sets the model's environment and becomes openseesmp / python
  (cd "$dir" && exec timeout -k 10 "$secs" "$(command -v python3 || echo /usr/libexec/platform-python)" \
    "$OPS_HELPERS_PY" launch "$WORK/batch.json" "$name" "$cores" "$WORK/shared") > "$log" 2>&1 < /dev/null &
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
         [ "$(ops_calc "($(ops_epoch) - $t0) >= $secs")" != "0.000" ] && state="timeout" ;;
    *) state="failed" ;;
  esac
  [ "$state" = "timeout" ] && echo "ops-hpc: stopped after the model's timeout of ${secs} s" >> "$log"
}

run_model() {
  # run_model NAME MAIN CORES TIMEOUT_S ZIP CRC RETRIES (in a background subshell): run it (again, up to
  # RETRIES times while it fails, not when it times out), zip what it produced with a manifest and upload
  # it (or leave it stranded on this disk). Ends by writing WORK/phase/NAME.done: STATE SECONDS UPLOADED.
  local name="$1" retries="${7:-0}" dir="$WORK/models/$1" state rc t0 started ended seconds nfiles nbytes attempt=1
  set_phase "$name" running
  while :; do
    run_once "$@"
    [ "$state" = "failed" ] && [ "$attempt" -le "$retries" ] || break
    ops_log "model ${name}: failed (exit ${rc}) on attempt ${attempt}: running it again (retries=${retries})"
    attempt=$((attempt + 1))
  done
  ended=$(ops_epoch)
  seconds=$(ops_calc "$ended - $t0")
  set_phase "$name" "uploading $seconds"  # its cores are free from here
  ops_gcs_upload "$dir/opensees.log" "_logs/${RUN_ID}/${name}.log" text/plain > /dev/null || true
  read -r nfiles nbytes < <(ops_pyhelp result "$dir" "$WORK/$name.inputs" "$WORK/$name.zip" \
    "run_id=${RUN_ID}" "model=${name}" "state=${state}" "exit_code=${rc}" "started=${started}" \
    "finished=$(ops_now)" "seconds=${seconds}" "vm=${VM}" "attempts=${attempt}" "ended_at=${ended}")
  rm -rf "$dir" "$WORK/$name.inputs"
  ops_log "model ${name}: ${state} (exit ${rc}, ${seconds} s, attempt ${attempt}), ${nfiles:-?} file(s), ${nbytes:-?} bytes: uploading"
  local outcome="${state} ${seconds} 0"
  if upload_result "$name"; then
    outcome="${state} ${seconds} 1 ${LAST_UPLOAD}"
  else
    ops_log "model ${name}: result upload FAILED; it stays at ${WORK}/${name}.zip"
  fi
  if [[ "$state" != "ok" && "$NOTIFY_ON" == *,failure,* ]]; then
    ops_notify failure "ops-hpc: model ${name} ${state} in run ${RUN_ID}" \
      "model ${name}: ${state} (exit ${rc}) after ${seconds} s on ${VM}; its files and opensees.log: gs://${OPS_BUCKET}/${RUN_ID}/${name}.zip (\`ops-hpc log ${RUN_ID} ${name}\` shows the log)" \
      "run_id=${RUN_ID}" "vm=${VM}" "model=${name}" "state=${state}" "exit_code=${rc}"
  fi
  printf "%s\n" "$outcome" > "$WORK/phase/$name.done"  # last: the main shell then reaps this subshell at once
}

sync_phases() {
  # Read what the running models' subshells reported: free the cores of those past their run, record the
  # outcome of those that ended. Sets CHANGED when anything moved (the status is then published).
  # sync_phases term: in the TERM trap, a subshell gone without a result was killed with the VM: interrupted.
  local name phase secs st up last c m
  for name in "${!PID[@]}"; do
    if [ -f "$WORK/phase/$name.done" ]; then
      wait "${PID[$name]}" 2> /dev/null
      read -r st secs up last < "$WORK/phase/$name.done"
      RESULT[$name]="$st"
      MSECS[$name]="$secs"
      if [ "$up" = 1 ]; then
        MSTATE[$name]="$st"
        [ -n "$last" ] && LAST_UPLOAD="$last"
      else
        MSTATE[$name]="upload_failed"
        STRANDED+=("$name")
      fi
      unset "PID[$name]"
    elif ! kill -0 "${PID[$name]}" 2> /dev/null; then
      wait "${PID[$name]}" 2> /dev/null
      if [ "${1:-}" = term ]; then
        MSTATE[$name]="interrupted"
      else
        ops_log "model ${name}: its subshell ended without a result"
        MSTATE[$name]="failed"
        RESULT[$name]="failed"
      fi
      unset "PID[$name]"
    else
      read -r phase secs < "$WORK/phase/$name" 2> /dev/null || continue
      [ "$phase" = "${MSTATE[$name]}" ] && continue
      MSTATE[$name]="$phase"
      [ -n "$secs" ] && MSECS[$name]="$secs"
    fi
    CHANGED=1
    if [ -n "${HOLD[$name]:-}" ] && [ "${MSTATE[$name]}" != running ]; then
      read -r c m <<< "${HOLD[$name]}"
      FREE_CORES=$((FREE_CORES + c))
      [ -n "$MEM_MB" ] && FREE_MEM=$((FREE_MEM + m))
      unset "HOLD[$name]"
      FREED=1
    fi
  done
  if [ -n "$CURRENT_MODEL" ] && [ "${MSTATE[$CURRENT_MODEL]}" != running ]; then
    CURRENT_MODEL=""  # the status's current_model: one of the running models (all of them are in running=)
    for name in "${NAMES[@]}"; do [ "${MSTATE[$name]}" = running ] && { CURRENT_MODEL="$name"; break; }; done
  fi
}

start_model() {
  # start_model NAME: take its cores (and memory) and run it in the background
  local name="$1" main cores secs zip crc mem retries
  IFS=$'\t' read -r main cores secs zip crc mem retries <<< "${SPEC[$name]}"
  CURRENT=$((CURRENT + 1))
  CURRENT_MODEL="$name"
  MODEL_TIMEOUT="$secs"
  FREE_CORES=$((FREE_CORES - cores))
  [ -n "$MEM_MB" ] && FREE_MEM=$((FREE_MEM - mem))
  HOLD[$name]="$cores $mem"
  MSTATE[$name]="running"
  ops_log "model ${CURRENT}/${#NAMES[@]} ${name}: starting on ${cores} core(s) (${FREE_CORES} of ${CORES} free)"
  run_model "$name" "$main" "$cores" "$secs" "$zip" "$crc" "$retries" &
  PID[$name]=$!
}

sweep_folders() {
  # A sweep's runs are named MODEL/ROW, so every file this script keys by model name (WORK/NAME.zip, the
  # model folder, and the per-model marks under phase/, claim/, ready/ when models run concurrently) sits one
  # folder deeper: make those folders once, before any model starts.
  local name sub
  for name in "${NAMES[@]}"; do
    [ "${name%/*}" = "$name" ] && continue
    for sub in "" models/ phase/ claim/ ready/; do mkdir -p "$WORK/${sub}${name%/*}"; done
  done
}

fetch_shared() {
  # Every shared folder this VM's models use, fetched once into WORK/shared/KEY, files made read-only; a
  # folder that cannot be fetched fails only the models that use it (their log says so).
  local key zip crc got
  while IFS=$'\t' read -r key zip crc; do
    got=""
    if ops_gcs_download "$zip" "$WORK/shared/$key.zip"; then got=$(ops_crc32c "$WORK/shared/$key.zip"); fi
    if [ "$got" != "$crc" ]; then
      ops_log "shared folder ${key}: staged $zip missing or damaged (crc32c ${got:-none}, expected $crc)"
    else
      ops_python -m zipfile -e "$WORK/shared/$key.zip" "$WORK/shared/$key/" \
        && find "$WORK/shared/$key" -type f -exec chmod a-w {} +  # files read-only; folders stay removable
      ops_log "shared folder ${key}: fetched once for every model using it"
    fi
    rm -f "$WORK/shared/$key.zip"
  done < <(mkdir -p "$WORK/shared" && ops_pyhelp shared "$WORK/batch.json" "$SUBSET")
}

upload_result() {
  # upload_result NAME: WORK/NAME.zip -> RUN_ID/NAME.zip, checked; the zip is removed once it is there.
  if ops_gcs_upload_verified "$WORK/$1.zip" "${RUN_ID}/$1.zip" application/zip; then
    LAST_UPLOAD=$(ops_epoch)
    rm -f "$WORK/$1.zip"
    return 0
  fi
  return 1
}

retry_stranded() {
  # Results whose upload failed: retry with backoff until shortly before the max run end (then Google
  # deletes this VM). Meanwhile the status says stranded=..., so the PC can copy the zips off this disk.
  local wait margin left name
  wait=$(ops_calc "30 / $SCALE")
  margin=$(ops_calc "300 / $SCALE")
  while [ "${#STRANDED[@]}" -gt 0 ]; do
    STATE="upload_failed"
    publish_status
    if [ -z "$MAX_END" ] || [ "$(ops_calc "$(ops_epoch) + $wait + $margin >= $MAX_END")" != "0.000" ]; then
      ops_log "no time left before the max run end to retry ${STRANDED[*]}"
      return 1
    fi
    ops_log "retrying the upload of ${STRANDED[*]} in ${wait} s"
    sleep "$wait"
    left=()
    for name in "${STRANDED[@]}"; do
      if [ -f "$WORK/$name.zip" ] && ! OPS_ATTEMPTS=2 upload_result "$name"; then
        left+=("$name")
        continue
      fi
      MSTATE[$name]="${RESULT[$name]}"
      ops_log "model ${name}: result uploaded on a later try"
    done
    STRANDED=("${left[@]}")
    wait=$(ops_calc "($wait * 2 > 300 / $SCALE) ? 300 / $SCALE : $wait * 2")
  done
  return 0
}

ops_log "run ${RUN_ID} on VM ${VM}, bucket ${OPS_BUCKET}"
publish_status  # the PC's launch waits for this first status: the VM is up and can reach the bucket

if ! ops_gcs_download "_uploads/${RUN_ID}/batch.json" "$WORK/batch.json"; then
  ERROR="no staged batch at gs://${OPS_BUCKET}/_uploads/${RUN_ID}/batch.json"
  ops_log "$ERROR"
  finish error
fi
# name <TAB> main <TAB> cores <TAB> timeout seconds (scaled) <TAB> zip object <TAB> crc32c <TAB> mem MB <TAB> retries
ops_pyhelp models "$WORK/batch.json" "$SCALE" "$SUBSET" > "$WORK/models.tsv"
while IFS=$'\t' read -r name rest; do
  NAMES+=("$name")
  MSTATE[$name]="pending"
  SPEC[$name]="$rest"
done < "$WORK/models.tsv"
mkdir -p "$WORK/phase" "$WORK/claim" "$WORK/ready"
[ "${#NAMES[@]}" -gt 0 ] || { ERROR="no models to run (subset: ${SUBSET:-all})"; ops_log "$ERROR"; finish error; }
STATE="running"
sweep_folders
fetch_shared

declare -a QUEUE=("${NAMES[@]}")  # pack order: ops_helpers.py models sorted them
prefetch &
PREFETCH=$!
FREED=1
while :; do
  CHANGED=""
  sync_phases
  if [ "${#QUEUE[@]}" -gt 0 ] && [ -n "$FREED" ]; then
    FREED=""
    specs=()
    for name in "${QUEUE[@]}"; do
      IFS=$'\t' read -r _ cores _ _ _ mem _ <<< "${SPEC[$name]}"
      specs+=("${name}:${cores}:${mem}")
    done
    mapfile -t picks < <(ops_pyhelp pick "$FREE_CORES" "${MEM_MB:+$FREE_MEM}" "${specs[@]}")
    if [ "${#picks[@]}" -eq 0 ] && [ "${#PID[@]}" -eq 0 ]; then
      picks=("${QUEUE[0]}")  # bigger than this VM (the PC refuses such batches): run it alone
      ops_log "model ${QUEUE[0]} needs more than this VM's ${CORES} core(s) ${MEM_MB:+/ ${MEM_MB} MB}: running it alone"
    fi
    for name in "${picks[@]}"; do start_model "$name"; done
    left=()
    for name in "${QUEUE[@]}"; do [ "${MSTATE[$name]}" = pending ] && left+=("$name"); done
    QUEUE=("${left[@]}")
    [ "${#picks[@]}" -gt 0 ] && CHANGED=1
  fi
  [ -n "$CHANGED" ] && publish_status
  [ "${#QUEUE[@]}" -eq 0 ] && [ "${#PID[@]}" -eq 0 ] && break
  sleep "$POLL"
done
kill "$PREFETCH" 2> /dev/null

CURRENT_MODEL=""
if ! retry_stranded; then finish upload_failed; fi
finish "done"
