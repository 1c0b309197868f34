"""Findings of the long fuzz runs, each as the smallest mutant that showed it: it must now fail
typed (or run) at once."""
import pytest

from dynvm import build, ir, op
from dynvm.vm import Executable
from dynvm.vm.errors import ExecutableFormatError


def chain():
    x = ir.var("x", ir.TensorType((ir.Any(),), "float32"))
    return build(ir.IRModule.from_expr(ir.Function([x], op.tanh(op.multiply(op.add(x, x), x)))))


@pytest.mark.parametrize("rank", [33, 2**31 - 1])
def test_a_huge_rank_in_a_kernel_signature_is_a_format_error_before_the_kind_checks(rank):
    # the register-kind verifier built a tensor kind of that many dims (a hang at 2**31 - 1)
    exe = Executable.from_bytes(chain().to_bytes())
    exe.kernels["kernels"][0]["outputs"][0][1] = rank
    with pytest.raises(ExecutableFormatError, match="rank of at most 32"):
        Executable.from_bytes(exe.to_bytes())
