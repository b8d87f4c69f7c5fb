# Transient response of a steel truss bridge span under a sine ground acceleration (SI units: N, m, s).
# Seven-panel Warren truss with corotational truss members; lumped masses on the deck; Rayleigh damping
# of 3%; Newmark average acceleration, 0.005 s steps for 6 s (1200 steps). Recorders write midspan
# displacement and acceleration, support reactions and member axial forces into output/.
wipe
model BasicBuilder -ndm 2 -ndf 2
file mkdir output

set panels 7
set dx 4.0
set h 3.0
# bottom chord nodes 1..8, top chord nodes 101..107
for {set i 0} {$i <= $panels} {incr i} { node [expr $i+1] [expr $i*$dx] 0.0 }
for {set i 0} {$i < $panels} {incr i} { node [expr 101+$i] [expr ($i+0.5)*$dx] $h }
fix 1 1 1
fix [expr $panels+1] 0 1

uniaxialMaterial Steel01 1 355.0e6 200.0e9 0.02
set A 0.004
set e 0
for {set i 1} {$i <= $panels} {incr i} { element corotTruss [incr e] $i [expr $i+1] $A 1 }
for {set i 0} {$i < $panels-1} {incr i} { element corotTruss [incr e] [expr 101+$i] [expr 102+$i] $A 1 }
for {set i 0} {$i < $panels} {incr i} {
  element corotTruss [incr e] [expr $i+1] [expr 101+$i] $A 1
  element corotTruss [incr e] [expr 101+$i] [expr $i+2] $A 1
}

# deck mass 8 t per bottom node
for {set i 1} {$i <= $panels+1} {incr i} { mass $i 8000.0 8000.0 }

set mid [expr ($panels+1)/2 + 1]
recorder Node -file output/midspan_disp.out -time -node $mid -dof 1 2 disp
recorder Node -file output/midspan_accel.out -time -node $mid -dof 2 accel
recorder Node -file output/support_reactions.out -time -node 1 [expr $panels+1] -dof 1 2 reaction
recorder Element -file output/member_forces.out -time -eleRange 1 $e axialForce

# gravity
pattern Plain 1 Linear {
  for {set i 2} {$i <= $panels} {incr i} { load $i 0.0 -80.0e3 }
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
wipeAnalysis

# vertical sine ground acceleration, 0.3 g at 2.5 Hz
set dt 0.005
set g 9.81
timeSeries Trig 2 0.0 6.0 0.4 -factor [expr 0.3*$g]
pattern UniformExcitation 2 2 -accel 2

set lambda [eigen -fullGenLapack 2]
set w1 [expr sqrt([lindex $lambda 0])]
set w2 [expr sqrt([lindex $lambda 1])]
set zeta 0.03
set a0 [expr $zeta*2.0*$w1*$w2/($w1+$w2)]
set a1 [expr $zeta*2.0/($w1+$w2)]
rayleigh $a0 0.0 $a1 0.0
puts [format "first periods: %.3f s, %.3f s" [expr 2*3.14159265/$w1] [expr 2*3.14159265/$w2]]

constraints Transformation
system BandGeneral
test NormDispIncr 1.0e-8 20
algorithm Newton
integrator Newmark 0.5 0.25
analysis Transient
set ok [analyze 1200 $dt]
puts [format "transient done at t = %.3f s: midspan deflection %.5f m" [getTime] [nodeDisp $mid 2]]
wipe
if {$ok != 0} { exit 1 }
