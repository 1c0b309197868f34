"""ShapeTensor: the shape registers ShapeOf and CallShapeFunc produce carry their dims as a
tuple and make int64 memory only when a kernel or Python needs it. These tests pin that the
lazy form behaves exactly like the plain int64 tensor it replaces."""
import math

import cffi
import numpy as np
import pytest

from dynvm.shape_funcs.common import shape_vector
from dynvm.shape_funcs.dynamic import arange_params
from tests.vm.vm_helpers import exe, fn, tensor
from dynvm.vm import ShapeError, VirtualMachine
from dynvm.vm.values import ShapeTensor, Tensor, checked_dims, scalar_value

_ffi = cffi.FFI()


def run(executable, *args, name="main"):
    return VirtualMachine(executable).invoke(name, *args)


@pytest.mark.parametrize("dims", [(), (0,), (3, 4), (1, 2, 3, 4, 5), ((1 << 63) - 1,)])
def test_shape_tensor_memory_matches_its_dims(dims):
    t = ShapeTensor.make(dims)
    assert isinstance(t, Tensor) and t.meta == ("int64", (len(dims),)) and t.dims == dims
    assert t.dtype == "int64" and t.shape == (len(dims),) and t.size == len(dims)
    a = t.array
    assert a.dtype == np.int64 and a.shape == (len(dims),) and tuple(a.tolist()) == dims
    assert not a.flags.writeable                    # the memory can never disagree with dims
    assert t.base is a and t.offset == 0
    np.testing.assert_array_equal(np.asarray(t), np.array(dims, np.int64).reshape(-1))
    if dims:                                        # what a kernel reads at the address
        p = _ffi.cast("int64_t *", t.address)
        assert [p[i] for i in range(len(dims))] == list(dims)
        assert a.__array_interface__["data"][0] == t.address


def test_shape_tensor_memory_lives_as_long_as_a_view_of_it():
    t = ShapeTensor.make((7, 8, 9))
    address, view = t.address, t.array
    del t
    assert view.__array_interface__["data"][0] == address and view.tolist() == [7, 8, 9]


def test_reshaped_shape_tensor_is_a_read_only_view():
    t = ShapeTensor.make((2, 3, 4, 5))
    r = t.reshaped((2, 2))
    assert type(r) is Tensor and r.address == t.address and r.shape == (2, 2)
    assert r.array.tolist() == [[2, 3], [4, 5]] and not r.array.flags.writeable


def test_shape_meta_is_one_object_per_rank():
    assert ShapeTensor.make((1, 2)).meta is ShapeTensor.make((5, 6)).meta


def test_checked_dims_accepts_only_tuples_of_int64_range_non_negative_ints():
    assert checked_dims((1, 0, 5)) == (1, 0, 5) and checked_dims(()) == ()
    for bad in [[1, 2], (1, -1), (np.int64(3),), (True,), (1.0,), (1 << 63,)]:
        assert checked_dims(bad) is None


@pytest.mark.parametrize("value, dtype", [(3, "int64"), (-7, "int32"), (2.5, "float32"),
                                          (0.1, "float32"), (1e300, "float64")])
def test_scalar_value_reads_one_element_tensors_like_numpy(value, dtype):
    for shape in [(), (1,), (1, 1)]:
        a = np.full(shape, value, dtype)
        assert scalar_value(Tensor.from_array(a)) == a.reshape(-1)[0].item()
        assert type(scalar_value(Tensor.from_array(a))) is type(a.reshape(-1)[0].item())
    assert scalar_value(Tensor.from_array(np.zeros(2, dtype))) is None
    assert scalar_value(Tensor.from_array(np.array(True))) is None
    assert scalar_value(np.array(3)) is None
    assert scalar_value(ShapeTensor.make((9,))) == 9


@pytest.mark.parametrize("dtype, values", [("int64", (0, 17, 3)), ("float32", (0.1, 2.7, 0.3)),
                                           ("float64", (-1.5, 4.25, 0.5)), ("int32", (5, -5, -2))])
def test_arange_params_from_tensors_equal_the_numpy_path(dtype, values):
    arrays = [np.array(v, dtype) for v in values]
    assert arange_params([Tensor.from_array(a) for a in arrays], dtype) == arange_params(arrays, dtype)
    # another output dtype takes numpy's cast
    assert arange_params([Tensor.from_array(a) for a in arrays], "float32") == \
        arange_params(arrays, "float32")


def test_arange_params_from_tensors_reject_non_finite_and_zero_step():
    t = [Tensor.from_array(np.array(v, np.float32)) for v in (0.0, math.inf, 1.0)]
    with pytest.raises(ShapeError, match="stop must be finite"):
        arange_params(t, "float32")
    t = [Tensor.from_array(np.array(v, np.int64)) for v in (0, 5, 0)]
    with pytest.raises(ShapeError, match="step must not be zero"):
        arange_params(t, "int64")


def test_shape_vector_reads_shape_tensors_and_arrays_alike():
    assert shape_vector("op", ShapeTensor.make((4, 0, 2))) == (4, 0, 2)
    assert shape_vector("op", np.array([4, 0, 2])) == (4, 0, 2)


# ---------------------------------------------------------------- through the VM

def test_shape_of_result_returned_to_python_is_a_writable_copy_it_owns():
    main = fn("main", ["x"], [("ShapeOf", 0, 1), ("Ret", 1)], param_types=[tensor(None, None)])
    machine = VirtualMachine(exe(main))
    s = machine.invoke("main", np.zeros((3, 4), np.float32))
    assert s.dtype == np.int64 and s.tolist() == [3, 4] and s.flags.writeable
    s[:] = 99
    assert machine.invoke("main", np.zeros((3, 4), np.float32)).tolist() == [3, 4]


def test_reshape_tensor_by_a_shape_register():
    main = fn("main", ["x", "y"], [("ShapeOf", 1, 2), ("ReshapeTensor", 0, 2, 3), ("Ret", 3)],
              param_types=[tensor(None), tensor(None, None)])
    x = np.arange(12, dtype=np.float32)
    out = run(exe(main), x, np.zeros((3, 4), np.float32))
    assert out.shape == (3, 4) and not np.shares_memory(out, x)   # a view of x: returned as a copy
    with pytest.raises(ShapeError, match="cannot reshape"):
        run(exe(main), x, np.zeros((5, 4), np.float32))


def test_reshape_of_a_shape_register_is_returned_as_an_owned_copy():
    main = fn("main", ["x"], [("ShapeOf", 0, 1), ("LoadConst", 0, 2), ("ReshapeTensor", 1, 2, 3),
                              ("AllocADT", 0, [1, 3], 4), ("Ret", 4)],
              param_types=[tensor(None, None, None, None)])
    shape, reshaped = run(exe(main, constants=[np.array([2, 2], np.int64)]), np.zeros((1, 2, 3, 4), np.float32))
    assert shape.tolist() == [1, 2, 3, 4] and reshaped.tolist() == [[1, 2], [3, 4]]
    assert reshaped.flags.writeable and not np.shares_memory(shape, reshaped)


def test_shape_register_in_a_tuple_and_as_alloc_operand():
    main = fn("main", ["x"], [
        ("ShapeOf", 0, 1),
        ("AllocStorageReg", 1, 64, "int32", 2),
        ("AllocTensorReg", 2, 0, 1, "int32", 3),
        ("AllocADT", 0, [1, 3], 4), ("Ret", 4)], param_types=[tensor(None, None)])
    machine = VirtualMachine(exe(main))
    for shape in [(2, 5), (0, 3), (2, 5), (4, 1)]:
        s, t = machine.invoke("main", np.zeros(shape, np.float32))
        assert s.tolist() == list(shape) and t.shape == shape and t.dtype == np.int32


def test_shape_registers_passed_to_kernels_match_numpy():
    from dynvm.models import arange_model as m
    from dynvm.compiler import build
    table = m.position_table()
    machine = VirtualMachine(build(m.build_module(table)))
    for rows in [1, 16, 3, 16, 40]:                 # ShapeOf -> take kernel; shape funcs -> allocs
        x = m.make_input(rows)
        np.testing.assert_allclose(machine.invoke("main", x), m.reference(x, table), rtol=1e-6)
