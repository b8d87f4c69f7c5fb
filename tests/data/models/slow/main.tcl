# A small real OpenSees model: an elastic truss pulled in 40 load steps, 150 ms apart.
# Each step appends to progress.txt (flushed) and the recorder writes disp.out, so a job killed
# mid-way still leaves partial results on the VM's disk.
model basic -ndm 2 -ndf 2
node 1 0.0 0.0
node 2 1.0 0.0
fix 1 1 1
fix 2 0 1
uniaxialMaterial Elastic 1 1000.0
element truss 1 1 2 1.0 1
timeSeries Linear 1
pattern Plain 1 1 { load 2 1.0 0.0 }
recorder Node -file disp.out -time -closeOnWrite -node 2 -dof 1 disp
system BandGeneral
numberer Plain
constraints Plain
integrator LoadControl 0.01
algorithm Linear
analysis Static
set fh [open progress.txt w]
for {set i 1} {$i <= 40} {incr i} {
    analyze 1
    puts $fh "step $i [nodeDisp 2 1]"
    flush $fh
    puts "step $i"
    after 150
}
close $fh
puts "analysis complete"
