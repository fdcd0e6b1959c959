"""Kernel probes: each one is bpf/<name>.bpf.c + bpf/<name>.h on the kernel side
and probes/<name>.py here, documented in docs/<name>.md."""
