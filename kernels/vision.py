"""Kernel family "vision": get_valid_counts, non_max_suppression (TVM semantics) and nms (the
simple ONNX-style form) as native code. tests/numpy_reference.py holds the numpy references they are
tested against; the docstrings there state the semantics in full.

All float arithmetic is float32 in the order the references use (no fused multiply-add), so
IoU values and therefore the selected boxes agree bit for bit. Every kernel handles any
strides (NULL = compact), zero boxes and zero batches; output extents are checked against the
inputs before the first store (ERR_SHAPE otherwise). Scratch (NMS's index heap and list of kept
boxes, int64 each, one block per call) comes from malloc and is freed on every exit.

nms has two signatures, chosen by its number of outputs:
  - exact: outputs [selected (K,) int64]; K must be the number of boxes selected (the
    data-dependent shape function computes it); ERR_SHAPE otherwise, never a write past K.
  - upper bound: outputs [selected (E,) int64, shape (1,) int64] with E >= min(N, max_output);
    the kernel writes the K selected indices, pads selected[K:E] with -1 and stores the true
    shape (K,) in `shape`, so the VM can view selected[:K] without copying.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir

from dynvm.kernels.abi import ERR_SHAPE
from dynvm.kernels.family import Family, register
from dynvm.kernels.llvm_util import F32, I1, I8, I32, I64, const
from dynvm.kernels.sort import (Heap, PackedHeap, check_data_nonempty, check_extents,
                          descending_f32_rank, expect, new_kernel, single_variant)

VISION_OPS = ("get_valid_counts", "non_max_suppression", "nms")


def f32(value):
    """An attribute as the float32 constant the reference compares with."""
    return const(F32, float(np.float32(value)))


def _fmin(b, x, y):
    return b.select(b.fcmp_ordered("<", x, y), x, y)


def _fmax(b, x, y):
    return b.select(b.fcmp_ordered(">", x, y), x, y)


class Boxes:
    """Element access into a (B, N, K) or (N, 4) float32 array with run-time strides."""

    def __init__(self, e, data, strides):
        self.e, self.data, self.strides = e, data, strides

    def at(self, *idx):
        b = self.e.b
        off = const(I64, 0)
        for i, s in zip(idx, self.strides):
            off = b.add(off, b.mul(i if isinstance(i, ir.Value) else const(I64, i), s))
        return off

    def load(self, *idx):
        return self.e.load("float32", self.data, self.at(*idx))

    def store(self, value, *idx):
        self.e.store("float32", value, self.data, self.at(*idx))


def _copy_or_fill(e, out, dst, src, row, width, alive):
    """out[dst..., :] = src[row..., :] when `alive`, else -1 (K = width elements)."""
    minus_one = const(F32, -1.0)

    def body(k):
        with e.if_else(alive) as (keep, dead):
            with keep:
                out.store(src.load(*row, k), *dst, k)
            with dead:
                out.store(minus_one, *dst, k)
    e.for_range(0, width, body)


# ---------------------------------------------------------------------------------------------
# get_valid_counts


def _get_valid_counts(module, symbol, sig, spec):
    e, arrays, strides = new_kernel(module, symbol, sig)
    b = e.b
    batch, n, width = arrays[0][1]
    check_extents(e, 1, arrays[1][1], [batch])
    check_extents(e, 2, arrays[2][1], [batch, n, width])
    check_extents(e, 3, arrays[3][1], [batch, n])
    score_index, id_index = int(spec["score_index"]), int(spec["id_index"])
    e.fail_if(b.icmp_signed("<=", width, const(I64, max(score_index, id_index))),
              ERR_SHAPE | 2 << 16)
    check_data_nonempty(e, arrays)
    data, out = Boxes(e, arrays[0][0], strides[0]), Boxes(e, arrays[2][0], strides[2])
    counts, out_idx = arrays[1][0], arrays[3][0]
    threshold = f32(spec["score_threshold"])

    def batch_body(i):
        count = e.var(I64, const(I64, 0))

        def anchor(j):
            valid = b.fcmp_ordered(">", data.load(i, j, score_index), threshold)
            if id_index >= 0:
                valid = b.and_(valid, b.fcmp_ordered(">=", data.load(i, j, id_index),
                                                     const(F32, 0.0)))
            with e.if_(valid):
                c = e.get(count)
                _copy_or_fill(e, out, (i, c), data, (i, j), width, const(I1, 1))
                e.store("int32", b.trunc(j, I32), out_idx,
                        b.add(b.mul(i, strides[3][0]), b.mul(c, strides[3][1])))
                e.set(count, b.add(c, const(I64, 1)))

        e.for_range(0, n, anchor)

        def pad(j):
            _copy_or_fill(e, out, (i, j), data, (i, j), width, const(I1, 0))
            e.store("int32", const(I32, -1), out_idx,
                    b.add(b.mul(i, strides[3][0]), b.mul(j, strides[3][1])))
        e.for_range(e.get(count), n, pad)
        e.store("int32", b.trunc(e.get(count), I32), counts, b.mul(i, strides[1][0]))

    e.for_range(0, batch, batch_body)
    e.ret_ok()
    e.finish()


# ---------------------------------------------------------------------------------------------
# non_max_suppression (TVM)


def _tvm_iou_suppresses(e, data, i, a, q, coord, threshold):
    """TVM's hybrid_nms IoU of boxes a and q of batch i (corners normalised with min/max),
    compared with `>=`."""
    b = e.b
    zero = const(F32, 0.0)

    def corners(r):
        x1, y1, x2, y2 = (data.load(i, r, coord + t) for t in range(4))
        return _fmin(b, x1, x2), _fmin(b, y1, y2), _fmax(b, x1, x2), _fmax(b, y1, y2)

    al, at, ar, ab = corners(a)
    bl, bt, br, bb = corners(q)
    w = _fmax(b, zero, b.fsub(_fmin(b, ar, br), _fmax(b, al, bl)))
    h = _fmax(b, zero, b.fsub(_fmin(b, ab, bb), _fmax(b, at, bt)))
    area = b.fmul(h, w)
    union = b.fsub(b.fadd(b.fmul(b.fsub(ar, al), b.fsub(ab, at)),
                          b.fmul(b.fsub(br, bl), b.fsub(bb, bt))), area)
    iou = b.select(b.fcmp_ordered("<=", union, zero), zero, b.fdiv(area, union))
    return b.fcmp_ordered(">=", iou, threshold)


class _NmsOutput:
    """How one position of TVM's NMS result reaches the outputs, per output mode."""

    def __init__(self, e, spec, arrays, strides, data, n, width):
        self.e, self.spec, self.arrays, self.strides = e, spec, arrays, strides
        self.data, self.n, self.width = data, n, width
        self.mode = ("indices" if spec["return_indices"] else
                     "bottom" if spec["invalid_to_bottom"] else "boxes")
        self.out = Boxes(e, arrays[3][0], strides[3])

    def start(self, i):
        self.i = i
        self.written = self.e.var(I64, const(I64, 0))

    def entry(self, j, r, alive):
        """Position j holds row r of the input when `alive`, else the invalid entry (-1)."""
        e, b, i = self.e, self.e.b, self.i
        if self.mode == "boxes":
            _copy_or_fill(e, self.out, (i, j), self.data, (i, r), self.width, alive)
            return
        with e.if_(alive):
            w = e.get(self.written)
            if self.mode == "indices":
                idx = self.arrays[2][0]
                v = e.load("int32", idx, b.add(b.mul(i, self.strides[2][0]),
                                               b.mul(r, self.strides[2][1])))
                with e.if_(b.icmp_signed(">=", v, const(I32, 0))):
                    e.store("int32", v, self.arrays[3][0], self._index_at(i, w))
                    e.set(self.written, b.add(w, const(I64, 1)))
            else:
                with e.if_(b.fcmp_ordered(">=", self.data.load(i, r, 0), const(F32, 0.0))):
                    _copy_or_fill(e, self.out, (i, w), self.data, (i, r), self.width,
                                  const(I1, 1))
                    e.set(self.written, b.add(w, const(I64, 1)))

    def _index_at(self, i, j):
        b = self.e.b
        return b.add(b.mul(i, self.strides[3][0]), b.mul(j, self.strides[3][1]))

    def finish(self, valid):
        """Invalid entries after the last written one; the count output."""
        e, b, i = self.e, self.e.b, self.i
        if self.mode == "boxes":
            e.for_range(valid, self.n, lambda j: self.entry(j, const(I64, 0), const(I1, 0)))
            return
        first = e.get(self.written)
        if self.mode == "indices":
            e.for_range(first, self.n, lambda j: e.store("int32", const(I32, -1),
                                                         self.arrays[3][0], self._index_at(i, j)))
            count = self.arrays[4][0]
            e.store("int32", b.trunc(first, I32), count,
                    b.add(b.mul(i, self.strides[4][0]), b.mul(const(I64, 0), self.strides[4][1])))
        else:
            e.for_range(first, self.n, lambda j: _copy_or_fill(
                e, self.out, (i, j), self.data, (i, j), self.width, const(I1, 0)))


def _non_max_suppression(module, symbol, sig, spec):
    e, arrays, strides = new_kernel(module, symbol, sig)
    b = e.b
    batch, n, width = arrays[0][1]
    check_extents(e, 1, arrays[1][1], [batch])
    check_extents(e, 2, arrays[2][1], [batch, n])
    if spec["return_indices"]:
        check_extents(e, 3, arrays[3][1], [batch, n])
        check_extents(e, 4, arrays[4][1], [batch, const(I64, 1)])
    else:
        check_extents(e, 3, arrays[3][1], [batch, n, width])
    coord, score_index, id_index = (int(spec[k]) for k in ("coord_start", "score_index",
                                                            "id_index"))
    e.fail_if(b.icmp_signed("<", width, const(I64, max(coord + 4, score_index + 1,
                                                         id_index + 1))), ERR_SHAPE | 2 << 16)
    check_data_nonempty(e, arrays)
    data = Boxes(e, arrays[0][0], strides[0])
    heap_mem, kept = e.malloc_i64(n), e.malloc_i64(n)
    output = _NmsOutput(e, spec, arrays, strides, data, n, width)

    def batch_body(i):
        raw = b.sext(e.load("int32", arrays[1][0], b.mul(i, strides[1][0])), I64)
        valid = b.select(b.icmp_signed("<", raw, const(I64, 0)), const(I64, 0),
                         b.select(b.icmp_signed(">", raw, n), n, raw))
        output.start(i)
        if float(spec["iou_threshold"]) > 0:
            _greedy(e, spec, data, i, valid, Heap(e, "float32", True, e.ptr(
                "float32", arrays[0][0], data.at(i, 0, score_index)), strides[0][1], heap_mem),
                kept, output)
        else:
            e.for_range(0, valid, lambda j: output.entry(j, j, const(I1, 1)))
        output.finish(valid)

    e.for_range(0, batch, batch_body)
    e.ret_ok()
    e.finish()


def _greedy(e, spec, data, i, valid, heap, kept, output):
    """Positions 0..valid of batch i in score order: keep, suppress or pass through (TVM)."""
    b = e.b
    score_index, id_index, coord = (int(spec[k]) for k in ("score_index", "id_index",
                                                            "coord_start"))
    top_k, max_out = int(spec["top_k"]), int(spec["max_output_size"])
    threshold = f32(spec["iou_threshold"])
    heap.fill_iota(valid)
    heap.heapify(valid)
    size = e.var(I64, valid)
    keep_n = valid
    if top_k > 0:
        keep_n = b.select(b.icmp_signed("<", const(I64, top_k), valid), const(I64, top_k), valid)
    selected = e.var(I64, const(I64, 0))

    def position(j):
        # once max_output_size rows are kept, every later position is invalid whatever row it
        # would hold: the heap is not popped any more (popping the rest was most of the time)
        alive, row = e.var(I1, const(I1, 0)), e.var(I64, const(I64, 0))
        full = const(I1, 0) if max_out < 0 else b.icmp_signed("==", e.get(selected),
                                                              const(I64, max_out))
        with e.if_(b.not_(full)):
            r = heap.pop(size)
            e.set(row, r)
            e.set(alive, const(I1, 1))      # a row scoring <= 0 passes through (TVM)
            with e.if_(b.fcmp_ordered(">", data.load(i, r, score_index), const(F32, 0.0))):
                e.set(alive, _survives(e, spec, data, i, r, kept, e.get(selected),
                                       coord, id_index, threshold))
                with e.if_(e.get(alive)):
                    s = e.get(selected)
                    e.store("int64", r, kept, s)
                    e.set(selected, b.add(s, const(I64, 1)))
        output.entry(j, e.get(row), e.get(alive))

    e.for_range(0, keep_n, position)
    if output.mode == "boxes":
        e.for_range(keep_n, valid, lambda j: output.entry(j, const(I64, 0), const(I1, 0)))


def _survives(e, spec, data, i, r, kept, count, coord, id_index, threshold):
    """No kept box of the same class (or any, with force_suppress) overlaps r by >= threshold."""
    b = e.b
    ok = e.var(I1, const(I1, 1))
    t = e.var(I64, const(I64, 0))

    def cond():
        return b.and_(e.get(ok), b.icmp_signed("<", e.get(t), count))

    def body():
        q = e.load("int64", kept, e.get(t))
        check = const(I1, 1)
        if id_index >= 0:
            id_q = data.load(i, q, id_index)
            check = b.fcmp_ordered(">=", id_q, const(F32, 0.0))
            if not spec["force_suppress"]:
                check = b.and_(check, b.fcmp_ordered("==", data.load(i, r, id_index), id_q))
        with e.if_(check):
            with e.if_(_tvm_iou_suppresses(e, data, i, r, q, coord, threshold)):
                e.set(ok, const(I1, 0))
        e.set(t, b.add(e.get(t), const(I64, 1)))

    e.while_(cond, body)
    return e.get(ok)


# ---------------------------------------------------------------------------------------------
# nms (simple, ONNX-style)


def _normalised(e, boxes, r):
    """(lo0, lo1, hi0, hi1, area) of box r: corners sorted per axis (columns 0/2 and 1/3)."""
    b = e.b
    lo0, hi0 = (f(b, boxes.load(r, 0), boxes.load(r, 2)) for f in (_fmin, _fmax))
    lo1, hi1 = (f(b, boxes.load(r, 1), boxes.load(r, 3)) for f in (_fmin, _fmax))
    return lo0, lo1, hi0, hi1, b.fmul(b.fsub(hi0, lo0), b.fsub(hi1, lo1))


def _onnx_suppresses(b, c, s, threshold):
    """ONNX Runtime's SuppressByIOU for normalised boxes c and s: IoU > threshold; boxes
    without a positive-area overlap, and zero-area boxes, never suppress."""
    zero = const(F32, 0.0)
    c0, c1, c2, c3, area_c = c
    s0, s1, s2, s3, area_s = s
    iw = b.fsub(_fmin(b, c2, s2), _fmax(b, c0, s0))
    ih = b.fsub(_fmin(b, c3, s3), _fmax(b, c1, s1))
    inter = b.fmul(iw, ih)
    union = b.fsub(b.fadd(area_c, area_s), inter)
    positive = [b.fcmp_ordered(">", v, zero) for v in (iw, ih, area_c, area_s, union)]
    ok = positive[0]
    for p in positive[1:]:
        ok = b.and_(ok, p)
    iou = b.fdiv(inter, b.select(ok, union, const(F32, 1.0)))
    return b.and_(ok, b.fcmp_ordered(">", iou, threshold))


class _KeptBoxes:
    """The selected boxes, normalised, as five float32 columns of `bound` entries (scratch):
    the scan of a candidate against them is a branch-free loop LLVM vectorises."""

    def __init__(self, e, bound):
        self.e, self.bound = e, bound
        mem = e.malloc_i64(e.b.mul(bound, const(I64, 3)))   # 24 bytes >= 5 float32 per box
        self.columns = [e.ptr("float32", mem, e.b.mul(bound, const(I64, k))) for k in range(5)]

    def append(self, at, values):
        for col, v in zip(self.columns, values):
            self.e.store("float32", v, col, at)

    def suppresses(self, count, cand, threshold):
        """i1: some kept box t < count suppresses `cand` (an OR over all, no early exit)."""
        e, b = self.e, self.e.b
        hit = e.var(I8, const(I8, 0))

        def body(t):
            kept = [e.load("float32", col, t) for col in self.columns]
            flag = b.zext(_onnx_suppresses(b, cand, kept, threshold), I8)
            e.set(hit, b.or_(e.get(hit), flag))
        e.for_range(0, count, body)
        return b.icmp_unsigned("!=", e.get(hit), const(I8, 0))


def _nms(module, symbol, sig, spec):
    e, arrays, strides = new_kernel(module, symbol, sig)
    b = e.b
    n, four = arrays[0][1]
    e.fail_if(b.icmp_signed("!=", four, const(I64, 4)), ERR_SHAPE | 1 << 16)
    check_extents(e, 1, arrays[1][1], [n])
    capacity = arrays[2][1][0]
    max_out = int(spec["max_output"])
    counted = len(arrays) == 4
    bound = b.select(b.icmp_signed("<", n, const(I64, max_out)), n, const(I64, max_out))
    if counted:
        e.fail_if(b.icmp_signed("<", capacity, bound), ERR_SHAPE | 2 << 8)
        check_extents(e, 3, arrays[3][1], [const(I64, 1)])
    check_data_nonempty(e, arrays)
    boxes = Boxes(e, arrays[0][0], strides[0])
    scores, s_scores = arrays[1][0], strides[1][0]
    out, s_out = arrays[2][0], strides[2][0]
    e.fail_if(b.icmp_signed(">", n, const(I64, 0xFFFFFFFF)), ERR_SHAPE | 1 << 8)
    heap = PackedHeap(e, e.malloc_i64(n))
    kept = _KeptBoxes(e, bound)
    size = e.var(I64, const(I64, 0))

    def candidate(i):
        score = e.load("float32", scores, b.mul(i, s_scores))
        threshold = spec.get("score_threshold")
        keep = (b.fcmp_ordered("ord", score, score) if threshold is None else
                b.fcmp_ordered(">", score, f32(threshold)))
        with e.if_(keep):
            heap.push_back(size, descending_f32_rank(b, score), i)

    e.for_range(0, n, candidate)
    heap.heapify(e.get(size))
    selected = e.var(I64, const(I64, 0))
    iou = f32(spec["iou_threshold"])

    def more():
        return b.and_(b.icmp_signed("<", e.get(selected), const(I64, max_out)),
                      b.icmp_signed(">", e.get(size), const(I64, 0)))

    def step():
        c = heap.pop(size)
        cand = _normalised(e, boxes, c)
        with e.if_(b.not_(kept.suppresses(e.get(selected), cand, iou))):
            k = e.get(selected)
            e.fail_if(b.icmp_signed(">=", k, capacity), ERR_SHAPE | 2 << 8)
            e.store("int64", c, out, b.mul(k, s_out))
            kept.append(k, cand)
            e.set(selected, b.add(k, const(I64, 1)))

    e.while_(more, step)
    if counted:
        e.for_range(e.get(selected), capacity,
                    lambda t: e.store("int64", const(I64, -1), out, b.mul(t, s_out)))
        e.store("int64", e.get(selected), arrays[3][0], const(I64, 0))
    else:
        e.fail_if(b.icmp_signed("!=", e.get(selected), capacity), ERR_SHAPE | 2 << 8)
    e.ret_ok()
    e.finish()


# ---------------------------------------------------------------------------------------------
# the family


def _signature(op, spec):
    """The [inputs, outputs] signature an op's spec implies (nms: the exact form)."""
    if op == "get_valid_counts":
        return [["float32", 3]], [["int32", 1], ["float32", 3], ["int32", 2]]
    if op == "non_max_suppression":
        outs = ([["int32", 2], ["int32", 2]] if spec.get("return_indices")
                else [["float32", 3]])
        return [["float32", 3], ["int32", 1], ["int32", 2]], outs
    return [["float32", 2], ["float32", 1]], [["int64", 1]]


def check_vision(spec, inputs, outputs):
    """Build-time validation of op, attributes and signature."""
    op = spec.get("op")
    expect(op in VISION_OPS, f"vision family: unknown op {op!r}")
    want_in, want_out = _signature(op, spec)
    allowed = [want_out] + ([want_out + [["int64", 1]]] if op == "nms" else [])
    got_in, got_out = [list(x) for x in inputs], [list(x) for x in outputs]
    expect(got_in == want_in and got_out in allowed,
            f"{op}: signature must be {want_in} -> {' or '.join(map(str, allowed))}, "
            f"got {got_in} -> {got_out}")
    iou = spec.get("iou_threshold", 0.5)
    expect(op == "get_valid_counts" or (isinstance(iou, (int, float)) and 0 <= iou <= 1),
            f"{op}: iou_threshold must be in [0, 1], got {iou!r}")
    if op == "nms":
        m = spec.get("max_output")
        expect(isinstance(m, int) and not isinstance(m, bool) and m >= 0,
                f"nms: max_output must be an int >= 0, got {m!r}")
    for key in ("score_index", "coord_start"):
        expect(spec.get(key, 0) >= 0, f"{op}: {key} must be >= 0, got {spec.get(key)}")


EMITTERS = {"get_valid_counts": _get_valid_counts, "non_max_suppression": _non_max_suppression,
            "nms": _nms}


def emit_vision(module, symbol, spec, inputs, outputs):
    sig = [tuple(x) for x in inputs] + [tuple(x) for x in outputs]
    emit = EMITTERS[spec["op"]]
    return single_variant(module, symbol, sig, lambda m, s, g: emit(m, s, g, spec))


register(Family("vision", check_vision, emit_vision))
