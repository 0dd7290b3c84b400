"""Profile: per-device, per-runtime latency tables over depth and width, and the predictor over them.

Components: ``timing`` (harness), ``blocks`` (what is measured), ``runtimes`` (the registry of
``torch_runtimes``, ``onnx_runtime`` and plug-ins over ``runtime_base``), ``programs`` (blocks bound
to a runtime and inputs), ``fingerprint`` (who measured), ``table`` (CSV + JSON sidecar),
``predict`` (compose rows into a subnet's latency), ``validation_run`` (time extracted subnets end
to end) and ``validate`` (calibrate and score the table on them), ``merge`` (two runs of one
table), ``estimate`` (roofline tables for devices we cannot touch, from ``specs``, ``roofline``
and ``fit``). ``profiler`` wires them; ``amoebasearch profile`` is its shell.
"""

from amoebasearch.profile.predict import predict_latency
from amoebasearch.profile.table import LatencyTable, load_table

__all__ = ["LatencyTable", "load_table", "predict_latency"]
