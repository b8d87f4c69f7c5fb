# Nonlinear pushover of a one-bay, two-storey steel moment frame (SI units: N, m).
# Columns and beams are force-based fiber elements on a Steel02 wide-flange section; gravity first,
# then a displacement-controlled push of the roof to 4% drift in 400 steps. Recorders write the roof
# and floor displacements and the base reactions into output/.
wipe
model BasicBuilder -ndm 2 -ndf 3
file mkdir output

set H 3.5 ;  # storey height
set L 6.0 ;  # bay width
node 1 0.0 0.0
node 2 $L  0.0
node 3 0.0 $H
node 4 $L  $H
node 5 0.0 [expr 2*$H]
node 6 $L  [expr 2*$H]
fix 1 1 1 1
fix 2 1 1 1

# Steel02: fy = 355 MPa, E = 200 GPa, 1% hardening
uniaxialMaterial Steel02 1 355.0e6 200.0e9 0.01 18.0 0.925 0.15

# wide-flange fiber section: depth d, flange width bf, flange tf, web tw
proc wsection {tag mat d bf tf tw} {
  set y1 [expr $d/2.0]
  set y2 [expr $d/2.0 - $tf]
  section Fiber $tag {
    patch rect $mat 4 1 $y2 [expr -$bf/2.0] $y1 [expr $bf/2.0]
    patch rect $mat 4 1 [expr -$y1] [expr -$bf/2.0] [expr -$y2] [expr $bf/2.0]
    patch rect $mat 10 1 [expr -$y2] [expr -$tw/2.0] $y2 [expr $tw/2.0]
  }
}
wsection 1 1 0.36 0.25 0.020 0.012 ;  # columns
wsection 2 1 0.45 0.19 0.015 0.009 ;  # beams

geomTransf PDelta 1
geomTransf Linear 2
set np 5
element forceBeamColumn 1 1 3 $np 1 1
element forceBeamColumn 2 2 4 $np 1 1
element forceBeamColumn 3 3 5 $np 1 1
element forceBeamColumn 4 4 6 $np 1 1
element forceBeamColumn 5 3 4 $np 2 2
element forceBeamColumn 6 5 6 $np 2 2

recorder Node -file output/roof_disp.out -time -node 5 -dof 1 disp
recorder Node -file output/floor_disp.out -time -node 3 5 -dof 1 disp
recorder Node -file output/base_reactions.out -time -node 1 2 -dof 1 2 3 reaction

# gravity: 300 kN per column top node, in 10 load steps
pattern Plain 1 Linear {
  load 3 0.0 -300.0e3 0.0
  load 4 0.0 -300.0e3 0.0
  load 5 0.0 -300.0e3 0.0
  load 6 0.0 -300.0e3 0.0
}
constraints Plain
numberer RCM
system BandGeneral
test NormDispIncr 1.0e-8 20
algorithm Newton
integrator LoadControl 0.1
analysis Static
if {[analyze 10] != 0} { puts stderr "gravity analysis failed"; exit 2 }
loadConst -time 0.0

# lateral push: inverted-triangle pattern, roof to 4% drift (0.28 m) in 400 steps
pattern Plain 2 Linear {
  load 3 0.5 0.0 0.0
  load 5 1.0 0.0 0.0
}
set target [expr 0.04 * 2 * $H]
set steps 400
integrator DisplacementControl 5 1 [expr $target / $steps]
set ok [analyze $steps]
if {$ok != 0} {
  # fall back to a more robust algorithm step by step
  algorithm NewtonLineSearch
  set ok 0
  while {$ok == 0 && [nodeDisp 5 1] < $target} { set ok [analyze 1] }
}
reactions
set base [expr -([nodeReaction 1 1] + [nodeReaction 2 1])]
puts [format "pushover done: roof %.4f m, base shear %.1f kN" [nodeDisp 5 1] [expr $base/1000.0]]
wipe
if {$ok != 0} { exit 1 }
