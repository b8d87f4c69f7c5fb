# Elastic-plastic SDOF oscillator under one ground-motion record, for parametric sweeps (SI units).
# Arguments (from the batch line's args= and the sweep table's columns), all optional:
#   -record FILE  a record of the shared folder (one acceleration in g per line, 0.01 s apart)
#   -scale S      factor on the record;   -period T   elastic period in s;   -fy FY   yield force (N per kg)
# The shared records are `records/` in this folder on the VM (OPS_HPC_SHARED names it too); run by hand
# from this folder, ../records is used.
array set opt {-record gm_pulse.txt -scale 1.0 -period 0.5 -fy 2.0}
foreach {key value} $argv { set opt($key) $value }
if {[info exists env(OPS_HPC_SHARED)]} { set records $env(OPS_HPC_SHARED) } else { set records ../records }
puts "record $opt(-record) scale $opt(-scale) period $opt(-period) s, tag [expr {[info exists env(RUN_TAG)] ? $env(RUN_TAG) : {-}}]"

wipe
model BasicBuilder -ndm 1 -ndf 1
file mkdir output
node 1 0.0
node 2 0.0 -mass 1.0
fix 1 1
set k [expr {pow(2.0 * 3.14159265 / $opt(-period), 2)}]
uniaxialMaterial Steel01 1 $opt(-fy) $k 0.02
element zeroLength 1 1 2 -mat 1 -dir 1
timeSeries Path 1 -dt 0.01 -filePath [file join $records $opt(-record)] -factor [expr {9.81 * $opt(-scale)}]
pattern UniformExcitation 1 1 -accel 1
rayleigh [expr {2.0 * 0.05 * sqrt($k)}] 0.0 0.0 0.0
recorder Node -file output/displacement.out -time -node 2 -dof 1 disp
constraints Plain
numberer Plain
system FullGeneral
test NormDispIncr 1.0e-10 20
algorithm Newton
integrator Newmark 0.5 0.25
analysis Transient
set peak 0.0
for {set i 0} {$i < 800} {incr i} {
  if {[analyze 1 0.01] != 0} { puts stderr "step $i did not converge"; exit 1 }
  set d [expr {abs([nodeDisp 2 1])}]
  if {$d > $peak} { set peak $d }
}
set f [open output/peak.txt w]
puts $f [format "%.6f" $peak]
close $f
puts [format "peak displacement %.5f m" $peak]
wipe
