"""Device spec sheets: peak FLOP/s per dtype and memory bandwidth of the devices an estimate prices.

The numbers are data, in ``device_specs.json`` beside this module (shipped in the package), each
with the vendor document it comes from; this module reads them once into `SPECS`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from amoebasearch.errors import UsageError
from amoebasearch.profile.fingerprint import device_slug
from amoebasearch.profile.table import LatencyTable

SPEC_FILE = "device_specs.json"


@dataclass(frozen=True)
class DeviceSpec:
    """Peak dense FLOP/s per dtype (no sparsity) and memory bandwidth, from the vendor's data sheet."""

    name: str
    slug: str
    flops: dict[str, float]  # dtype -> FLOP/s
    bandwidth: float  # bytes/s
    default_dtype: str = "bfloat16"
    source: str = ""
    kind: str = "gpu"  # efficiencies are only transferred between devices of one kind


def _number(entry: dict[str, Any], where: str) -> float:
    """A sheet's number; one without a source is a mistake in the file, not a usable value."""
    if not entry.get("source"):
        raise ValueError(f"{SPEC_FILE}: {where} has no source")
    return float(entry["value"])


def load_specs(text: str) -> tuple[dict[str, DeviceSpec], dict[str, str]]:
    """The spec sheets of a ``device_specs.json`` text by key, and the aliases of each key."""
    specs, aliases = {}, {}
    for key, sheet in json.loads(text)["devices"].items():
        specs[key] = DeviceSpec(
            name=sheet["name"],
            slug=sheet["slug"],
            flops={dtype: _number(entry, f"{key} flops {dtype}") for dtype, entry in sheet["flops"].items()},
            bandwidth=_number(sheet["bandwidth"], f"{key} bandwidth"),
            default_dtype=sheet["default_dtype"],
            source=sheet["source"],
            kind=sheet["kind"],
        )
        aliases |= {alias: key for alias in sheet["aliases"]}
    return specs, aliases


SPECS, ALIASES = load_specs(resources.files(__package__).joinpath(SPEC_FILE).read_text(encoding="utf-8"))


def get_spec(name: str) -> DeviceSpec:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in SPECS:
        raise UsageError(f"no spec sheet for device {name!r}: choose one of {', '.join(SPECS)}")
    return SPECS[key]


def describes(spec: DeviceSpec, device: dict[str, Any]) -> bool:
    """Whether a measured table's device is the one ``spec`` describes (CPU sheets are per core:
    ``cpu-amd-epyc-t1`` describes any AMD EPYC table timed at one thread)."""
    slug = device_slug(device)
    if spec.kind == "cpu":
        one_thread = device.get("threads_used") == 1
        return device.get("kind") == "cpu" and one_thread and slug.startswith(spec.slug.removesuffix("-t1"))
    return device.get("kind") == "cuda" and slug == spec.slug


def spec_for_table(table: LatencyTable) -> DeviceSpec:
    """The spec entry of a measured table's device (only this CPU has one so far)."""
    device = table.meta["device"]
    if device.get("kind") == "cpu" and device.get("threads_used") == 1:
        return SPECS["cpu-t1"]
    for spec in SPECS.values():
        if spec.name.lower() in str(device.get("name", "")).lower():
            return spec
    raise UsageError(f"no spec sheet matches measured device {device.get('name')!r}: add one to {SPEC_FILE}")
