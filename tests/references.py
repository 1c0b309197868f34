"""Independent references written for the tests: direct loops over each operator's definition,
sharing no code with the project (its shape functions and numpy extern kernels must not be the
oracle of the native kernels they describe).

conv2d is computed in float64; the detection references compute IoU in float32 with the
formulas of their contracts (ONNX Runtime for `nms`, TVM for get_valid_counts and
non_max_suppression), so the kernels agree with them exactly.
"""
import numpy as np

F32 = np.float32


# ---------------------------------------------------------------- conv2d

def conv2d(x, w, strides=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """NCHW x OIHW in float64, one output position at a time: the window's taps are gathered by
    index arithmetic, taps falling into the padding are skipped. `padding` is Relay's 1, 2 or 4
    values (all sides; top/bottom, left/right; top, left, bottom, right)."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    pad = list(padding) * (4 if len(padding) == 1 else 2 if len(padding) == 2 else 1)
    top, left, bottom, right = pad
    (sh, sw), (dh, dw) = strides, dilation
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh = (h + top + bottom - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + left + right - dw * (kw - 1) - 1) // sw + 1
    og = o // groups
    out = np.zeros((n, o, max(oh, 0), max(ow, 0)))
    for y in range(max(oh, 0)):
        for z in range(max(ow, 0)):
            for i in range(kh):
                for j in range(kw):
                    iy, iz = y * sh - top + i * dh, z * sw - left + j * dw
                    if not (0 <= iy < h and 0 <= iz < wd):
                        continue
                    for g in range(groups):
                        patch = x[:, g * cg:(g + 1) * cg, iy, iz]              # (n, cg)
                        taps = w[g * og:(g + 1) * og, :, i, j]               # (og, cg)
                        out[:, g * og:(g + 1) * og, y, z] += patch @ taps.T
    return out


# ---------------------------------------------------------------- simple NMS (ONNX Runtime)

def onnx_iou_suppresses(a, b, threshold):
    """Does kept box b suppress candidate a? Corners in any order; IoU > threshold, counted
    only when the overlap and both areas are positive (float32 throughout)."""
    ax1, ax2 = sorted((F32(a[0]), F32(a[2])))
    ay1, ay2 = sorted((F32(a[1]), F32(a[3])))
    bx1, bx2 = sorted((F32(b[0]), F32(b[2])))
    by1, by2 = sorted((F32(b[1]), F32(b[3])))
    iw = min(ax2, bx2) - max(ax1, bx1)
    ih = min(ay2, by2) - max(ay1, by1)
    inter = iw * ih
    area_a, area_b = (ax2 - ax1) * (ay2 - ay1), (bx2 - bx1) * (by2 - by1)
    union = (area_a + area_b) - inter
    if not (iw > 0 and ih > 0 and area_a > 0 and area_b > 0 and union > 0):
        return False
    return bool(inter / union > F32(threshold))


def greedy_nms(boxes, scores, max_output, iou_threshold, score_threshold):
    """Indices (int64) of the boxes kept by greedy NMS: candidates score > score_threshold
    (every non-NaN score when it is None), visited by score descending with equal scores by
    lower index; kept unless a kept box suppresses it; at most max_output."""
    boxes, scores = np.asarray(boxes, F32), np.asarray(scores, F32)
    candidates = [i for i in range(len(scores)) if not np.isnan(scores[i]) and
                  (score_threshold is None or scores[i] > F32(score_threshold))]
    candidates.sort(key=lambda i: (-scores[i], i))
    kept = []
    for i in candidates:
        if len(kept) == max_output:
            break
        if not any(onnx_iou_suppresses(boxes[i], boxes[k], iou_threshold) for k in kept):
            kept.append(i)
    return np.array(kept, np.int64)


# ---------------------------------------------------------------- TVM detection ops

def get_valid_counts(data, score_threshold, id_index, score_index):
    """TVM get_valid_counts on (B, N, K) boxes: (valid_count (B,) int32, out (B, N, K) float32,
    out_indices (B, N) int32). A box is valid when its score > score_threshold and (with
    id_index >= 0) its class >= 0; valid boxes move to the top in input order, the other rows
    are all -1."""
    b, n, k = data.shape
    counts = np.zeros(b, np.int32)
    out = np.full((b, n, k), -1, F32)
    out_idx = np.full((b, n), -1, np.int32)
    for i in range(b):
        for j in range(n):
            row = data[i, j]
            if row[score_index] > F32(score_threshold) and (id_index < 0 or row[id_index] >= 0):
                out[i, counts[i]] = row
                out_idx[i, counts[i]] = j
                counts[i] += 1
    return counts, out, out_idx


def tvm_iou(a, b, coord):
    """TVM's IoU of two box rows (corners normalised by min/max; 0 for an empty union)."""
    def corners(r):
        x1, y1, x2, y2 = (F32(r[coord + t]) for t in range(4))
        return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)
    al, at, ar, ab = corners(a)
    bl, bt, br, bb = corners(b)
    w = max(F32(0), min(ar, br) - max(al, bl))
    h = max(F32(0), min(ab, bb) - max(at, bt))
    inter = h * w
    union = ((ar - al) * (ab - at) + (br - bl) * (bb - bt)) - inter
    return F32(0) if union <= 0 else inter / union


def tvm_nms_batch(data, valid, attrs):
    """Rows of one batch after TVM non_max_suppression, as a list over positions of the
    input row held there (None: an invalid, all -1 entry).

    iou_threshold <= 0: the first `valid` rows unchanged. Otherwise the first `valid` rows are
    sorted by score (descending, ties by lower index) and only the first top_k (when
    0 < top_k < valid) are visited; a row with score <= 0 passes through; a row with a positive
    score is dropped when an already kept row suppresses it (IoU >= threshold; only kept rows of
    class >= 0 count, and only of the same class unless force_suppress or id_index < 0), kept
    otherwise; once max_output_size (>= 0) rows are kept every later visited row is invalid."""
    n = len(data)
    if attrs["iou_threshold"] <= 0:
        return list(range(valid)) + [None] * (n - valid)
    score, cls, coord = attrs["score_index"], attrs["id_index"], attrs["coord_start"]
    order = sorted(range(valid), key=lambda r: (-data[r, score] if not np.isnan(data[r, score])
                                                else -np.inf, r))
    top_k = attrs["top_k"]
    visited = order[:top_k] if 0 < top_k < valid else order
    rows, kept = [], []
    for r in visited:
        if 0 <= attrs["max_output_size"] == len(kept):
            rows.append(None)
        elif not data[r, score] > 0:
            rows.append(r)
        elif any(tvm_iou(data[r], data[k], coord) >= F32(attrs["iou_threshold"]) for k in kept
                 if cls < 0 or (data[k, cls] >= 0 and (attrs["force_suppress"]
                                                       or data[k, cls] == data[r, cls]))):
            rows.append(None)
        else:
            kept.append(r)
            rows.append(r)
    return rows + [None] * (n - len(visited))


def tvm_non_max_suppression(data, valid_count, indices, attrs):
    """TVM non_max_suppression outputs; valid_count is clamped to [0, N].

    return_indices: ((B, N) int32 of the kept rows' `indices` values that are >= 0, compacted
    to the front, -1 after; (B, 1) int32 counts). Otherwise ((B, N, K) float32 boxes with -1
    rows for invalid entries, compacted to the front when invalid_to_bottom, where an entry
    counts only if its column 0 is >= 0, as in TVM)."""
    b, n, k = data.shape
    if attrs["return_indices"]:
        picked, counts = np.full((b, n), -1, np.int32), np.zeros((b, 1), np.int32)
    else:
        out = np.full((b, n, k), -1, F32)
    for i in range(b):
        rows = tvm_nms_batch(data[i], min(max(int(valid_count[i]), 0), n), attrs)
        if attrs["return_indices"]:
            values = [int(indices[i, r]) for r in rows if r is not None and indices[i, r] >= 0]
            picked[i, :len(values)] = values
            counts[i, 0] = len(values)
        elif attrs["invalid_to_bottom"]:
            live = [r for r in rows if r is not None and data[i, r, 0] >= 0]
            out[i, :len(live)] = data[i, live]
        else:
            for j, r in enumerate(rows):
                if r is not None:
                    out[i, j] = data[i, r]
    return [picked, counts] if attrs["return_indices"] else [out]


# ---------------------------------------------------------------- sorting

def sort_order(x, axis, descending):
    """Indices ordering `x` along `axis`: by value with NaN largest and -0.0 == 0.0, equal values
    by lower index (descending reverses the value order, not the tie order)."""
    x = np.moveaxis(np.asarray(x), axis, -1)
    order = np.empty(x.shape, np.int64)
    for pos in np.ndindex(x.shape[:-1]):
        line = x[pos]
        nan = np.isnan(line) if line.dtype.kind == "f" else np.zeros(len(line), bool)
        # rank key: (NaN last ascending / first descending, value, index)
        def key(i):
            big = bool(nan[i])
            value = 0 if big else line[i]
            return ((-1 if big else 0, -value, i) if descending else (1 if big else 0, value, i))
        order[pos] = sorted(range(len(line)), key=key)
    return np.moveaxis(order, -1, axis)
