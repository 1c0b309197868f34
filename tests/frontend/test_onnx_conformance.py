"""ONNX's own node tests for the ops dynvm converts (the short mode: the first cases of each
op; benchmarks/onnx_conformance.py runs all 1884 and ONNX Runtime beside them). A case dynvm
does not support (an unsupported dtype or attribute: UnsupportedOnnxError) is skipped with the
reason; every other case must match the test's expected outputs."""
import collections
import warnings

import pytest

pytest.importorskip("onnx")

from dynvm.frontend.onnx.backend import (FAILED, SKIPPED, DynvmBackend, case_op,  # noqa: E402
                                         load_cases, run_case)
from dynvm.frontend.onnx.converters import CONVERTERS  # noqa: E402

PER_OP = 2
# ops without a converter that ONNX defines as functions (their bodies are converted): one
# case each
FUNCTION_OPS = ("Attention", "SoftmaxCrossEntropyLoss", "RotaryEmbedding", "GroupNormalization",
                "MeanVarianceNormalization")
# cases beyond an op's first two that cover a lowering path of their own
EXTRA = {"test_resize_downsample_scales_cubic_antialias", "test_resize_tf_crop_and_resize_axes_3_2",
         "test_resize_upsample_scales_cubic_A_n0p5_exclude_outside",
         "test_resize_upsample_scales_linear_half_pixel_symmetric",
         "test_reshape_allowzero_reordered", "test_training_dropout_zero_ratio_mask",
         "test_gathernd_example_int32_batch_dim1"}


def short_cases():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the case generators' numpy overflow warnings
        cases = load_cases(sorted(CONVERTERS) + list(FUNCTION_OPS))
    taken = collections.Counter()
    out = []
    for case in cases:
        op = case_op(case)
        if (op in CONVERTERS and (taken[op] < PER_OP or case.name in EXTRA)) or \
                (op in FUNCTION_OPS and not taken[op] and not case.name.endswith("_expanded")):
            taken[op] += 1
            out.append(case)
    return out


CASES = short_cases()


def test_the_short_mode_covers_most_converted_ops():
    assert len({case_op(c) for c in CASES}) >= 70


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_node_case(case):
    status, reason = run_case(DynvmBackend, case)
    if status == SKIPPED:
        pytest.skip(reason)
    assert status != FAILED, reason
