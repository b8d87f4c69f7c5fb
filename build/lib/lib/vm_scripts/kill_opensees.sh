#!/bin/bash
# Kill every OpenSees process on this VM (OpenSees, OpenSeesMP, mpirun of them, the openseesmp
# launcher, `python3 -m opensees`); the VM itself is left alone. Used by `make abort` / `make emergency`.
#
#   bash kill_opensees.sh [GRACE_SECONDS]      (default 5: SIGTERM, then SIGKILL what is left)
#
# On the local cloud (OPS_HPC_VM_ROOT set) only processes of this VM are touched: several local VMs
# share one host, and each process carries its VM's OPS_HPC_VM_ROOT in its environment.
# Prints "KILLED n" (n = processes signalled).
set -uo pipefail

GRACE="${1:-5}"
ROOT="${OPS_HPC_VM_ROOT:-}"

matches() {
  local d pid cmd
  for d in /proc/[0-9]*; do
    pid="${d#/proc/}"
    [ "$pid" = "$$" ] && continue
    [ "$pid" = "$BASHPID" ] && continue
    cmd=$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null) || continue
    case "$cmd" in
      *kill_opensees.sh*) continue ;;
      *OpenSees*|*openseesmp*|*"-m opensees"*) ;;
      *) continue ;;
    esac
    if [ -n "$ROOT" ]; then
      tr '\0' '\n' < "$d/environ" 2>/dev/null | grep -qxF "OPS_HPC_VM_ROOT=$ROOT" || continue
    fi
    echo "$pid"
  done
}

mapfile -t pids < <(matches)
if [ ${#pids[@]} -eq 0 ]; then echo "KILLED 0"; exit 0; fi
kill -TERM "${pids[@]}" 2>/dev/null
end=$((SECONDS + GRACE))
while [ $SECONDS -lt "$end" ]; do
  alive=0
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
  [ $alive -eq 0 ] && break
  sleep 0.2
done
for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
echo "KILLED ${#pids[@]}"
