"""Torch-free deployment: load an exported bundle and act with onnxruntime.

Imports numpy, onnxruntime, :mod:`swan_policy.spec` and
:mod:`swan_policy.budget.schedulers` only -- never torch (tested in a subprocess where
importing torch fails), so a robot's controller needs nothing of the training stack.
"""

from swan_policy.deploy.runtime import BundleError, PolicyRuntime, read_manifest
from swan_policy.spec import ObservationError

__all__ = ["BundleError", "ObservationError", "PolicyRuntime", "read_manifest"]
