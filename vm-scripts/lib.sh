#!/bin/bash
# Shared helpers for the scripts that run ON an ops-hpc VM (run_analysis.sh, push.sh, ...).
#
#   source "$(dirname "$0")/lib.sh"
#
# ops_helpers.py must sit next to this file. Only bash, curl, awk and python3 are needed: no gcloud,
# no gsutil. Every endpoint comes from the environment, so the same code runs on a real GCE VM and on
# a local-cloud VM:
#   GCE_METADATA_HOST     metadata server (default metadata.google.internal)
#   OPS_HPC_STORAGE_API   Cloud Storage JSON API base (default https://storage.googleapis.com)
#   OPS_HPC_COMPUTE_API   Compute API base ending in /compute/v1 (default https://compute.googleapis.com/compute/v1)
#   OPS_HPC_VM_ROOT       local cloud only: the VM's disk folder, prefixed to every absolute path
#
# Stable interface (other scripts source this file; keep these names and arguments):
#   ops_path /abs/path              -> prints "${OPS_HPC_VM_ROOT}/abs/path"
#   ops_now                         -> UTC time, ISO 8601 with Z
#   ops_epoch                       -> seconds since the epoch, with decimals
#   ops_log MESSAGE...              -> timestamped line on stderr (the VM's console / run log)
#   ops_md PATH                     -> metadata value under computeMetadata/v1/ (exit 1 if absent)
#   ops_md_attr KEY [DEFAULT]       -> instance attribute KEY, or DEFAULT when unset
#   ops_token                       -> OAuth access token of the VM's service account (cached, refreshed;
#                                      call it in the main shell now and then: $(...) subshells reuse that cache)
#   ops_urlencode TEXT              -> TEXT percent-encoded for a URL path segment or query value
#   ops_gcs_upload FILE OBJECT [CONTENT_TYPE]   -> upload; prints the object's JSON resource
#   ops_gcs_upload_verified FILE OBJECT [TYPE]  -> upload and check GCS's CRC32C equals the file's
#   ops_gcs_put_text OBJECT TEXT                -> small text object (status files)
#   ops_gcs_download OBJECT FILE                -> download (exit 1 if absent)
#   ops_gcs_list PREFIX                         -> object names under PREFIX, one per line
#   ops_gcs_seal PREFIX                         -> PREFIX/MANIFEST.json of what is there, uploaded last
#   ops_crc32c FILE                 -> base64 CRC32C as GCS reports it
#   ops_pyhelp COMMAND ARGS...      -> python3 helpers in ops_helpers.py (crc32c, snapshot, result, seal, ...)
#   ops_calc EXPR                   -> floating-point arithmetic through awk, 3 decimals
#   ops_self_delete                 -> ask Compute Engine to delete this VM (exit 1 if refused; never powers off)
#   ops_self_delete_or_stay CMD...  -> self-delete, retried with backoff; if still refused, run CMD (publish
#                                      state=self_delete_refused) and stay up for the PC or maxRunDuration
#   ops_notify EVENT TITLE TEXT [K=V...] -> POST a JSON message to every webhook in OPS_NOTIFY (space
#                                      separated); never fails the caller (logged, 3 tries, 10 s each)
# Variables: OPS_BUCKET must be set before the gcs functions are used.

OPS_METADATA_HOST="${GCE_METADATA_HOST:-metadata.google.internal}"
OPS_STORAGE_API="${OPS_HPC_STORAGE_API:-https://storage.googleapis.com}"
OPS_STORAGE_API="${OPS_STORAGE_API%/}"
OPS_COMPUTE_API="${OPS_HPC_COMPUTE_API:-https://compute.googleapis.com/compute/v1}"
OPS_COMPUTE_API="${OPS_COMPUTE_API%/}"
OPS_ATTEMPTS="${OPS_ATTEMPTS:-8}"        # tries per HTTP call (429, 5xx, connection errors are retried)
OPS_TOKEN_VALUE=""
OPS_TOKEN_EXPIRES=0

ops_path() { printf '%s%s\n' "${OPS_HPC_VM_ROOT:-}" "$1"; }
ops_now() { date -u +%Y-%m-%dT%H:%M:%SZ; }
ops_epoch() { date +%s.%N 2>/dev/null | sed 's/\.N$//; s/\.\([0-9]\{3\}\).*/.\1/'; }
ops_log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

ops_python() {
  # The python3 that runs the small helpers (manifest, JSON): python3, else platform-python (RHEL 8).
  if command -v python3 >/dev/null 2>&1; then python3 "$@"; else /usr/libexec/platform-python "$@"; fi
}

# ops_curl OUT_FILE CURL_ARGS... : one HTTP call with retries; prints the HTTP status, body into OUT_FILE.
# Retried: connection failures, 408, 429 and 5xx, with exponential backoff (1, 2, 4, ... s, at most 30 s).
ops_curl() {
  local out="$1" attempt=1 code wait=1
  shift
  while :; do
    code=$(curl -sS -o "$out" -w '%{http_code}' --connect-timeout 10 --max-time 3600 "$@" 2>/dev/null) || code="000"
    case "$code" in
      000|408|429|5??) ;;
      *) printf '%s\n' "$code"; return 0 ;;
    esac
    if [ "$attempt" -ge "$OPS_ATTEMPTS" ]; then printf '%s\n' "$code"; return 0; fi
    sleep "$wait"
    attempt=$((attempt + 1))
    wait=$((wait * 2)); [ "$wait" -gt 30 ] && wait=30
  done
}

ops_md() {
  local tmp code
  tmp=$(mktemp)
  code=$(ops_curl "$tmp" -H 'Metadata-Flavor: Google' "http://${OPS_METADATA_HOST}/computeMetadata/v1/$1")
  if [ "$code" = "200" ]; then cat "$tmp"; rm -f "$tmp"; return 0; fi
  rm -f "$tmp"
  return 1
}

ops_md_attr() {
  local value
  if value=$(ops_md "instance/attributes/$1"); then printf '%s\n' "$value"; else printf '%s\n' "${2:-}"; fi
}

ops_json_field() {
  # ops_json_field FIELD < json : one top-level field of a JSON object ("" when absent).
  ops_pyhelp field "$1"
}

ops_token() {
  local now body
  now=$(date +%s)
  if [ -n "$OPS_TOKEN_VALUE" ] && [ "$now" -lt "$OPS_TOKEN_EXPIRES" ]; then printf '%s\n' "$OPS_TOKEN_VALUE"; return 0; fi
  body=$(ops_md "instance/service-accounts/default/token") || { ops_log "no access token from the metadata server"; return 1; }
  OPS_TOKEN_VALUE=$(printf '%s' "$body" | ops_json_field access_token)
  OPS_TOKEN_EXPIRES=$((now + $(printf '%s' "$body" | ops_json_field expires_in | cut -d. -f1) - 120))
  printf '%s\n' "$OPS_TOKEN_VALUE"
}

ops_urlencode() {
  # object names made of safe characters (run ids, model names, paths) need no Python: only '/' changes
  if [[ "$1" =~ ^[A-Za-z0-9._~/-]*$ ]]; then printf '%s\n' "${1//\//%2F}"; else ops_pyhelp urlencode "$1"; fi
}

ops_gcs_upload() {
  local file="$1" object="$2" ctype="${3:-application/octet-stream}" tmp code token
  token=$(ops_token) || return 1
  tmp=$(mktemp)
  code=$(ops_curl "$tmp" -X POST -H "Authorization: Bearer ${token}" -H "Content-Type: ${ctype}" \
    --data-binary "@${file}" \
    "${OPS_STORAGE_API}/upload/storage/v1/b/${OPS_BUCKET}/o?uploadType=media&name=$(ops_urlencode "$object")")
  if [ "$code" = "200" ]; then cat "$tmp"; rm -f "$tmp"; return 0; fi
  ops_log "upload of gs://${OPS_BUCKET}/${object} failed: HTTP ${code} $(head -c 300 "$tmp")"
  rm -f "$tmp"
  return 1
}

ops_gcs_upload_verified() {
  # A failed upload is not tried again here: ops_curl has already retried it (OPS_ATTEMPTS calls, ~90 s of
  # backoff), and the caller's own retry (run_analysis.sh: until the max run end) takes over. Only a CRC32C
  # mismatch (bytes damaged on the way) uploads the file again at once.
  local file="$1" object="$2" want got resource attempt
  want=$(ops_crc32c "$file") || return 1
  for attempt in 1 2 3; do
    resource=$(ops_gcs_upload "$file" "$object" "${3:-application/octet-stream}") || return 1
    got=$(printf '%s' "$resource" | ops_json_field crc32c)
    if [ "$got" = "$want" ]; then return 0; fi
    ops_log "gs://${OPS_BUCKET}/${object}: CRC32C ${got:-none} != local ${want} (attempt ${attempt}); uploading again"
  done
  return 1
}

ops_gcs_put_text() {
  local tmp rc
  tmp=$(mktemp)
  printf '%s\n' "$2" > "$tmp"
  ops_gcs_upload "$tmp" "$1" "text/plain" > /dev/null
  rc=$?
  rm -f "$tmp"
  return $rc
}

ops_gcs_download() {
  local object="$1" file="$2" code token
  token=$(ops_token) || return 1
  code=$(ops_curl "${file}.part" -H "Authorization: Bearer ${token}" \
    "${OPS_STORAGE_API}/storage/v1/b/${OPS_BUCKET}/o/$(ops_urlencode "$object")?alt=media")
  if [ "$code" = "200" ]; then mv -f "${file}.part" "$file"; return 0; fi
  ops_log "download of gs://${OPS_BUCKET}/${object} failed: HTTP ${code}"
  rm -f "${file}.part"
  return 1
}

ops_gcs_list() {
  local prefix="$1" token page="" tmp code
  token=$(ops_token) || return 1
  tmp=$(mktemp)
  while :; do
    code=$(ops_curl "$tmp" -H "Authorization: Bearer ${token}" \
      "${OPS_STORAGE_API}/storage/v1/b/${OPS_BUCKET}/o?prefix=$(ops_urlencode "$prefix")&fields=items(name),nextPageToken${page:+&pageToken=$(ops_urlencode "$page")}")
    [ "$code" = "200" ] || { rm -f "$tmp"; ops_log "listing gs://${OPS_BUCKET}/${prefix} failed: HTTP ${code}"; return 1; }
    ops_pyhelp names "$tmp"
    page=$(ops_json_field nextPageToken < "$tmp")
    [ -n "$page" ] || break
  done
  rm -f "$tmp"
}

ops_gcs_seal() {
  # ops_gcs_seal PREFIX : write PREFIX/MANIFEST.json listing every object under PREFIX/ (path, size,
  # crc32c, as GCS reports them) and upload it last. bin/pull takes a tree with a manifest newer than
  # all its objects as complete: it need not wait for the tree to settle.
  local prefix="${1%/}" token page="" tmp out code rc
  local pages=()
  token=$(ops_token) || return 1
  while :; do
    tmp=$(mktemp)
    pages+=("$tmp")
    code=$(ops_curl "$tmp" -H "Authorization: Bearer ${token}" \
      "${OPS_STORAGE_API}/storage/v1/b/${OPS_BUCKET}/o?prefix=$(ops_urlencode "$prefix/")&fields=items(name,size,crc32c),nextPageToken${page:+&pageToken=$(ops_urlencode "$page")}")
    if [ "$code" != "200" ]; then
      ops_log "listing gs://${OPS_BUCKET}/${prefix}/ failed: HTTP ${code}"
      rm -f "${pages[@]}"
      return 1
    fi
    page=$(ops_json_field nextPageToken < "$tmp")
    [ -n "$page" ] || break
  done
  out=$(mktemp)
  ops_pyhelp seal "$prefix/" "$out" "${pages[@]}" && ops_gcs_upload "$out" "$prefix/MANIFEST.json" application/json > /dev/null
  rc=$?
  rm -f "${pages[@]}" "$out"
  return $rc
}

ops_crc32c() { ops_pyhelp crc32c "$1"; }

# ops_pyhelp COMMAND ARGS... : the Python helpers in ops_helpers.py next to this file (crc32c,
# snapshot, result, seal, field, urlencode, names, models: see its docstring). Python 3.6+, stdlib only.
OPS_HELPERS_PY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/ops_helpers.py"
ops_pyhelp() { ops_python "$OPS_HELPERS_PY" "$@"; }

# ops_calc EXPR : floating-point arithmetic with awk (no Python process), e.g. ops_calc "$t1 - $t0"
ops_calc() { awk "BEGIN { printf \"%.3f\n\", ($1) }"; }

ops_self_delete() {
  # DELETE this instance through the Compute API with the VM's own token. A VM cannot outlive that
  # call on the local cloud; on GCE the guest is shut down while the API removes it. Refused (e.g. the
  # service account lacks compute.instances.delete): exit 1 and leave the VM up. Never power off: on GCE a
  # stop clears the termination time, so maxRunDuration would no longer delete the VM or its disk.
  local project zone name token tmp code
  project=$(ops_md project/project-id) || return 1
  zone=$(ops_md instance/zone) || return 1
  zone="${zone##*/}"
  name=$(ops_md instance/name) || return 1
  token=$(ops_token) || return 1
  tmp=$(mktemp)
  ops_log "deleting this VM (${name}) through the Compute API"
  code=$(ops_curl "$tmp" -X DELETE -H "Authorization: Bearer ${token}" \
    "${OPS_COMPUTE_API}/projects/${project}/zones/${zone}/instances/${name}")
  if [ "$code" = "200" ]; then rm -f "$tmp"; return 0; fi
  ops_log "self-delete refused: HTTP ${code} $(head -c 300 "$tmp")"
  rm -f "$tmp"
  return 1
}

OPS_SELF_DELETE_TRIES="${OPS_SELF_DELETE_TRIES:-3}"  # a refusal may be a passing IAM hiccup: 1 s, 2 s, ... between tries

ops_self_delete_or_stay() {
  # ops_self_delete_or_stay CMD ARGS... : self-delete, retried with backoff. Still refused: run CMD (it
  # publishes state=self_delete_refused, on which the PC's follow/status/sweep delete this VM at once) and
  # return 1 with the VM left RUNNING, so its max run duration still deletes VM and disk.
  local try wait=1
  for ((try = 1; try <= OPS_SELF_DELETE_TRIES; try++)); do
    ops_self_delete && return 0
    [ "$try" -lt "$OPS_SELF_DELETE_TRIES" ] || break
    sleep "$wait"
    wait=$((wait * 2))
  done
  ops_log "self-delete refused ${OPS_SELF_DELETE_TRIES} time(s): staying up (a stop would cancel the max run duration); the PC deletes this VM"
  "$@"
  return 1
}

ops_notify() {
  # ops_notify EVENT TITLE TEXT [K=V...]: tell every webhook in OPS_NOTIFY (the ops-hpc-notify metadata)
  # about EVENT, each body shaped for its host by ops_helpers.py (Slack, Teams, Discord, ntfy, generic
  # JSON with the K=V fields). Bounded: OPS_NOTIFY_ATTEMPTS tries of at most OPS_NOTIFY_TIMEOUT seconds
  # per webhook, retrying connection failures, 408, 429 and 5xx. Always returns 0: a receiver that is
  # down or slow never fails the run. Logs name the webhook's host only (its path is its secret).
  local event="$1" title="$2" text="$3" url post host attempt code textfile body
  shift 3
  [ -n "${OPS_NOTIFY:-}" ] || return 0
  textfile=$(mktemp)
  body=$(mktemp)
  printf '%s\n' "$text" > "$textfile"
  for url in $OPS_NOTIFY; do
    host=$(printf '%s' "$url" | sed -E 's#^[a-z]+://([^/:?]+).*#\1#')
    post=$(ops_pyhelp notify_body "$url" "$event" "$title" "$textfile" "$body" "$@") || { ops_log "notify: no body for ${host}"; continue; }
    for attempt in $(seq 1 "${OPS_NOTIFY_ATTEMPTS:-3}"); do
      code=$(curl -sS -o /dev/null -w '%{http_code}' --connect-timeout 5 --max-time "${OPS_NOTIFY_TIMEOUT:-10}" \
        -X POST -H 'Content-Type: application/json' --data-binary "@${body}" "$post" 2>/dev/null) || code="000"
      case "$code" in
        2??) ops_log "notify: ${event} posted to ${host}"; break ;;
        000|408|429|5??) ops_log "notify: ${host} answered ${code} (try ${attempt})"
                         [ "$attempt" -lt "${OPS_NOTIFY_ATTEMPTS:-3}" ] && sleep "$attempt" ;;
        *) ops_log "notify: ${host} refused the message (HTTP ${code})"; break ;;
      esac
    done
  done
  rm -f "$textfile" "$body"
  return 0
}
