"""Elastic-plastic SDOF oscillator under one ground-motion record, in OpenSeesPy (SI units).

Arguments as the Tcl twin (examples/sdof_tcl/main.tcl): -record FILE -scale S -period T -fy FY, all
optional. The shared records are records/ in this folder on the VM (OPS_HPC_SHARED names it too);
run by hand from this folder, ../records is used.
"""

import math
import os
import sys

import openseespy.opensees as ops

opt = {"-record": "gm_pulse.txt", "-scale": "1.0", "-period": "0.5", "-fy": "2.0"}
opt.update({sys.argv[i]: sys.argv[i + 1] for i in range(1, len(sys.argv) - 1, 2)})
records = os.environ.get("OPS_HPC_SHARED", "../records")
print(f"record {opt['-record']} scale {opt['-scale']} period {opt['-period']} s, tag {os.environ.get('RUN_TAG', '-')}")

ops.wipe()
ops.model("basic", "-ndm", 1, "-ndf", 1)
os.makedirs("output", exist_ok=True)
ops.node(1, 0.0)
ops.node(2, 0.0, "-mass", 1.0)
ops.fix(1, 1)
k = (2.0 * math.pi / float(opt["-period"])) ** 2
ops.uniaxialMaterial("Steel01", 1, float(opt["-fy"]), k, 0.02)
ops.element("zeroLength", 1, 1, 2, "-mat", 1, "-dir", 1)
ops.timeSeries("Path", 1, "-dt", 0.01, "-filePath", os.path.join(records, opt["-record"]),
               "-factor", 9.81 * float(opt["-scale"]))
ops.pattern("UniformExcitation", 1, 1, "-accel", 1)
ops.rayleigh(2.0 * 0.05 * math.sqrt(k), 0.0, 0.0, 0.0)
ops.recorder("Node", "-file", "output/displacement.out", "-time", "-node", 2, "-dof", 1, "disp")
ops.constraints("Plain")
ops.numberer("Plain")
ops.system("FullGeneral")
ops.test("NormDispIncr", 1.0e-10, 20)
ops.algorithm("Newton")
ops.integrator("Newmark", 0.5, 0.25)
ops.analysis("Transient")
peak = 0.0
for i in range(800):
    if ops.analyze(1, 0.01) != 0:
        sys.exit(f"step {i} did not converge")
    peak = max(peak, abs(ops.nodeDisp(2, 1)))
with open("output/peak.txt", "w") as fh:
    fh.write(f"{peak:.6f}\n")
print(f"peak displacement {peak:.5f} m")
ops.wipe()
