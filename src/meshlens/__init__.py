"""meshlens: how services talk to each other, seen from the kernel with eBPF."""

__version__ = "0.1.0"
