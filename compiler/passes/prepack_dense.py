"""prepack_dense: the constant weights of dense packed once, at build time.

The matmul kernels compute a product in NR-wide strips of B; for dense, B is the transposed
weight, and packing it (rows of W interleaved into strips) cost every call a fixed time per
weight (13 us for 256 x 256 float32 on one AVX2 core, a tenth of the product at 16 rows), and
on several threads each column item packed all of x again. This pass rewrites every
`dense(x, W)` whose W is a rank-2 float32/float64 Constant into
`dense(x, Wp, packed_units=N, packed_width=NR)`, Wp a new Constant in the kernels' packed
layout (kernels/matmul.py `pack_weight`: (ceil(N/NR), K, NR), Wp[s, k, c] = W[s*NR + c, k],
zeros past N), so the kernel reads B's strips straight from it and may split its work by rows. The original constant
is left alone (another op may use it); a weight used by several dense calls is packed once.

NR is the build machine's (16 float32 with AVX2) and is recorded as `packed_width`: an
executable loaded on a machine with another vector width (AVX-512) gets kernels regenerated
for that width, which read the weight as it was packed. Requires typed input; the output is
typed.
"""
from __future__ import annotations

from dynvm.compiler.ir import expr as E
from dynvm.compiler.ir.types import TensorType
from dynvm.compiler.passes.mutator import ExprMutator, map_functions

PACKED_DTYPES = ("float32", "float64")


class _Prepack(ExprMutator):
    def __init__(self, packed: dict):
        super().__init__()
        self.packed = packed        # id(weight constant) -> (weight, packed constant)

    def rewrite_call(self, call):
        weight = call.args[1] if len(call.args) == 2 else None
        if not (isinstance(call.callee, E.Op) and call.callee.name == "dense"
                and not call.attrs.get("packed_units") and isinstance(weight, E.Constant)
                and weight.data.ndim == 2 and weight.data.dtype.name in PACKED_DTYPES
                and weight.data.shape[0] > 0):
            return call
        packed = self.pack(weight)
        new = E.Call(call.callee, [call.args[0], packed],
                     {**call.attrs, "packed_units": weight.data.shape[0],
                      "packed_width": packed.data.shape[2]})
        new.checked_type = call.checked_type
        return new

    def pack(self, weight):
        from dynvm.kernels.matmul import pack_weight    # lazily: it imports llvmlite
        if id(weight) not in self.packed:
            const = E.Constant(pack_weight(weight.data))
            const.checked_type = TensorType(const.data.shape, const.data.dtype.name)
            self.packed[id(weight)] = (weight, const)
        return self.packed[id(weight)][1]


def prepack_dense(mod):
    """Dense calls with a constant float weight read it packed (see the module docstring)."""
    packed: dict = {}
    return map_functions(mod, lambda func: _Prepack(packed).visit(func))
