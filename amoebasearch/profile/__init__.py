"""Profile: per-device, per-runtime latency tables over depth and width, and the predictor over them.

Components: ``timing`` (harness), ``blocks`` (what is measured), ``runtimes`` (eager, compile,
onnxruntime, plug-ins), ``programs`` (blocks bound to a runtime and inputs), ``fingerprint``
(who measured), ``table`` (CSV + JSON sidecar), ``predict`` (compose rows into a subnet's
latency), ``validate`` (end-to-end check on extracted subnets), ``estimate`` (roofline tables
for devices we cannot touch). ``profiler`` wires them; ``amoebasearch profile`` is its shell.
"""

from amoebasearch.profile.predict import predict_latency
from amoebasearch.profile.table import LatencyTable, load_table

__all__ = ["LatencyTable", "load_table", "predict_latency"]
