"""`meshlens bench`: the KubeCon EU 2020 eBPF-vs-sidecar comparison, reproduced on the
shop (meshlens.shop) in network-namespace hosts: baseline, meshlens, and Envoy sidecars,
interleaved and repeated in one invocation; CPU, latency, memory and fidelity reported
as Markdown and a PNG chart."""
