#!/bin/bash
# Build OpenSees + OpenSeesMP on an HPC Rocky Linux 8 VM and install the `openseesmp N script.tcl` launcher,
# and OpenSeesPy (openseespy==3.7.1.2) with its `opensees-python script.py` launcher.
#
#   sudo bash build_opensees_full.sh CORES
#
# Run by the build pipeline (`make build`) over ssh; the VM's disk then becomes an image in family
# opensees-hpc. On the local cloud (OPS_HPC_VM_ROOT set) a stand-in step installs the launcher over
# `python -m opensees` (PyPI package `opensees`, already in the local cloud's Python) into the VM's
# disk folder instead: same pipeline, same launcher interface, seconds instead of half an hour. Its
# `opensees-python` puts a small `openseespy` package on the path that forwards to `opensees.openseespy`,
# so `import openseespy.opensees as ops` works there as with the real OpenSeesPy.
set -euo pipefail

CORES="${1:-$(nproc)}"
ROOT="${OPS_HPC_VM_ROOT:-}"
PREFIX="$ROOT/opt/ops-hpc"
OPENSEES_REF="${OPENSEES_REF:-v3.7.1}"
OPENSEESPY_VERSION="${OPENSEESPY_VERSION:-3.7.1.2}"

log() { printf '[build %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

install_launcher() {
  # $1: the command that runs one Tcl script single-process; $2: the MPI command prefix ("" when none);
  # $3: "env-argv" when $1 flattens Tcl's argv (the stand-in joins it with spaces, so an argument holding
  # a space would split): the launcher then also hands the arguments over in OPS_HPC_ARGV, 0x1f-separated.
  # Scripts run through line_buffered.tcl: Tcl buffers stdout fully when it is not a terminal (an ssh
  # session without a tty, a pipe), so without it `make run` would show a job's output in 4 KB bursts.
  # the single-process line of the launcher (both written for the launcher to expand at run time)
  # shellcheck disable=SC2016
  local single='if [ "$N" -le 1 ] || [ -z "'"$2"'" ]; then exec '"$1"' "$LB" "$@"; fi'
  # shellcheck disable=SC2016
  [ -n "${3:-}" ] && single='export OPS_HPC_ARGV="$(printf '"'%s\\037'"' "$@")"; exec '"$1"' "$LB"  # no MPI: any N'
  mkdir -p "$PREFIX/bin" "$PREFIX/share"
  cat > "$PREFIX/share/line_buffered.tcl" <<'TCL'
# line_buffered.tcl SCRIPT ?ARGS?: run SCRIPT with stdout flushed at every line, argv as if run directly.
fconfigure stdout -buffering line
if {[info exists env(OPS_HPC_ARGV)]} {
  set argv [split [string range $env(OPS_HPC_ARGV) 0 end-1] "\x1f"]
  set argc [llength $argv]
  unset env(OPS_HPC_ARGV)
}
if {$argc < 1} { puts stderr "usage: line_buffered.tcl SCRIPT ?ARGS?"; exit 2 }
set argv0 [lindex $argv 0]
set argv [lrange $argv 1 end]
incr argc -1
source $argv0
TCL
  cat > "$PREFIX/bin/openseesmp" <<EOF
#!/bin/bash
# openseesmp N script.tcl: run an OpenSees model on N cores (N=1: sequential OpenSees).
set -euo pipefail
if [ \$# -lt 2 ]; then echo "usage: openseesmp N script.tcl [args...]" >&2; exit 2; fi
N="\$1"; shift
case "\$N" in ''|*[!0-9]*) echo "openseesmp: N must be a whole number, got '\$N'" >&2; exit 2;; esac
HERE="\$(cd "\$(dirname "\$(readlink -f "\$0")")" && pwd)"  # through the /usr/local/bin symlink
LB="\$HERE/../share/line_buffered.tcl"
${single}
exec $2 -np "\$N" "\$HERE/OpenSeesMP" "\$LB" "\$@"
EOF
  chmod 755 "$PREFIX/bin/openseesmp"
  echo "opensees-hpc built $(date -u +%Y-%m-%dT%H:%M:%SZ) from ${OPENSEES_REF} on ${CORES} cores" > "$PREFIX/BUILD_INFO"
}

install_python() {
  # $1: the python that has OpenSeesPy; $2: a folder under PREFIX to put first on PYTHONPATH ("" when none),
  # found from the launcher's own place at run time (an image's disk is a copy: no build-time paths).
  {
    echo '#!/bin/bash'
    echo '# opensees-python script.py [args...]: run an OpenSeesPy model with the Python that has openseespy.'
    if [ -n "$2" ]; then
      # shellcheck disable=SC2016  # written for the launcher to expand at run time
      echo 'HERE="$(cd "$(dirname "$(readlink -f "$0")")" && pwd)"'
      echo "export PYTHONPATH=\"\$HERE/../$2\${PYTHONPATH:+:\$PYTHONPATH}\""
    fi
    echo "exec $1 -u \"\$@\""
  } > "$PREFIX/bin/opensees-python"
  chmod 755 "$PREFIX/bin/opensees-python"
}

install_openseespy_shim() {
  # `import openseespy.opensees as ops` over the PyPI package opensees (its opensees.openseespy module).
  local shim="$PREFIX/share/pyshim/openseespy"
  mkdir -p "$shim"
  echo '"""Stand-in for OpenSeesPy on the local cloud: forwards to opensees.openseespy."""' > "$shim/__init__.py"
  cat > "$shim/opensees.py" <<'PY'
"""`import openseespy.opensees as ops` on the local cloud: every command forwards to opensees.openseespy."""
import opensees.openseespy as _impl


def __getattr__(name):
    return getattr(_impl, name)
PY
}

if [ -n "$ROOT" ]; then
  log "local cloud: stand-in build (python -m opensees) into $PREFIX"
  python3 -c 'import opensees' || { echo "the local cloud's Python lacks the opensees package" >&2; exit 1; }
  install_launcher "python3 -u -m opensees" "" env-argv  # -u: the package prints through Python's buffered stdout
  install_openseespy_shim
  install_python python3 share/pyshim
  log "done: $(cat "$PREFIX/BUILD_INFO")"
  exit 0
fi

[ "$(id -u)" -eq 0 ] || { echo "run as root: sudo bash $0 $CORES" >&2; exit 1; }

log "installing build dependencies"
dnf install -y -q epel-release
dnf config-manager --set-enabled powertools || true
dnf install -y -q gcc gcc-c++ gcc-gfortran make cmake git tcl-devel python39 python39-pip zip unzip \
  openmpi openmpi-devel lapack-devel blas-devel scalapack-openmpi-devel MUMPS-openmpi-devel \
  eigen3-devel hdf5-devel
python3.9 -m pip install -q google-crc32c==1.9.0 || true  # manifests hash with it when present
log "installing OpenSeesPy ${OPENSEESPY_VERSION}"
python3.9 -m pip install -q "openseespy==${OPENSEESPY_VERSION}"

# shellcheck disable=SC1091
source /etc/profile.d/modules.sh
module load mpi/openmpi-x86_64

log "fetching OpenSees ${OPENSEES_REF}"
SRC=/opt/build/OpenSees
rm -rf "$SRC"
git clone -q --depth 1 --branch "$OPENSEES_REF" https://github.com/OpenSees/OpenSees.git "$SRC"

log "configuring (MUMPS, ScaLAPACK, OpenMPI)"
cmake -S "$SRC" -B "$SRC/build" -DCMAKE_BUILD_TYPE=Release \
  -DMUMPS_DIR=/usr/lib64/openmpi -DSCALAPACK_LIBRARIES=/usr/lib64/openmpi/lib/libscalapack.so \
  -DMPI_C_COMPILER=mpicc -DMPI_CXX_COMPILER=mpicxx -DMPI_Fortran_COMPILER=mpif90

log "building OpenSees and OpenSeesMP with ${CORES} jobs"
cmake --build "$SRC/build" --target OpenSees OpenSeesMP -j "$CORES"

mkdir -p "$PREFIX/bin"
install -m 755 "$SRC/build/OpenSees" "$SRC/build/OpenSeesMP" "$PREFIX/bin/"
ln -sf "$PREFIX/bin/openseesmp" /usr/local/bin/openseesmp
install_launcher "$PREFIX/bin/OpenSees" "/usr/lib64/openmpi/bin/mpirun --allow-run-as-root --bind-to core"
install_python "$(command -v python3.9)" ""
ln -sf "$PREFIX/bin/opensees-python" /usr/local/bin/opensees-python

log "cleaning the build tree so the image stays small"
rm -rf /opt/build
dnf clean all -q
log "done: $(cat "$PREFIX/BUILD_INFO")"
