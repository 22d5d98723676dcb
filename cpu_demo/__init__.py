"""The CPU demo: the shipped testbed model invents people who exist nowhere, and the flow measures them (``python demo.py``)."""
from cpu_demo.pipeline import run_demo

__all__ = ["run_demo"]
