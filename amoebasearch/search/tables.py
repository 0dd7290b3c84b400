"""Pick the latency table `find` prices shapes with: measured for this device first, then estimated.

A CPU table belongs to one CPU (its full identity, `fingerprint.same_cpu`) and one thread count:
the table `find` picks on a CPU was timed on this very CPU at the threads the user deploys with
(``--threads``, default the runtime's own default here), and a table of this CPU at another
thread count is refused rather than silently priced.
"""

from __future__ import annotations

from pathlib import Path

from amoebasearch.errors import UsageError
from amoebasearch.profile.estimate import modelled_runtime
from amoebasearch.profile.table import LatencyTable, candidate_tables, folder_label, load_table


def _same_device(table: LatencyTable, fingerprint: dict, device_slug: str, model_name: str) -> bool:
    from amoebasearch.profile.fingerprint import same_cpu

    if table.estimated:  # spec sheets carry no chip identity: their file name names the device
        return Path(table.path).stem.startswith(f"{model_name}-{device_slug}")
    if fingerprint.get("kind") == "cpu":
        return same_cpu(table.meta.get("device", {}), fingerprint)
    return table.meta.get("device", {}).get("name") == fingerprint.get("name")


def choose_table(
    folder: Path,
    signature: str,
    fingerprint: dict,
    device_slug: str,
    runtime: str,
    model_name: str,
    device: str,
    threads: int | None = None,
    quant: str | None = None,
) -> LatencyTable:
    """The measured table for this device, runtime (and on a CPU, ``threads``; for llamacpp,
    ``quant`` when given); else an estimated one (callers warn). A measured table of this CPU and
    runtime at other threads only is refused."""
    measured, estimated, other_threads = [], [], []
    for path in candidate_tables(folder, signature):
        table = load_table(path, signature, model_name)
        if not _same_device(table, fingerprint, device_slug, model_name):
            continue
        if table.estimated:
            estimated.append(table)
        elif quant is not None and table.meta.get("runtime", {}).get("quant") != quant:
            continue
        elif table.meta.get("runtime", {}).get("name") == runtime:
            if threads is None or table.threads in (None, threads):
                measured.append(table)
            else:
                other_threads.append(table)
    if measured:
        return measured[0]
    if other_threads:
        counts = sorted({t.threads for t in other_threads})
        raise UsageError(
            f"the {runtime} tables of this CPU in {folder_label(folder)} were timed at {_threads(counts)}, not the "
            f"{threads} this search deploys at: pass --threads {counts[0]} to deploy at that count, or run "
            f"`amoebasearch profile --runtime {runtime} --threads {threads}`"
        )
    if estimated:  # the estimate of this runtime's launch costs if there is one (an eager one prices all)
        return min(estimated, key=lambda table: modelled_runtime(table) != runtime)
    raise UsageError(
        f"no latency table for {model_name} on {device} ({runtime}) in {folder_label(folder)}: run "
        f"`amoebasearch profile --device {device} --runtime {runtime}` or pass --profile TABLE.csv"
    )


def _threads(counts: list[int]) -> str:
    return " and ".join(f"{count} thread{'s' if count > 1 else ''}" for count in counts)


def check_table_threads(table: LatencyTable, threads: int | None, host_default: int, this_cpu: dict | None) -> None:
    """Refuse a CPU table (given with ``--profile``) timed at other threads than the search deploys at.

    ``threads`` is ``--threads`` (None when not given). Without it, a table of this very CPU must be
    at the runtime's default thread count here (what an unconfigured deployment runs at); a table
    of another CPU is priced at its own count (this host's default says nothing about that one).
    """
    from amoebasearch.profile.fingerprint import same_cpu

    if table.threads is None:
        return
    if threads is not None and table.threads != threads:
        raise UsageError(
            f"--profile {table.path} was timed at {_threads([table.threads])}, not --threads {threads}: "
            f"pass --threads {table.threads}, or profile at {threads} threads"
        )
    here = this_cpu is not None and same_cpu(table.meta.get("device", {}), this_cpu)
    if threads is None and here and table.threads != host_default:
        raise UsageError(
            f"--profile {table.path} was timed at {_threads([table.threads])}, but this CPU runs "
            f"{host_default} by default: pass --threads {table.threads} to deploy at that count, or profile "
            "at the default"
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
