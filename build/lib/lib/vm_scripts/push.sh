#!/bin/bash
# Push analysis folders from this VM to the bucket as timestamped trees: the "legacy" result sets
# that bin/pull collects (and `vm push NAME` / the run pipeline / `make emergency` produce).
#
#   bash push.sh [--bucket B] [--root DIR] [--stamp YYYYMMDD-HHMMSS] [--with auto|curl|gcloud] [FOLDER...]
#
#   /tmp/ops-hpc-analysis/TTFlat/  ->  gs://B/TTFlat_20260406-153012/...
#
# FOLDERs are names under --root (default /tmp/ops-hpc-analysis); none = every folder there. The bucket
# defaults to the instance attribute ops-hpc-bucket. Uploads go over the VM's internal network:
# `gcloud storage rsync` when gcloud is installed (--with auto), else curl through lib.sh with each
# object's CRC32C checked against the file. A MANIFEST.json listing what arrived (ops_gcs_seal) is
# uploaded last, which tells bin/pull the tree is complete. Prints one machine-readable line per folder:
#   PUSHED folder=F prefix=F_STAMP/ files=N bytes=M      or      FAILED folder=F reason=...
# Exit status: 0 all pushed, 1 something failed (the rest is still pushed), 2 bad arguments.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=vm-scripts/lib.sh
source "$HERE/lib.sh"

usage() { echo "usage: push.sh [--bucket B] [--root DIR] [--stamp YYYYMMDD-HHMMSS] [--with auto|curl|gcloud] [FOLDER...]" >&2; exit 2; }

BUCKET="" ROOT="" STAMP="" WITH="${OPS_HPC_PUSH_WITH:-auto}"
FOLDERS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --bucket) [ $# -ge 2 ] || usage; BUCKET="$2"; shift 2 ;;
    --root) [ $# -ge 2 ] || usage; ROOT="$2"; shift 2 ;;
    --stamp) [ $# -ge 2 ] || usage; STAMP="$2"; shift 2 ;;
    --with) [ $# -ge 2 ] || usage; WITH="$2"; shift 2 ;;
    --) shift; FOLDERS+=("$@"); break ;;
    -h|--help) usage ;;
    -*) echo "push.sh: unknown option $1" >&2; usage ;;
    *) FOLDERS+=("$1"); shift ;;
  esac
done

[ -n "$ROOT" ] || ROOT="$(ops_path /tmp/ops-hpc-analysis)"
[ -n "$BUCKET" ] || BUCKET="$(ops_md_attr ops-hpc-bucket "")"
[ -n "$BUCKET" ] || { echo "push.sh: no bucket: pass --bucket or set the instance attribute ops-hpc-bucket" >&2; exit 2; }
[ -n "$STAMP" ] || STAMP="$(date -u +%Y%m%d-%H%M%S)"
[[ "$STAMP" =~ ^[0-9]{8}-[0-9]{6}$ ]] || { echo "push.sh: --stamp must look like 20260406-153012" >&2; exit 2; }
case "$WITH" in
  auto) if command -v gcloud >/dev/null 2>&1; then WITH=gcloud; else WITH=curl; fi ;;
  curl|gcloud) ;;
  *) echo "push.sh: --with must be auto, curl or gcloud" >&2; exit 2 ;;
esac
OPS_BUCKET="$BUCKET"
export OPS_BUCKET

if [ ${#FOLDERS[@]} -eq 0 ]; then
  [ -d "$ROOT" ] || { echo "push.sh: nothing to push: $ROOT does not exist" >&2; exit 0; }
  while IFS= read -r -d '' dir; do FOLDERS+=("$(basename "$dir")"); done \
    < <(find "$ROOT" -mindepth 1 -maxdepth 1 -type d -print0 | sort -z)
fi

push_curl() {
  # push_curl DIR PREFIX : every regular file under DIR (symlinks skipped), CRC32C verified.
  local dir="$1" prefix="$2" file rel failed=0
  while IFS= read -r -d '' file; do
    rel="${file#"$dir"/}"
    if ! ops_gcs_upload_verified "$file" "$prefix/$rel" > /dev/null; then
      echo "push.sh: could not upload $rel" >&2
      failed=1
    fi
  done < <(find "$dir" -type f -print0 | sort -z)
  return $failed
}

status=0
for folder in "${FOLDERS[@]}"; do
  if [[ ! "$folder" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]]; then
    echo "FAILED folder=$folder reason=bad-name"; status=1; continue
  fi
  dir="$ROOT/$folder"
  if [ ! -d "$dir" ]; then echo "FAILED folder=$folder reason=missing"; status=1; continue; fi
  files=$(find "$dir" -type f | wc -l)
  bytes=$(find "$dir" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
  if [ "$files" -eq 0 ]; then echo "EMPTY folder=$folder"; continue; fi
  prefix="${folder}_${STAMP}"
  ops_log "pushing $dir -> gs://$BUCKET/$prefix/ ($files files, $bytes bytes, with $WITH)"
  if [ "$WITH" = gcloud ]; then
    gcloud storage rsync --recursive --no-user-output-enabled "$dir" "gs://$BUCKET/$prefix"
  else
    push_curl "$dir" "$prefix"
  fi
  rc=$?
  if [ $rc -eq 0 ] && ! ops_gcs_seal "$prefix"; then
    rc=90  # the files are there but unsealed: bin/pull still takes them once the tree has settled
  fi
  if [ $rc -eq 0 ]; then
    echo "PUSHED folder=$folder prefix=$prefix/ files=$files bytes=$bytes"
  else
    echo "FAILED folder=$folder reason=upload-exit-$rc"; status=1
  fi
done
exit $status
