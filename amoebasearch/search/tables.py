"""Pick the latency table `find` prices shapes with: measured for this device first, then estimated."""

from __future__ import annotations

from pathlib import Path

from amoebasearch.errors import UsageError
from amoebasearch.profile.estimate import modelled_runtime
from amoebasearch.profile.table import LatencyTable, candidate_tables, folder_label, load_table


def choose_table(
    folder: Path, signature: str, device_slug: str, runtime: str, model_name: str, device: str
) -> LatencyTable:
    """The measured table for this device and runtime; else an estimated one (callers warn)."""
    paths = candidate_tables(folder, signature)
    measured, estimated = [], []
    for path in paths:
        table = load_table(path, signature, model_name)
        same_device = path.stem.startswith(f"{model_name}-{device_slug}")
        same_runtime = table.meta.get("runtime", {}).get("name") == runtime
        if not table.estimated and same_device and same_runtime:
            measured.append(table)
        elif table.estimated and same_device:
            estimated.append(table)
    if measured:
        return measured[0]
    if estimated:  # the estimate of this runtime's launch costs if there is one (an eager one prices all)
        return min(estimated, key=lambda table: modelled_runtime(table) != runtime)
    raise UsageError(
        f"no latency table for {model_name} on {device} ({runtime}) in {folder_label(folder)}: run "
        f"`amoebasearch profile --device {device} --runtime {runtime}` or pass --profile TABLE.csv"
    )


def check_table_matches(table: LatencyTable, device: str | None, runtime: str | None) -> None:
    """Refuse a ``--device`` or ``--runtime`` given beside ``--profile`` that the table contradicts:
    the table decides what is priced, and a flag silently overruled is a search on the wrong thing."""
    if runtime is not None:
        measured = table.meta.get("runtime", {}).get("name")
        prices = modelled_runtime(table) if table.estimated else measured
        if runtime != prices:
            raise UsageError(
                f"--profile {table.path} prices runtime {prices}, not --runtime {runtime}: "
                "drop --runtime, or pass that runtime's table"
            )
    if device is not None and not table.estimated:
        kind = table.meta.get("device", {}).get("kind")
        if kind != device.split(":")[0]:
            raise UsageError(
                f"--profile {table.path} was measured on a {kind} device, not --device {device}: "
                "drop --device, or pass that device's table"
            )
