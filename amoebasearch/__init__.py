"""amoebasearch: one pretrained LLM, any-shape subnets, the best one per device and latency budget.

The package reads as the pipeline: ``models`` (load) → ``shape`` / ``ordering`` (what a subnet is)
→ ``elastic`` (run any shape in place) → ``export`` (materialise a standalone subnet).

``Ordering`` needs torch, so it is imported on first use: importing the package (as the
command line does before it can catch Ctrl-C, `entry`) stays instant.
"""

from typing import Any

from amoebasearch.errors import UsageError
from amoebasearch.shape import Shape, ShapeSpace

__all__ = ["Ordering", "Shape", "ShapeSpace", "UsageError"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "Ordering":
        from amoebasearch.ordering import Ordering

        return Ordering
    raise AttributeError(f"module 'amoebasearch' has no attribute {name!r}")
