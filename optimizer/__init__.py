"""ninopt: a compiler-style optimizer for ONNX convolutional networks.

Library entry points mirror the CLI::

    import optimizer
    result = optimizer.optimize("model.onnx")       # default exact pipeline, verified
    result.save("model.opt.onnx")
    costs = optimizer.analyze("model.onnx")          # per-node MACs, params, shapes
"""

from optimizer.api import OptimizeResult, analyze, load, optimize, save
from optimizer.errors import NinoptError, VerificationError
from optimizer.ir import Graph, Node

__all__ = ["Graph", "Node", "NinoptError", "OptimizeResult", "VerificationError", "analyze", "load", "optimize",
           "save"]
