"""Channel bottlenecks: find Conv/Gemm layers wider than the information they carry, and factor them.

GoogLeNet puts a 1x1 reduce in front of its 5x5 convolutions by hand (28x28x192 -> 5x5x32 costs
120 M multiplications; with a 192->16 1x1 in front, 12.4 M). This package does it on trained
models without retraining, so every bottleneck approximates its layer and is measured:

* ``analyze_bottlenecks`` (detection): per layer, the singular values of the weights along both
  channel modes (the Tucker-2 unfoldings), the spectra of the input and output activations on
  calibration inputs (or seeded random ones, flagged ``evidence="random"``), the break-even ranks
  of the cost model, and a ranked table of opportunities with their predicted error.
* ``insert_bottlenecks`` (the engine behind the ``insert-bottleneck`` pass): every candidate
  layer factored alone at a ladder of ranks and the network re-run downstream of it, which
  measures its end-to-end error per rank in the budget's metric (``metrics``: max-rel, rms,
  cosine, top1); the ranks chosen jointly by a Lagrangian sweep (``allocation``); the chosen
  layers refitted in topological order against the ORIGINAL network's response from the inputs
  the already-approximated network gives them (asymmetric reconstruction); then verified end to
  end, planned again for less if over budget, and rolled back largest contributor first.

Structures (r = rank; W the layer's weights; x its input; y its output):

* ``input``: 1x1 (Cin->r, no bias) then KxK (r->Cout). The projection's row space is the top-r
  right singular subspace of ``W_(in) C^{1/2}`` (W unfolded as (Cout·kh·kw) x Cin, C = E[x x^T]
  uncentred over pixels): with C = I it is the weight factor, with W = I it is PCA of the input;
  the PCA and weight-factor bases are tried too and the best is kept. Bias-free, so zero padding
  stays exact. The KxK weights are then refitted by least squares per kernel tap against the
  original response: ``W' = W C_oz C_zz^{-1}`` with z the (actual) 1x1 output.
* ``output``: KxK (Cin->r, weights P^T W, bias P^T b) then 1x1 (r->Cout) with bias: channel
  decomposition (Zhang et al. 2015), P from centred PCA of the layer's output; the 1x1 and its
  bias are refitted by least squares against the original output.
* ``tucker2``: 1x1 (Cin->r1) -> KxK core (r1->r2) -> 1x1 (r2->Cout): the input-side fit at r1, whose
  KxK conv is then cut on the output side at r2 (PCA of what it gives on the reduced features, the
  expand refitted to the original response). Cheaper than either side alone where the weights are
  narrow along both channel modes.
* ``svd``: a 1x1 Conv or Gemm as two (the input-side math with kh = kw = 1 is the data-aware
  truncated SVD).

Predicted errors (the detection table and the rank ladders) are relative RMS errors of the layer
output from the discarded singular values, treating kernel taps as uncorrelated; decisions rest
on measured end-to-end errors in the budget's metric. A layer is refused when it is depthwise or
grouped, its weights are not constant, or it is already one side of a linear bottleneck (a
Conv/Gemm feeding another directly, or through a ReLU after a bias-free 1x1, through a tensor
narrower than the ends): that keeps the pass idempotent, since everything it inserts is such a pair.

The package's modules follow the work: ``layers`` (which layers qualify, their costs),
``calibration`` (feeds and the error measure), ``metrics`` (the budget's measures),
``spectra`` (the shared linear algebra), ``fitting`` (one layer's structures at a rank),
``allocation`` (sensitivities and the joint choice of ranks), ``engine`` (insertion,
verification, rollback) and ``detection`` (the ranked report). The names below are the public ones.
"""

from optimizer.bottleneck.calibration import random_feeds, relative_error
from optimizer.bottleneck.detection import BottleneckReport, LayerAnalysis, analyze_bottlenecks
from optimizer.bottleneck.engine import BottleneckResult, insert_bottlenecks
from optimizer.bottleneck.fitting import Fit
from optimizer.bottleneck.metrics import METRICS, metric_error
from optimizer.bottleneck.layers import Layer, break_even_rank, layer_of, linear_bottleneck_blocker, structure_macs
from optimizer.bottleneck.spectra import input_bases

__all__ = [
    "analyze_bottlenecks", "insert_bottlenecks", "BottleneckReport", "BottleneckResult", "LayerAnalysis", "Fit",
    "Layer", "layer_of", "linear_bottleneck_blocker", "structure_macs", "break_even_rank", "input_bases",
    "random_feeds", "relative_error", "METRICS", "metric_error",
]
