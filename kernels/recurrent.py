"""The "recurrent" kernel family: every time step of one direction of an RNN / GRU / LSTM layer
in one call (the op: compiler/op/rnn.py).

Signature: inputs x_proj (T, 3) (seq, batch, G*H), w_bias (T, 1) (G*H), r_t (T, 2) (H, G*H),
r_bias (T, 1) (G*H), h0 and c0 (T, 2) (batch, H), lens (int32/int64, 1) (batch); outputs
Y (T, 3) (seq, batch, H), Y_h and Y_c (T, 2) (batch, H); T float32 or float64. Spec {"op":
"recurrent", "cell", "activations", "reverse", "linear_before_reset", "clip"}
(shape_funcs/recurrent.py checks them).
Mismatched extents are ERR_SHAPE; every array must be compact (ERR_LAYOUT: VM tensors are).

Sequences are independent, so the batch is the outer loop and each sequence keeps its states
in its own rows of Y_h / Y_c: h0 / c0 are copied there, every step updates them in place and
copies h into its row of Y; the rows at t >= lens[b] are zeroed, and so are the states of a
sequence of length 0 (as ONNX Runtime does). A cell without c (rnn, gru) leaves Y_c 0.
One step is
  gates = r_bias + h . r_t          a gemv in blocks of 8 rows of r_t: per block one
                                    vectorised pass over the gates (8 fmas per load and store,
                                    r_t read in memory order, which keeps large weights
                                    streaming);
  the cell's update                 one vectorised pass over the hidden units reading x_proj's
                                    row plus w_bias, the gates and the states (GRU without
                                    linear_before_reset: two passes around a second gemv of
                                    r * h with the candidate's columns).
Gate activations are kernels/llvm_math's sigmoid and tanh (as the elementwise kernels) and relu;
`clip` bounds the input of each gate's activation (as ONNX Runtime does: not the cell state an
LSTM's output activation reads). A length outside [0, seq] is ERR_VALUE (argument 6), checked
before anything is written. Single-threaded: the result does not depend on the
kernel thread count.
"""
from __future__ import annotations

from llvmlite import ir

from dynvm.kernels import llvm_math as lm
from dynvm.kernels.abi import ERR_LAYOUT, ERR_NULL, ERR_SHAPE, ERR_VALUE
from dynvm.kernels.family import Family, emit_dispatcher, register, variant_symbol
from dynvm.kernels.llvm_util import (I1, I8, I32, I64, MEM_TYPE, PTR, all_of, c64, check,
                                     check_equal, const, elem_bytes, elem_ptr, for_range,
                                     get_function, icmp, if_then, is_compact, load, load_strides,
                                     new_function, prologue, return_zero_if, splat,
                                     store, vector_fold, vector_type)
from dynvm.shape_funcs.recurrent import check_recurrent_attrs
from dynvm.vm.errors import KernelError

LENS_DTYPES = ("int32", "int64")
ROWS = 8          # rows of r_t per gemv pass over the gates
UNROLL = 4        # vectors of gates per trip of that pass


def check_recurrent(spec, inputs, outputs):
    try:
        check_recurrent_attrs({"clip": None, **spec})
    except (KeyError, ValueError) as e:
        raise KernelError(f"recurrent: bad spec {spec}: {e}") from None
    if len(inputs) != 7 or len(outputs) != 3:
        raise KernelError(f"recurrent: expected 7 inputs and 3 outputs, got {len(inputs)} and "
                          f"{len(outputs)}")
    dt = inputs[0][0]
    want = [[dt, 3], [dt, 1], [dt, 2], [dt, 1], [dt, 2], [dt, 2]]
    if dt not in ("float32", "float64") or [list(t) for t in inputs[:6]] != want \
            or inputs[6][0] not in LENS_DTYPES or inputs[6][1] != 1 \
            or [list(t) for t in outputs] != [[dt, 3], [dt, 2], [dt, 2]]:
        raise KernelError(f"recurrent: needs float32/float64 x_proj (3-D), w_bias (1-D), r_t "
                          f"(2-D), r_bias (1-D), h0, c0 (2-D), int32/int64 lens (1-D) and "
                          f"outputs Y (3-D), Y_h, Y_c (2-D) of the same dtype, got {inputs} -> "
                          f"{outputs}")


def _relu(b, x):
    zero = const(x.type, 0.0)
    return b.select(b.fcmp_ordered("<", x, zero), zero, x)     # NaN stays NaN


ACTIVATION_IR = {"Sigmoid": lm.sigmoid, "Tanh": lm.tanh, "Relu": _relu}


class Layer:
    """The validated arrays of one call and the emitters of one step."""

    def __init__(self, b, raw, spec, sig):
        self.b, self.spec = b, spec
        self.elem = MEM_TYPE[sig[0][0]]
        self.lens_ty = MEM_TYPE[sig[6][0]]
        self.lanes = lm.vector_lanes(self.elem)
        (self.x, (self.seq, self.batch, self.width), _), (self.wb, wb_ext, _), \
            (self.r_t, r_ext, _), (self.rb, rb_ext, _), (self.h0, h0_ext, _), \
            (self.c0, c0_ext, _), (self.lens, lens_ext, _), (self.y, y_ext, _), \
            (self.yh, yh_ext, _), (self.yc, yc_ext, _) = raw
        self.hidden = r_ext[0]
        self.acts = [ACTIVATION_IR[a] for a in spec["activations"]]
        self.gates = check_recurrent_attrs({"clip": None, **spec})
        self.raw = raw
        self.expected = [(wb_ext[0], self.width, 1, 0), (r_ext[1], self.width, 2, 1),
                         (rb_ext[0], self.width, 3, 0),
                         (h0_ext[0], self.batch, 4, 0), (h0_ext[1], self.hidden, 4, 1),
                         (c0_ext[0], self.batch, 5, 0), (c0_ext[1], self.hidden, 5, 1),
                         (lens_ext[0], self.batch, 6, 0), (y_ext[0], self.seq, 7, 0),
                         (y_ext[1], self.batch, 7, 1), (y_ext[2], self.hidden, 7, 2),
                         (yh_ext[0], self.batch, 8, 0), (yh_ext[1], self.hidden, 8, 1),
                         (yc_ext[0], self.batch, 9, 0), (yc_ext[1], self.hidden, 9, 1)]

    def validate(self):
        """Extents (ERR_SHAPE), layouts (ERR_LAYOUT), data pointers of non-empty arrays."""
        b = self.b
        for got, want, arg, dim in self.expected:
            check_equal(b, got, want, arg, dim)
        check(b, icmp(b, "==", self.width, b.mul(self.hidden, c64(self.gates))),
              ERR_SHAPE | 2 << 8)
        compact = [is_compact(b, ext, load_strides(b, ext, strides))
                   for _, ext, strides in self.raw]
        check(b, all_of(b, compact), ERR_LAYOUT)
        def in_range(bi):
            n = self.length(bi)
            check(b, b.and_(icmp(b, ">=", n, 0), icmp(b, "<=", n, self.seq)), ERR_VALUE | 6 << 8)
        for_range(b, 0, self.batch, in_range, vectorize=False, unroll=False)
        return_zero_if(b, b.or_(icmp(b, "==", self.batch, 0), icmp(b, "==", self.hidden, 0)))
        steps = icmp(b, ">", self.seq, 0)
        for k, (data, _, _) in enumerate(self.raw):
            ok = b.icmp_unsigned("!=", data, ir.Constant(PTR, None))
            check(b, b.or_(ok, b.not_(steps)) if k in (0, 7) else ok, ERR_NULL | k << 8)

    # -- helpers ------------------------------------------------------------------------------

    def length(self, bi):
        """lens[bi] as an i64."""
        n = load(self.b, self.lens, bi, self.lens_ty)
        return n if self.lens_ty == I64 else self.b.sext(n, I64)

    def ptr(self, base, offset):
        return elem_ptr(self.b, base, offset, self.elem)

    def bytes(self, count):
        return self.b.mul(count, c64(elem_bytes(self.elem)))

    def copy(self, dst, src, count):
        """dst[:count] = src[:count] in vectors, inline (rows are short: a memcpy call costs
        more than the copy)."""
        b = self.b

        def move(j, lanes):
            store(b, load(b, src, j, vector_type(self.elem, lanes)), dst, j)
        vector_fold(b, count, self.lanes, lambda lanes: [],
                    lambda j, lanes, accs: (move(j, lanes), [])[1], lambda a, c: [], unroll=2)

    def zero(self, dst, count):
        fn = get_function(self.b.module, "llvm.memset.p0.i64",
                          ir.FunctionType(ir.VoidType(), [PTR, I8, I64, I1]))
        self.b.call(fn, [dst, const(I8, 0), self.bytes(count), const(I1, 0)])

    def buffer(self, count):
        """A 64-byte aligned stack array of `count` (a run-time value) elements."""
        buf = self.b.alloca(self.elem, size=count)
        buf.align = 64
        buf.type = PTR      # opaque, like every other pointer in kernels/
        return buf

    def each(self, body):
        """body(j, lanes) for the hidden units j .. j + lanes - 1, vectors then scalars."""
        vector_fold(self.b, self.hidden, self.lanes, lambda lanes: [],
                    lambda j, lanes, accs: (body(j, lanes), [])[1], lambda a, c: [], unroll=1)

    def act(self, k, x, clipped=True):
        """Activation k of the cell on x, its input clipped first when `clip` is set (and
        `clipped`: a gate's pre-activation)."""
        b, clip = self.b, self.spec.get("clip")
        if clip is not None and clipped:
            hi, lo = const(x.type, float(clip)), const(x.type, -float(clip))
            x = b.select(b.fcmp_ordered(">", x, hi), hi, x)
            x = b.select(b.fcmp_ordered("<", x, lo), lo, x)
        return self.acts[k](b, x)

    def gemv(self, vec, col0, count, gates):
        """gates[col0 + j] = r_bias[col0 + j] + sum_k vec[k] r_t[k, col0 + j], j < count: the
        bias first, then blocks of ROWS rows of r_t, each block one pass over the columns
        (ROWS fmas per load and store of the gates; r_t is read row after row, in order)."""
        b, elem = self.b, self.elem
        self.copy(self.ptr(gates, col0), self.ptr(self.rb, col0), count)

        def block(k0, rows):
            vk = [load(b, vec, b.add(k0, c64(u)), elem) for u in range(rows)]
            starts = [b.add(b.mul(b.add(k0, c64(u)), self.width), col0) for u in range(rows)]

            def columns(j, lanes):
                ty = vector_type(elem, lanes)
                at = b.add(col0, j)
                acc = [load(b, gates, at, ty), const(ty, 0.0)]     # two chains of fmas
                for u, (v, start) in enumerate(zip(vk, starts)):
                    acc[u % 2] = lm.fma(b, splat(b, v, lanes),
                                        load(b, self.r_t, b.add(start, j), ty), acc[u % 2])
                store(b, b.fadd(acc[0], acc[1]), gates, at)
            vector_fold(b, count, self.lanes, lambda lanes: [],
                        lambda j, lanes, accs: (columns(j, lanes), [])[1], lambda a, c: [],
                        unroll=UNROLL)

        k, _ = for_range(b, 0, b.sub(self.hidden, c64(ROWS - 1)), lambda k: block(k, ROWS),
                         step=ROWS, vectorize=False, unroll=False)
        for_range(b, k, self.hidden, lambda k: block(k, 1), vectorize=False, unroll=False)

    # -- cells: one step, updating h (and c) in place -----------------------------------------

    def step(self, x, h, c, gates, scratch):
        b, hid = self.b, self.hidden
        cell = self.spec["cell"]
        before_reset = self.spec.get("linear_before_reset", False)
        gemv_cols = b.mul(hid, c64(2)) if cell == "gru" and not before_reset else self.width
        self.gemv(h, c64(0), gemv_cols, gates)

        def part(base, k, j, lanes):
            """Element j.. of gate block k of `base` (x_proj's row, w_bias or the gates)."""
            return load(b, base, b.add(b.mul(hid, c64(k)), j), vector_type(self.elem, lanes))

        def xb(k, j, lanes):
            return b.fadd(part(x, k, j, lanes), part(self.wb, k, j, lanes))

        def pre(k, j, lanes):
            return b.fadd(xb(k, j, lanes), part(gates, k, j, lanes))

        def rnn(j, lanes):
            store(b, self.act(0, pre(0, j, lanes)), h, j)

        def lstm(j, lanes):
            i, o, f, cand = (self.act(0 if k < 3 else 1, pre(k, j, lanes)) for k in range(4))
            c_new = b.fadd(b.fmul(f, load(b, c, j, i.type)), b.fmul(i, cand))
            store(b, c_new, c, j)
            store(b, b.fmul(o, self.act(2, c_new, clipped=False)), h, j)

        def gru_update(j, lanes, z, n):
            one = const(z.type, 1.0)
            store(b, b.fadd(b.fmul(b.fsub(one, z), n), b.fmul(z, load(b, h, j, z.type))), h, j)

        def gru_before_reset(j, lanes):
            z, r = self.act(0, pre(0, j, lanes)), self.act(0, pre(1, j, lanes))
            n = self.act(1, b.fadd(xb(2, j, lanes), b.fmul(r, part(gates, 2, j, lanes))))
            gru_update(j, lanes, z, n)

        def gru_reset_first(j, lanes):      # z kept in the gates' first block, r * h in scratch
            z, r = self.act(0, pre(0, j, lanes)), self.act(0, pre(1, j, lanes))
            store(b, z, gates, j)
            store(b, b.fmul(r, load(b, h, j, r.type)), scratch, j)

        def gru_reset_then(j, lanes):
            gru_update(j, lanes, part(gates, 0, j, lanes), self.act(1, pre(2, j, lanes)))

        if cell == "gru" and not before_reset:
            self.each(gru_reset_first)
            self.gemv(scratch, b.mul(hid, c64(2)), hid, gates)
            self.each(gru_reset_then)
        else:
            self.each({"rnn": rnn, "lstm": lstm, "gru": gru_before_reset}[cell])

    def run(self):
        b, hid = self.b, self.hidden
        gates, scratch = self.buffer(self.width), self.buffer(hid)

        def sequence(bi):
            row = b.mul(bi, hid)
            h, c = self.ptr(self.yh, row), self.ptr(self.yc, row)
            n = self.length(bi)
            self.copy(h, self.ptr(self.h0, row), hid)
            if self.spec["cell"] == "lstm":
                self.copy(c, self.ptr(self.c0, row), hid)
            else:
                self.zero(c, hid)

            def step(s):
                t = b.sub(b.sub(n, c64(1)), s) if self.spec.get("reverse") else s
                at = b.add(b.mul(t, self.batch), bi)
                self.step(self.ptr(self.x, b.mul(at, self.width)), h, c, gates, scratch)
                self.copy(self.ptr(self.y, b.mul(at, hid)), h, hid)
            for_range(b, 0, n, step, vectorize=False, unroll=False)
            if_then(b, icmp(b, "==", n, 0), lambda: (self.zero(h, hid), self.zero(c, hid)))
            for_range(b, n, self.seq, lambda t: self.zero(
                self.ptr(self.y, b.mul(b.add(b.mul(t, self.batch), bi), hid)), hid),
                vectorize=False, unroll=False)
        for_range(b, 0, self.batch, sequence, vectorize=False, unroll=False)


def emit_recurrent(module, symbol, spec, inputs, outputs):
    check_recurrent(spec, inputs, outputs)
    sig = [tuple(x) for x in inputs + outputs]
    fn, b = new_function(module, variant_symbol(symbol, "compact"))
    layer = Layer(b, prologue(b, *fn.args, sig), spec, sig)
    layer.validate()
    layer.run()
    b.ret(const(I32, 0))
    return emit_dispatcher(module, symbol, sig, [("compact", None)])


register(Family("recurrent", check_recurrent, emit_recurrent))
