"""recurrent (kernels/recurrent.py): every cell form against the numpy reference on
hypothesis-drawn sizes (hidden 1 and vector tails 7/9/17, batch 0/1/3, seq 0/1/5, lengths
anywhere in and beyond [0, seq]); mismatched extents are ERR_SHAPE (ShapeError from the shape
function), a strided array ERR_LAYOUT."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dynvm import shape_funcs
from dynvm.kernels.abi import ERR_LAYOUT, ERR_SHAPE, ERR_VALUE
from dynvm.vm.errors import ShapeError
from tests.kernels.test_transform import cached, kind, native_table, reference
from tests.strategies import examples

GATES = {"rnn": 1, "gru": 3, "lstm": 4}
# name -> (dtype, lens dtype, spec): every cell, both GRU reset forms, both directions, clip
FORMS = {
    "lstm": ("float32", "int32", {"cell": "lstm", "activations": ["Sigmoid", "Tanh", "Tanh"]}),
    "gru_reset_first": ("float64", "int64", {"cell": "gru", "activations": ["Sigmoid", "Tanh"],
                                             "reverse": True, "clip": 1.5}),
    "gru_before_reset": ("float32", "int64", {"cell": "gru", "activations": ["Tanh", "Relu"],
                                              "linear_before_reset": True}),
    "rnn": ("float32", "int32", {"cell": "rnn", "activations": ["Relu"], "reverse": True,
                                 "clip": 0.5}),
}


def spec_of(name):
    dtype, lens_dtype, attrs = FORMS[name]
    return {"op": "recurrent", "reverse": False, "linear_before_reset": False, "clip": None,
            **attrs}


@cached
def kernels():
    table = {}
    for name, (dt, lt, _) in FORMS.items():
        table[name] = ("recurrent", spec_of(name),
                       [[dt, 3], [dt, 1], [dt, 2], [dt, 1], [dt, 2], [dt, 2], [lt, 1]],
                       [[dt, 3], [dt, 2], [dt, 2]])
    return native_table(table)


def layer_inputs(rng, name, seq, batch, hidden, lens):
    dtype, lens_dtype, attrs = FORMS[name]
    width = GATES[attrs["cell"]] * hidden
    scale = 1 / np.sqrt(max(hidden, 1))
    return [rng.standard_normal((seq, batch, width)).astype(dtype),
            (rng.standard_normal(width) * 0.3).astype(dtype),
            (rng.standard_normal((hidden, width)) * scale).astype(dtype),
            (rng.standard_normal(width) * 0.3).astype(dtype),
            rng.standard_normal((batch, hidden)).astype(dtype),
            rng.standard_normal((batch, hidden)).astype(dtype),
            np.array(lens, lens_dtype)]


@pytest.mark.parametrize("name", sorted(FORMS))
@settings(max_examples=examples(12), deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_kernel_matches_numpy(name, data, seed):
    seq = data.draw(st.sampled_from([0, 1, 5]))
    batch = data.draw(st.sampled_from([0, 1, 3]))
    hidden = data.draw(st.sampled_from([1, 7, 9, 16, 17]))
    lens = data.draw(st.lists(st.integers(0, seq), min_size=batch, max_size=batch))
    ins = layer_inputs(np.random.default_rng(seed), name, seq, batch, hidden, lens)
    want = reference("recurrent", spec_of(name), ins)
    outs = [np.full(w.shape, 7, w.dtype) for w in want]
    assert kernels()[name](ins + outs) == 0
    tol = 1e-5 if ins[0].dtype == np.float32 else 1e-12
    for got, expected in zip(outs, want):
        np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)


def test_mismatched_extents_and_strided_arrays_are_refused():
    k = kernels()["lstm"]
    rng = np.random.default_rng(0)
    ins = layer_inputs(rng, "lstm", 4, 2, 3, [4, 2])
    outs = [np.zeros((4, 2, 3), np.float32), np.zeros((2, 3), np.float32),
            np.zeros((2, 3), np.float32)]
    assert k(ins + outs) == 0
    bad = ins[:4] + [np.zeros((2, 4), np.float32)] + ins[5:]     # h0 of another hidden size
    assert kind(k(bad + outs)) == ERR_SHAPE
    with pytest.raises(ShapeError, match="a lstm layer needs"):
        shape_funcs.lookup("recurrent").fn(bad, spec_of("lstm"))
    strided = [np.zeros((4, 2, 24), np.float32)[:, :, ::2]] + ins[1:]
    assert kind(k(strided + outs)) == ERR_LAYOUT
    for lens in ([5, 2], [4, -1]):          # outside [0, seq]: refused before anything is written
        rc = k(with_lens(ins, lens) + outs)
        assert kind(rc) == ERR_VALUE and rc >> 8 & 0xFF == 6


def with_lens(ins, lens):
    return ins[:6] + [np.array(lens, ins[6].dtype)]
