#!/bin/bash
# ops-hpc run-staged VM startup script (the instance's `startup-script` metadata value).
#
# It only bootstraps: read the run id and bucket from instance metadata, fetch the run's copy of
# vm-scripts/lib.sh, ops_helpers.py and run_analysis.sh that `bin/stage` uploaded to
# gs://BUCKET/_uploads/RUN_ID/vm-scripts/, and hand over to run_analysis.sh. The scripts travel
# with the run, so a run always executes the VM code it was staged with, and the image needs
# nothing but bash, curl, python3 and the `openseesmp` launcher.
#
# Needs no gcloud: curl against the metadata server and the Storage JSON API. Endpoints come from
# the environment (see lib.sh), so this runs unchanged on GCE and on the local cloud. If it cannot hand
# over, it publishes state=error in _status/RUN_ID/VM.txt (when it knows where) so the PC deletes the VM
# at once instead of waiting out its boot window; its exit status also shows in the serial console.
set -uo pipefail

MD="http://${GCE_METADATA_HOST:-metadata.google.internal}/computeMetadata/v1"
API="${OPS_HPC_STORAGE_API:-https://storage.googleapis.com}"
DIR="${OPS_HPC_VM_ROOT:-}/opt/ops-hpc/run"

say() { printf '[startup %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

md() {
  # metadata value with a few retries (the metadata server can lag right after boot)
  local i
  for i in 1 2 3 4 5 6 7 8; do
    if curl -sSf --connect-timeout 5 -H 'Metadata-Flavor: Google' "$MD/$1" 2>/dev/null; then return 0; fi
    [ "$2" = "optional" ] && return 1
    sleep "$i"
  done
  return 1
}

fail() {
  # fail MESSAGE: publish state=error (when the run and bucket are known) and stop
  local name
  say "$1"
  if [ -n "${RUN_ID:-}" ] && [ -n "${BUCKET:-}" ] && [ -n "${TOKEN:-}" ]; then
    name=$(md instance/name optional) || name=$(hostname)
    printf 'format=1\nrun_id=%s\nvm=%s\nstate=error\nerror=%s\nupdated=%s\n' "$RUN_ID" "$name" "$1" \
      "$(date -u +%Y-%m-%dT%H:%M:%SZ)" |
      curl -sS -o /dev/null --connect-timeout 10 --max-time 30 -X POST -H "Authorization: Bearer ${TOKEN}" \
        -H "Content-Type: text/plain" --data-binary @- \
        "${API%/}/upload/storage/v1/b/${BUCKET}/o?uploadType=media&name=_status%2F${RUN_ID}%2F${name}.txt" || true
  fi
  exit 1
}

RUN_ID=$(md instance/attributes/ops-hpc-run-id required) || fail "no ops-hpc-run-id in metadata: nothing to do"
BUCKET=$(md instance/attributes/ops-hpc-bucket required) || fail "no ops-hpc-bucket in metadata: nothing to do"
TOKEN=$(md instance/service-accounts/default/token required | sed -n 's/.*"access_token" *: *"\([^"]*\)".*/\1/p')
say "run ${RUN_ID}, bucket ${BUCKET}: fetching the run's vm-scripts"

mkdir -p "$DIR"
for script in lib.sh ops_helpers.py run_analysis.sh; do
  object="_uploads%2F${RUN_ID}%2Fvm-scripts%2F${script}"
  ok=""
  for i in 1 2 3 4 5 6 7 8; do
    code=$(curl -sS --connect-timeout 10 -H "Authorization: Bearer ${TOKEN}" -o "$DIR/$script" -w '%{http_code}' \
      "${API%/}/storage/v1/b/${BUCKET}/o/${object}?alt=media" 2> /dev/null) || code=000
    if [ "$code" = "200" ]; then ok=1; break; fi
    case "$code" in 401|403|404) break ;; esac  # not there or not allowed: retrying will not help
    sleep "$i"
  done
  [ -n "$ok" ] || fail "could not download _uploads/${RUN_ID}/vm-scripts/${script} (HTTP ${code})"
done
chmod 755 "$DIR/run_analysis.sh"
exec bash "$DIR/run_analysis.sh" "$RUN_ID" "$BUCKET"
