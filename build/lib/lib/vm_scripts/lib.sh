#!/bin/bash
# Shared helpers for the scripts that run ON an ops-hpc VM (run_analysis.sh, push.sh, ...).
#
#   source "$(dirname "$0")/lib.sh"
#
# Only bash, curl and python3 are needed: no gcloud, no gsutil. Every endpoint comes from the
# environment, so the same code runs on a real GCE VM and on a local-cloud VM:
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
#   ops_token                       -> OAuth access token of the VM's service account (cached, refreshed)
#   ops_urlencode TEXT              -> TEXT percent-encoded for a URL path segment or query value
#   ops_gcs_upload FILE OBJECT [CONTENT_TYPE]   -> upload; prints the object's JSON resource
#   ops_gcs_upload_verified FILE OBJECT [TYPE]  -> upload and check GCS's CRC32C equals the file's
#   ops_gcs_put_text OBJECT TEXT                -> small text object (status files)
#   ops_gcs_download OBJECT FILE                -> download (exit 1 if absent)
#   ops_gcs_list PREFIX                         -> object names under PREFIX, one per line
#   ops_gcs_seal PREFIX                         -> PREFIX/MANIFEST.json of what is there, uploaded last
#   ops_crc32c FILE                 -> base64 CRC32C as GCS reports it
#   ops_pyhelp COMMAND ARGS...      -> python3 helpers: crc32c, snapshot, result (see below)
#   ops_self_delete                 -> ask Compute Engine to delete this VM (falls back to poweroff on GCE)
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
  ops_python -c 'import json,sys; d=json.load(sys.stdin); v=d.get(sys.argv[1], ""); print(v if v is not None else "")' "$1"
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
  ops_python -c 'import sys; from urllib.parse import quote; print(quote(sys.argv[1], safe=""))' "$1"
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
  local file="$1" object="$2" want got resource attempt
  want=$(ops_crc32c "$file") || return 1
  for attempt in 1 2 3; do
    if resource=$(ops_gcs_upload "$file" "$object" "${3:-application/octet-stream}"); then
      got=$(printf '%s' "$resource" | ops_json_field crc32c)
      if [ "$got" = "$want" ]; then return 0; fi
      ops_log "gs://${OPS_BUCKET}/${object}: CRC32C ${got:-none} != local ${want} (attempt ${attempt}); uploading again"
    fi
    sleep "$attempt"
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
    ops_python -c 'import json,sys; [print(i["name"]) for i in json.load(open(sys.argv[1])).get("items", [])]' "$tmp"
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

# ops_pyhelp COMMAND ARGS... : the python3 helpers (Python 3.6+, standard library only; google_crc32c
# is used when importable, else a pure-python CRC32C gives the same base64 value GCS reports).
#   crc32c FILE                      base64 CRC32C of FILE
#   snapshot DIR OUT                 record DIR's files (path, size, mtime) into OUT: the inputs
#   seal PREFIX OUT PAGE...          MANIFEST.json (format 1, kind push) of the objects in listing PAGEs
#   result DIR SNAPSHOT ZIP K=V...   zip every file of DIR that is not an unchanged input, plus a
#                                    MANIFEST.json at the root ({"format": 1, K: V..., "files": [...]})
ops_pyhelp() { ops_python -c "$OPS_PY_HELPERS" "$@"; }
OPS_PY_HELPERS=$(cat <<'PY'
import base64, json, os, struct, sys, zipfile

def crc32c(path):
    try:
        import google_crc32c
        c = google_crc32c.Checksum()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                c.update(block)
        return base64.b64encode(c.digest()).decode()
    except ImportError:
        pass
    table = []
    for i in range(256):
        v = i
        for _ in range(8):
            v = (v >> 1) ^ 0x82F63B78 if v & 1 else v >> 1
        table.append(v)
    crc = 0xFFFFFFFF
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            for byte in bytearray(block):
                crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return base64.b64encode(struct.pack(">I", crc ^ 0xFFFFFFFF)).decode()

def files(root):
    out = {}
    for dirpath, dirnames, names in os.walk(root):
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        for name in names:
            full = os.path.join(dirpath, name)
            if os.path.islink(full) or not os.path.isfile(full):
                continue
            st = os.stat(full)
            out[os.path.relpath(full, root).replace(os.sep, "/")] = [st.st_size, st.st_mtime_ns]
    return out

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "crc32c":
    print(crc32c(args[0]))
elif cmd == "snapshot":
    with open(args[1], "w") as fh:
        json.dump(files(args[0]), fh)
elif cmd == "result":
    root, snap, dest = args[0], args[1], args[2]
    with open(snap) as fh:
        inputs = json.load(fh)
    meta = {"format": 1}
    for kv in args[3:]:
        k, v = kv.split("=", 1)
        meta[k] = int(v) if k == "exit_code" else float(v) if k == "seconds" else v
    listed = []
    for path, (size, mtime) in sorted(files(root).items()):
        if path == "MANIFEST.json" or inputs.get(path) == [size, mtime]:
            continue
        listed.append({"path": path, "size": size, "crc32c": crc32c(os.path.join(root, path))})
    meta["files"] = listed
    with zipfile.ZipFile(dest + ".part", "w", zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for entry in listed:
            zf.write(os.path.join(root, entry["path"]), entry["path"])
        zf.writestr("MANIFEST.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")
    os.replace(dest + ".part", dest)
    print(len(listed), sum(e["size"] for e in listed))
elif cmd == "seal":
    prefix, dest, listed = args[0], args[1], []
    for page in args[2:]:
        with open(page) as fh:
            for item in json.load(fh).get("items", []):
                path = item["name"][len(prefix):]
                if path and path != "MANIFEST.json":
                    listed.append({"path": path, "size": int(item["size"]), "crc32c": item.get("crc32c", "")})
    with open(dest, "w") as fh:
        json.dump({"format": 1, "kind": "push", "files": sorted(listed, key=lambda e: e["path"])}, fh,
                  indent=2, sort_keys=True)
else:
    sys.exit("unknown helper command " + cmd)
PY
)

ops_self_delete() {
  # DELETE this instance through the Compute API with the VM's own token. A VM cannot outlive that
  # call on the local cloud; on GCE the guest is shut down while the API removes it. If the API
  # refuses (e.g. the service account lacks compute.instances.delete), power off so at least the
  # machine stops billing; maxRunDuration then deletes the instance and its disk.
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
  if [ -z "${OPS_HPC_VM_ROOT:-}" ] && command -v shutdown >/dev/null 2>&1; then
    ops_log "powering off instead; max run duration deletes the instance"
    shutdown -h now
  fi
  return 1
}
