"""The CPU demo: the whole IDiff-Face flow on five real photos, ending in a report (``python demo.py``)."""
from cpu_demo.pipeline import run_demo

__all__ = ["run_demo"]
