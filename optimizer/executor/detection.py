"""Detector post-processing: NonMaxSuppression, computed as onnxruntime does in float32."""

from __future__ import annotations

import numpy as np

from optimizer.executor.indexing import scalar_int
from optimizer.executor.registry import kernel


def _corners(boxes: np.ndarray, center_point_box: bool) -> tuple[np.ndarray, ...]:
    """(y_min, x_min, y_max, x_max) from [y1, x1, y2, x2] in either diagonal order, or [xc, yc, w, h]."""
    boxes = boxes.astype(np.float32, copy=False)
    if center_point_box:
        xc, yc, half_w, half_h = boxes[:, 0], boxes[:, 1], boxes[:, 2] / 2, boxes[:, 3] / 2
        return yc - half_h, xc - half_w, yc + half_h, xc + half_w
    y1, x1, y2, x2 = boxes.T
    return np.minimum(y1, y2), np.minimum(x1, x2), np.maximum(y1, y2), np.maximum(x1, x2)


def _overlaps(corners, best: int, others: np.ndarray, threshold: np.float32) -> np.ndarray:
    """Whether each of ``others`` has IoU > threshold with box ``best``; empty boxes never overlap."""
    y0, x0, y1, x1 = corners
    inter_h = np.maximum(np.minimum(y1[best], y1[others]) - np.maximum(y0[best], y0[others]), np.float32(0))
    inter_w = np.maximum(np.minimum(x1[best], x1[others]) - np.maximum(x0[best], x0[others]), np.float32(0))
    intersection = inter_h * inter_w
    area_best = (y1[best] - y0[best]) * (x1[best] - x0[best])
    area_others = (y1[others] - y0[others]) * (x1[others] - x0[others])
    union = area_best + area_others - intersection
    valid = (intersection > 0) & (area_best > 0) & (area_others > 0) & (union > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return valid & (intersection / np.where(valid, union, np.float32(1)) > threshold)


@kernel("NonMaxSuppression", since=10)
def _non_max_suppression(ctx, boxes, scores, max_output_boxes_per_class=None, iou_threshold=None,
                         score_threshold=None):
    """Per batch and class, greedily keep the highest-scoring boxes (ties: lower index first) that
    overlap no kept box by more than ``iou_threshold``; rows are [batch, class, box]."""
    limit = 0 if max_output_boxes_per_class is None else scalar_int(max_output_boxes_per_class)
    iou = np.float32(0 if iou_threshold is None else iou_threshold.reshape(-1)[0])
    center = bool(ctx.attr("center_point_box", 0))
    selected = []
    for batch in range(scores.shape[0] if limit > 0 else 0):
        corners = _corners(boxes[batch], center)
        for cls in range(scores.shape[1]):
            score = scores[batch, cls].astype(np.float32, copy=False)
            candidates = np.arange(score.size)
            if score_threshold is not None:
                candidates = candidates[score > np.float32(score_threshold.reshape(-1)[0])]
            candidates = candidates[np.argsort(-score[candidates], kind="stable")]
            kept = 0
            while candidates.size and kept < limit:
                best, candidates = candidates[0], candidates[1:]
                selected.append((batch, cls, best))
                kept += 1
                candidates = candidates[~_overlaps(corners, best, candidates, iou)]
    return np.array(selected, dtype=np.int64).reshape(-1, 3)
