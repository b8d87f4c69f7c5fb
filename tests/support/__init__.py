"""What the tests share: bin/ runners (bins), VM fixtures (vms), the ssh pipelines' image and jobs (pipelines),
the emulators served in-process (emulator) and result-set builders (results)."""
