#!/bin/bash
# ops-hpc run-staged VM startup script (the instance's `startup-script` metadata value).
#
# It only bootstraps: read the run id and bucket from instance metadata, fetch the run's copy of
# vm-scripts/lib.sh and vm-scripts/run_analysis.sh that `bin/stage` uploaded to
# gs://BUCKET/_uploads/RUN_ID/vm-scripts/, and hand over to run_analysis.sh. The scripts travel
# with the run, so a run always executes the VM code it was staged with, and the image needs
# nothing but bash, curl, python3 and the `openseesmp` launcher.
#
# Needs no gcloud: curl against the metadata server and the Storage JSON API. Endpoints come from
# the environment (see lib.sh), so this runs unchanged on GCE and on the local cloud.
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

RUN_ID=$(md instance/attributes/ops-hpc-run-id required) || { say "no ops-hpc-run-id in metadata: nothing to do"; exit 1; }
BUCKET=$(md instance/attributes/ops-hpc-bucket required) || { say "no ops-hpc-bucket in metadata: nothing to do"; exit 1; }
TOKEN=$(md instance/service-accounts/default/token required | sed -n 's/.*"access_token" *: *"\([^"]*\)".*/\1/p')
say "run ${RUN_ID}, bucket ${BUCKET}: fetching the run's vm-scripts"

mkdir -p "$DIR"
for script in lib.sh run_analysis.sh; do
  object="_uploads%2F${RUN_ID}%2Fvm-scripts%2F${script}"
  ok=""
  for i in 1 2 3 4 5 6 7 8; do
    if curl -sSf --connect-timeout 10 -H "Authorization: Bearer ${TOKEN}" -o "$DIR/$script" \
        "${API%/}/storage/v1/b/${BUCKET}/o/${object}?alt=media"; then ok=1; break; fi
    sleep "$i"
  done
  [ -n "$ok" ] || { say "could not download _uploads/${RUN_ID}/vm-scripts/${script}"; exit 1; }
done
chmod 755 "$DIR/run_analysis.sh"
exec bash "$DIR/run_analysis.sh" "$RUN_ID" "$BUCKET"
