"""ninopt: a compiler-style optimizer for ONNX convolutional networks.

Library entry points mirror the CLI::

    import optimizer
    result = optimizer.optimize("model.onnx")       # default exact pipeline, verified
    result.save("model.opt.onnx")
    costs = optimizer.analyze("model.onnx")          # per-node MACs, params, shapes
    outputs = optimizer.run("model.onnx", {"data": x})
    timings = optimizer.profile("model.onnx")         # where the executor's time goes
    report = optimizer.verify("model.onnx", "model.opt.onnx")
    summary = optimizer.zoo(["models/"], jobs=2).summary
"""

from optimizer.api import (
    BottleneckOptions, OptimizeResult, analyze, analyze_bottlenecks, load, optimize, profile, run, save, verify,
)
from optimizer.errors import NinoptError, VerificationError
from optimizer.graphsurgeon import to_graphsurgeon
from optimizer.ir import Graph, Node
from optimizer.zoo_runner import zoo

__all__ = ["BottleneckOptions", "Graph", "Node", "NinoptError", "OptimizeResult", "VerificationError", "analyze",
           "analyze_bottlenecks", "load", "optimize", "profile", "run", "save", "to_graphsurgeon", "verify", "zoo"]
