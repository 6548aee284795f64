"""Loopline: the offline and online AI process as software.

The library is pure: it never imports Prefect or BentoML. `pipelines/` wires its functions into
Prefect flows and `serving/` exposes them through BentoML.
"""

__version__ = "0.1.0"
