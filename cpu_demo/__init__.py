"""The CPU demo (``python demo.py``): the testbed model invents people who exist nowhere; the flow measures them."""
from cpu_demo.pipeline import run_demo

__all__ = ["run_demo"]
