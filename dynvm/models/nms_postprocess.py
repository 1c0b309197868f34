"""SSD-style detection post-processing over a run-time number of anchors.

    valid_count, boxes, indices = get_valid_counts(data, score_threshold=0.05)
    kept = non_max_suppression(boxes, valid_count, indices, max_output_size=100,
                               iou_threshold=0.5, return_indices=False, invalid_to_bottom=True)
    top  = strided_slice(kept, rows 0..TOP)                 -> the TOP best boxes, -1 padded

`data` is (1, ?, 6) rows [class, score, x1, y1, x2, y2] (TVM's layout); the number of anchors is
`Any`, so one executable serves every anchor count.
"""
from __future__ import annotations

import numpy as np

from dynvm.compiler import ir, op

TOP = 20
GVC = {"score_threshold": 0.05, "id_index": 0, "score_index": 1}
NMS = {"max_output_size": 100, "iou_threshold": 0.5, "force_suppress": False, "top_k": -1,
       "coord_start": 2, "score_index": 1, "id_index": 0, "return_indices": False,
       "invalid_to_bottom": True}


def build_module() -> ir.IRModule:
    data = ir.var("data", ir.TensorType((1, ir.Any(), 6), "float32"))
    counts = op.get_valid_counts(data, **GVC)
    valid, boxes, indices = (ir.TupleGetItem(counts, k) for k in range(3))
    kept = op.non_max_suppression(boxes, valid, indices, **NMS)
    top = op.strided_slice(kept, begin=[0, 0, 0], end=[1, TOP, 6])
    return ir.IRModule.from_expr(ir.Function([data], top))


def iou(a: np.ndarray, b: np.ndarray) -> np.float32:
    """Intersection over union of two [.., .., x1, y1, x2, y2] rows in float32 (corners may
    come in either order; an empty union counts as no overlap)."""
    ax1, ax2 = sorted(a[2::2]); ay1, ay2 = sorted(a[3::2])
    bx1, bx2 = sorted(b[2::2]); by1, by2 = sorted(b[3::2])
    zero = np.float32(0)
    w = max(zero, min(ax2, bx2) - max(ax1, bx1))
    h = max(zero, min(ay2, by2) - max(ay1, by1))
    inter = w * h
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return zero if union <= zero else inter / union


def reference(data: np.ndarray) -> np.ndarray:
    """The pipeline written directly in numpy (TVM's semantics for this model's settings): keep
    rows with score > 0.05 and class >= 0; visit them by score, highest first (ties: lower
    index first); keep a row unless an already kept row of the same class overlaps it with
    IoU >= 0.5; stop at 100 kept rows; kept rows first in visiting order, -1 rows after."""
    out = np.full_like(data, -1)
    for i, rows in enumerate(data):
        valid = rows[(rows[:, 1] > np.float32(GVC["score_threshold"])) & (rows[:, 0] >= 0)]
        kept = []
        for row in valid[np.argsort(-valid[:, 1], kind="stable")]:
            if len(kept) == NMS["max_output_size"]:
                break
            if all(k[0] != row[0] or iou(k, row) < np.float32(NMS["iou_threshold"]) for k in kept):
                kept.append(row)
        if kept:
            out[i, :len(kept)] = kept
    return out[:, :TOP]


def make_input(anchors: int, seed: int = 0) -> np.ndarray:
    """Seeded random detections: 10 classes, boxes clustered so that NMS has work to do."""
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0, 300, (max(anchors // 8, 1), 2))
    xy = centers[rng.integers(0, len(centers), anchors)] + rng.normal(0, 6, (anchors, 2))
    wh = rng.uniform(10, 40, (anchors, 2))
    rows = np.column_stack([rng.integers(0, 10, anchors), rng.random(anchors), xy, xy + wh])
    return rows.astype(np.float32)[None]
