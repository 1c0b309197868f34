"""Loading sections and calling kernels: typed errors, no crashes, no recompiles on load."""
import copy

import msgpack
import numpy as np
import pytest

from dynvm.kernels.builder import KernelBuilder
from dynvm.kernels import abi, codelib, load_kernels
from tests.kernels.support import cached_table
from dynvm.vm.errors import ExecutableFormatError, KernelError, ShapeError

ADD = ["add", ["in", 0], ["in", 1]]
CHAIN = ["multiply", ["tanh", ["add", ["multiply", ["in", 0], ["in", 1]], ["in", 2]]],
         ["sigmoid", ["in", 0]]]


@cached_table
def section():
    kb = KernelBuilder()
    kb.add_elementwise("add", ADD, [("float32", 2), ("float32", 1)], ("float32", 2))
    kb.add_elementwise("chain", CHAIN, [("float32", 2)] * 3, ("float32", 2))
    kb.add_elementwise("bool_less", ["less", ["in", 0], ["in", 1]],
                       [("int64", 1), ("int64", 1)], ("bool", 1))
    return kb.finish()


@cached_table
def kernels():
    return load_kernels(section())


def chain_inputs(shape=(5, 9)):
    rng = np.random.default_rng(1)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(3)]


def chain_reference(a, b, c):
    return np.tanh(a * b + c) * (1 / (1 + np.exp(-a)))


def check_chain(ks):
    a, b, c = chain_inputs()
    out = np.empty_like(a)
    ks[1]([a, b, c], [out])
    np.testing.assert_allclose(out, chain_reference(a, b, c), rtol=1e-5, atol=1e-6)


# -- argument checks -----------------------------------------------------------------------


def test_wrong_argument_count_raises_kernel_error():
    with pytest.raises(KernelError, match="expected 2 inputs and 1 outputs, got 1 and 1"):
        kernels()[0]([np.ones((2, 2), np.float32)], [np.empty((2, 2), np.float32)])


def test_wrong_dtype_raises_kernel_error_naming_the_argument():
    with pytest.raises(KernelError, match="kernel add: input 1 has dtype float64"):
        kernels()[0]([np.ones((2, 2), np.float32), np.ones(2)], [np.empty((2, 2), np.float32)])


def test_byte_swapped_dtype_is_rejected():
    swapped = np.ones(2, np.dtype(">f4"))
    with pytest.raises(KernelError, match="input 1 has dtype >f4"):
        kernels()[0]([np.ones((2, 2), np.float32), swapped], [np.empty((2, 2), np.float32)])


def test_wrong_rank_raises_kernel_error():
    with pytest.raises(KernelError, match="output 0 has rank 1, expected 2"):
        kernels()[0]([np.ones((2, 2), np.float32), np.ones(2, np.float32)],
                     [np.empty(4, np.float32)])


def test_non_array_argument_raises_kernel_error():
    with pytest.raises(KernelError, match="input 0 is a list, not a numpy array"):
        kernels()[0]([[1.0, 2.0], np.ones(2, np.float32)], [np.empty((1, 2), np.float32)])


def test_read_only_output_raises_kernel_error():
    out = np.empty((2, 2), np.float32)
    out.flags.writeable = False
    with pytest.raises(KernelError, match="output 0 is read-only"):
        kernels()[0]([np.ones((2, 2), np.float32), np.ones(2, np.float32)], [out])


def test_misaligned_array_raises_kernel_error():
    raw = np.zeros(4 * 4 + 1, np.uint8)[1:].view(np.float32).reshape(2, 2)
    with pytest.raises(KernelError, match="input 0 is not aligned"):
        kernels()[0]([raw, np.ones(2, np.float32)], [np.empty((2, 2), np.float32)])


def test_broadcast_mismatch_raises_shape_error():
    with pytest.raises(ShapeError, match=r"input 1 of shape \(3,\) does not broadcast to the "
                                         r"output shape \(2, 4\)"):
        kernels()[0]([np.ones((2, 4), np.float32), np.ones(3, np.float32)],
                     [np.empty((2, 4), np.float32)])


def test_output_smaller_than_input_raises_shape_error():
    with pytest.raises(ShapeError, match="input 0 of shape"):
        kernels()[0]([np.ones((2, 4), np.float32), np.ones(4, np.float32)],
                     [np.empty((1, 4), np.float32)])


def test_bool_comparison_writes_zero_one_bytes():
    out = np.empty(4, np.bool_)
    kernels()[2]([np.array([1, 5, -3, 2]), np.array([2, 5, -4, 3])], [out])
    np.testing.assert_array_equal(out.view(np.uint8), [1, 0, 0, 1])


# -- native code never crashes on bad descriptors -------------------------------------------


def native_call(kernel, arrays, codes, nargs=None, variant="strided", edit=None):
    tensors, keep = abi.pack(arrays, codes)
    if edit:
        edit(tensors)
    fn = kernel.variant_function(variant) if variant else kernel._entry
    return fn(tensors, len(arrays) if nargs is None else nargs)


def add_args():
    return [np.ones((2, 3), np.float32), np.ones(3, np.float32), np.empty((2, 3), np.float32)]


@pytest.mark.parametrize("variant", ["strided", "scalar", "vector", "vector_exact", None])
def test_native_kernel_returns_error_codes_instead_of_crashing(variant):
    k = kernels()[0]
    f32 = abi.dtype_code("float32")
    assert native_call(k, add_args(), [f32] * 3, variant="strided") == 0
    assert native_call(k, add_args(), [f32] * 3, nargs=2, variant=variant) != 0
    assert native_call(k, add_args(), [f32] * 3, nargs=-1, variant=variant) != 0
    assert native_call(k, add_args(), [abi.dtype_code("int32")] + [f32] * 2, variant=variant) != 0
    for edit in (lambda t: setattr(t[1], "ndim", 5),
                 lambda t: setattr(t[0], "data", abi.ffi.NULL),
                 lambda t: setattr(t[2], "shape", abi.ffi.NULL),
                 lambda t: setattr(t[0].dtype, "lanes", 4),
                 lambda t: t[0].shape.__setitem__(0, -7)):
        assert native_call(k, add_args(), [f32] * 3, variant=variant, edit=edit) != 0
    assert (k.variant_function(variant) if variant else k._entry)(abi.ffi.NULL, 3) != 0


@pytest.mark.parametrize("variant", ["scalar", "vector", "vector_exact"])
def test_flat_variants_reject_strided_layout(variant):
    k = kernels()[1]
    a = np.ones((4, 32), np.float32)[:, ::2]
    args = [a, np.ones((4, 16), np.float32), np.ones((4, 16), np.float32), np.empty((4, 16), np.float32)]
    assert native_call(k, args, [abi.dtype_code("float32")] * 4, variant=variant) != 0


def test_null_strides_mean_compact_row_major():
    k = kernels()[1]
    a, b, c = chain_inputs((3, 5))
    out = np.empty_like(a)

    def drop_strides(t):
        for i in range(4):
            t[i].strides = abi.ffi.NULL
    assert native_call(k, [a, b, c, out], [abi.dtype_code("float32")] * 4, edit=drop_strides) == 0
    np.testing.assert_allclose(out, chain_reference(a, b, c), rtol=1e-5, atol=1e-6)


# -- sections: round trip, re-JIT, validation -------------------------------------------------


def roundtrip(sec):
    return msgpack.unpackb(msgpack.packb(sec, use_bin_type=True), raw=False)


def test_section_survives_msgpack_and_loads_without_compiling():
    sec = roundtrip(section())
    before = dict(codelib.stats)
    ks = load_kernels(sec)
    assert codelib.stats["compiles"] == before["compiles"]
    assert codelib.stats["cache_hits"] == before["cache_hits"]
    assert codelib.stats["rejits"] == before["rejits"]
    check_chain(ks)
    assert [k.name for k in ks] == ["add", "chain", "bool_less"]


def test_other_cpu_target_runs_the_code_generated_here_for_the_same_specs():
    sec = roundtrip(section())
    sec["target"]["cpu"] = "some-other-cpu"
    sec["object"] = [b"never loaded"]
    before = dict(codelib.stats)
    check_chain(load_kernels(sec))
    assert codelib.stats["rejits"] == before["rejits"]
    assert codelib.stats["compiles"] == before["compiles"]


def test_trusted_other_cpu_target_rejits_from_llvm_ir(monkeypatch, tmp_path):
    sec = roundtrip(section())      # built first: its own compile must not fill the empty cache
    monkeypatch.setenv("DYNVM_CACHE_DIR", str(tmp_path))
    sec["target"]["cpu"] = "some-other-cpu"
    sec["object"] = [b"not used when re-jitting"]
    before = dict(codelib.stats)
    ks = load_kernels(sec, trust_native_code=True)
    assert codelib.stats["rejits"] == before["rejits"] + 1
    assert codelib.stats["compiles"] == before["compiles"] + 1
    check_chain(ks)


def test_builder_finish_compiles_once_and_dedups_identical_specs(monkeypatch):
    monkeypatch.setenv("DYNVM_CACHE_DIR", "")
    kb = KernelBuilder()
    i = kb.add_elementwise("a", ADD, [("float64", 1), ("float64", 1)], ("float64", 1))
    j = kb.add_elementwise("b", ADD, [("float64", 1), ("float64", 1)], ("float64", 1))
    k = kb.add_elementwise("c", ADD, [("float64", 1), ("float64", 0)], ("float64", 1))
    assert (i, j, k) == (0, 0, 1)
    before = codelib.stats["compiles"]
    sec = kb.finish()
    assert kb.finish() is sec
    assert codelib.stats["compiles"] == before + 1
    out = np.empty(3)
    load_kernels(sec)[1]([np.arange(3.0), np.array(2.0)], [out])
    np.testing.assert_array_equal(out, [2.0, 3.0, 4.0])


def test_builder_rejects_bad_expressions():
    kb = KernelBuilder()
    with pytest.raises(KernelError, match="unknown elementwise op 'frobnicate'"):
        kb.add_elementwise("x", ["frobnicate", ["in", 0]], [("float32", 1)], ("float32", 1))
    with pytest.raises(KernelError, match="exp needs a float operand"):
        kb.add_elementwise("x", ["exp", ["in", 0]], [("int32", 1)], ("int32", 1))
    with pytest.raises(KernelError, match="different dtypes"):
        kb.add_elementwise("x", ADD, [("int32", 1), ("int64", 1)], ("int64", 1))
    with pytest.raises(KernelError, match="expression gives bool, output is float32"):
        kb.add_elementwise("x", ["less", ["in", 0], ["in", 0]], [("float32", 1)], ("float32", 1))
    with pytest.raises(KernelError, match="names a missing input"):
        kb.add_elementwise("x", ["in", 1], [("float32", 1)], ("float32", 1))
    with pytest.raises(KernelError, match="higher rank than the output"):
        kb.add_elementwise("x", ["in", 0], [("float32", 2)], ("float32", 1))


def broken(path, value):
    def edit(sec):
        target = sec
        for key in path[:-1]:
            target = target[key]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return edit


@pytest.mark.parametrize("edit, phrase", [
    (broken(["kernels"], "nope"), "kernels has type str"),
    (broken(["object"], KeyError), "missing 'object'"),
    (broken(["target", "cpu"], 3), "target cpu has type int"),
    (broken(["kernels", 0, "kind"], "magic"), "unknown kind 'magic'"),
    (broken(["kernels", 0, "inputs"], [["float16", 1]]), "is not \\[dtype, rank\\]"),
    (broken(["kernels", 0, "inputs"], [["float32", -1]]), "is not \\[dtype, rank\\]"),
    (broken(["kernels", 0, "variants"], []), "has no variants"),
    (broken(["kernels", 0, "variants", 0, "symbol"], "no_such_symbol"), "symbol 'no_such_symbol' not found"),
    (broken(["kernels", 1, "attrs"], None), "field 'attrs' has type NoneType"),
    (broken(["object"], [b"garbage bytes"]), "not a native object file"),
    (broken(["object"], b"one object"), "object has type bytes"),
    (broken(["object"], []), "1 llvm_ir units but 0 objects"),
    (broken(["llvm_ir", 0], "one text"), "llvm_ir unit must be a non-empty list of strings"),
])
def test_malformed_section_raises_executable_format_error(edit, phrase):
    """Trusted, so that the file's own symbols and object code are what gets loaded."""
    sec = copy.deepcopy(roundtrip(section()))
    edit(sec)
    with pytest.raises(ExecutableFormatError, match=phrase):
        load_kernels(sec, trust_native_code=True)


def test_non_dict_section_raises_executable_format_error():
    with pytest.raises(ExecutableFormatError, match="section has type list"):
        load_kernels([])


def test_a_section_entry_of_another_kind_is_a_format_error():
    kb = KernelBuilder()
    kb.add_elementwise("add", ADD, [("int32", 1), ("int32", 1)], ("int32", 1))
    sec = roundtrip(kb.finish())
    sec["kernels"][0]["kind"] = "extern"
    with pytest.raises(ExecutableFormatError, match="unknown kind 'extern'"):
        load_kernels(sec)


def test_checked_call_rejects_a_wrong_dtype_before_running():
    kb = KernelBuilder()
    kb.add_elementwise("add", ADD, [("float64", 1), ("float64", 1)], ("float64", 1))
    (k,) = load_kernels(roundtrip(kb.finish()))
    with pytest.raises(KernelError, match="input 0 has dtype int64"):
        k([np.arange(4), np.arange(4.0)], [np.empty(4)])
