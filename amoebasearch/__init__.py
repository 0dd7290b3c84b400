"""amoebasearch: one pretrained LLM, any-shape subnets, the best one per device and latency budget.

The package reads as the pipeline: ``models`` (load) → ``shape`` / ``ordering`` (what a subnet is)
→ ``elastic`` (run any shape in place) → ``export`` (materialise a standalone subnet).
"""

from amoebasearch.errors import UsageError
from amoebasearch.ordering import Ordering
from amoebasearch.shape import Shape, ShapeSpace

__all__ = ["Ordering", "Shape", "ShapeSpace", "UsageError"]
__version__ = "0.1.0"
