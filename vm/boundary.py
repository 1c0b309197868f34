"""The VM's boundaries: invoke arguments in, results out, and tensors into kernel descriptors.

Shared by `VirtualMachine` and `StaticRuntime`:

- `import_arg` checks an invoke argument against its parameter's type descriptor and turns it
  into a run-time value (a `Tensor` viewing the caller's array when it is compact, aligned and
  native-order; a copy otherwise); `tensor_spec` / `fast_tensor` are the common case of a
  tensor parameter, checked in one go.
- `export` turns a result back into what `invoke` returns (the caller owns every array).
- `bind` is THE kernel-argument binding routine: it points a prepared `abi.CallSite` at the
  argument tensors, writing only data addresses on the fast path and re-describing an argument
  (dtype and rank checked against the kernel's signature, extents written) when its
  (dtype, shape) object is not the one the site saw last.
"""
import numpy as np

from dynvm.vm.dtypes import dtype_name, np_dtype
from dynvm.vm.errors import DynVMError, InvokeArgumentError, KernelError, VMError
from dynvm.vm.values import ADT, Closure, Storage, Tensor, rebuild


def bind(site, kernel, values, indices, where=None, label="r"):
    """Write the tensors `values[i]` for i in `indices` (argument 0, 1, ... of the kernel) into
    `site`'s descriptors. `where` prefixes errors (default: the kernel's name); a value that is
    not a tensor is reported as `{label}{i}` (a register, or an argument number)."""
    items, layouts = site.items, site.layouts
    k = 0
    for i in indices:
        t = values[i]
        try:
            if t.meta is not layouts[k]:
                _describe_arg(site, kernel, k, t, where)
        except AttributeError:
            raise VMError(f"{where or 'CallKernel ' + kernel.name}: {label}{i} holds {kind_of(t)}, "
                          "expected a tensor") from None
        items[k].data = t.address
        k += 1


def _describe_arg(site, kernel, k, t, where):
    """Slow path of a kernel call: argument k's (dtype, shape) object is new at this call site.
    Check dtype and rank against the kernel's signature and write its extents."""
    if t.meta == site.layouts[k]:
        site.layouts[k] = t.meta  # equal dtype and shape: the descriptor is already right
        return
    dtype, shape = t.meta
    n_in = len(kernel.inputs)
    what = f"input {k}" if k < n_in else f"output {k - n_in}"
    if dtype != site.dtypes[k]:
        raise KernelError(f"{where or 'kernel ' + kernel.name}: {what} has dtype {dtype}, expected {site.dtypes[k]}")
    if len(shape) != site.ranks[k]:
        raise KernelError(f"{where or 'kernel ' + kernel.name}: {what} has rank {len(shape)}, expected {site.ranks[k]}")
    site.set_shape(k, shape)
    site.layouts[k] = t.meta


def kind_of(value) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {value.shape}"
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    return f"a {type(value).__name__}"


def tensor_spec(desc):
    """What `fast_tensor` (and `invoke`'s inlined copy of it) checks for a tensor parameter (None for other kinds)."""
    if desc.get("kind") != "tensor":
        return None
    shape = desc["shape"]
    static = tuple(shape) if None not in shape else None
    fixed = [(i, d) for i, d in enumerate(shape) if d is not None]
    return np_dtype(desc["dtype"]), desc["dtype"], len(shape), static, fixed


def fast_tensor(a, spec):
    """The common case of an argument: a compact aligned array of the declared dtype and shape
    becomes a Tensor with no copy; None means "take the general path" (which also reports)."""
    dt, name, rank, static, fixed = spec
    if a.dtype is not dt and a.dtype != dt:
        return None
    shape = a.shape
    if static is not None:
        if shape != static:
            return None
    else:
        if len(shape) != rank:
            return None
        for i, d in fixed:
            if shape[i] != d:
                return None
    flags = a.flags
    if not (flags.c_contiguous and flags.aligned):
        return None
    return Tensor.of(a, name)


def import_tensor(value, desc, where):
    want_dtype, want_shape = desc["dtype"], desc["shape"]
    if type(value) is np.ndarray and _DTYPE_NAMES.get(value.dtype) == want_dtype \
            and value.flags.c_contiguous and value.flags.aligned and value.ndim == len(want_shape) \
            and all(w is None or w == h for w, h in zip(want_shape, value.shape)):
        return Tensor.from_array(value)  # the common case, checked in one go
    expected = f"{want_dtype}[{', '.join('?' if d is None else str(d) for d in want_shape)}]"
    got = None
    if isinstance(value, PYTHON_VALUES):
        value, got = _from_python(value, want_dtype, expected, where)
    elif not isinstance(value, np.ndarray):
        try:
            value = np.from_dlpack(value) if hasattr(value, "__dlpack__") else np.asarray(value)
        except Exception as e:  # noqa: BLE001 - anything numpy cannot convert
            raise InvokeArgumentError(f"{where}: cannot convert {kind_of(value)} to a tensor ({e})") from None
    got = got or f"{value.dtype}{list(value.shape)}"
    if value.dtype.newbyteorder("=") != np_dtype(want_dtype):   # other byte orders: _as_tensor converts
        raise InvokeArgumentError(f"{where}: expected dtype {want_dtype} ({expected}), got {got}")
    if value.ndim != len(want_shape):
        raise InvokeArgumentError(f"{where}: expected rank {len(want_shape)} ({expected}), got {got}")
    for axis, (want, have) in enumerate(zip(want_shape, value.shape)):
        if want is not None and want != have:
            raise InvokeArgumentError(f"{where}: expected dim {axis} = {want} ({expected}), got {got}")
    return _as_tensor(value, where)


_DTYPE_NAMES = {np_dtype(name): name for name in ("float32", "float64", "int32", "int64", "bool")}

PYTHON_VALUES = (bool, int, float, list, tuple)   # converted by the parameter's dtype
# what each dtype kind takes from Python: a bool only bools, an integer bools and ints, a float
# any number (rounding to float32 as numpy does)
_PYTHON_KINDS = {"b": "b", "i": "bi", "u": "bu", "f": "bif"}
_KIND_WORDS = {"b": "bools", "i": "integers", "u": "integers", "f": "floats"}


def _from_python(value, want_dtype, expected, where):
    """(array, description) of a Python number or (nested) list for a tensor parameter: the
    values as the parameter's dtype, when that dtype holds them (no float silently truncated to
    an integer, no integer wrapped around); else an error that names the Python value."""
    natural = np.asarray(value) if not isinstance(value, (list, tuple)) else _nested_array(value, where)
    what = (f"a Python {type(value).__name__} of shape {natural.shape}" if natural.ndim
            else f"a Python {type(value).__name__}")
    if natural.dtype.kind not in _KIND_WORDS:
        values = "strings" if natural.dtype.kind in "US" else "values that are not numbers of one kind " \
            "(or integers beyond 64 bits)"
        raise InvokeArgumentError(f"{where}: expected {expected}, got {what} of {values}")
    target = np_dtype(want_dtype)
    if natural.dtype.kind not in _PYTHON_KINDS[target.kind]:
        raise InvokeArgumentError(f"{where}: expected {expected}, got {what} of "
                                  f"{_KIND_WORDS[natural.dtype.kind]} (convert it yourself if that is meant)")
    converted = natural.astype(target)
    if target.kind in "iu" and not np.array_equal(converted, natural):
        raise InvokeArgumentError(f"{where}: expected {expected}, got {what} with values "
                                  f"{want_dtype} cannot hold")
    return converted, what


def _nested_array(value, where):
    try:
        return np.array(value)
    except (ValueError, OverflowError) as e:     # ragged lists, integers beyond int64
        raise InvokeArgumentError(f"{where}: cannot make a tensor of a Python "
                                  f"{type(value).__name__} ({e})") from None


def _as_tensor(a: np.ndarray, where: str) -> Tensor:
    """The VM's Tensor for an array: kernels need compact, aligned, native-order memory."""
    if not (a.flags.c_contiguous and a.flags.aligned) or not a.dtype.isnative:
        try:
            a = np.array(a, dtype=a.dtype.newbyteorder("="), order="C")
        except MemoryError:
            raise InvokeArgumentError(f"{where}: a {a.dtype} array of shape {a.shape} needs a compact "
                                      f"native-order copy of {a.size * a.itemsize} bytes, which cannot "
                                      "be allocated") from None
    return Tensor.from_array(a)


def _fits(value, desc, ctors) -> bool:
    """Whether an imported ADT field fits its declared type (its own fields were checked when
    it was built; type parameters and function types are not checked)."""
    kind = desc["kind"]
    if kind == "adt":
        c = ctors.get(value.constructor) if isinstance(value, ADT) else None
        return c is not None and c["adt"] == desc["name"]
    if kind == "tensor":
        return isinstance(value, Tensor) and value.dtype == desc["dtype"] and \
            len(value.shape) == len(desc["shape"]) and \
            all(d is None or d == n for d, n in zip(desc["shape"], value.shape))
    if kind == "tuple":
        return isinstance(value, tuple) and len(value) == len(desc["fields"]) and \
            all(_fits(v, d, ctors) for v, d in zip(value, desc["fields"]))
    return True


def _describe(desc) -> str:
    if desc["kind"] == "adt":
        return f"a {desc['name']}"
    if desc["kind"] == "tensor":
        dims = ", ".join("?" if d is None else str(d) for d in desc["shape"])
        return f"a {desc['dtype']} tensor of shape ({dims})"
    return f"a {desc['kind']}"


def _import_leaf(value):
    """ADT fields carry no declared types: any array-like becomes a contiguous supported array."""
    if isinstance(value, (Closure, Storage, Tensor)):
        return value
    arr = np.asarray(value)
    try:
        dtype_name(arr.dtype)
    except DynVMError as e:
        raise InvokeArgumentError(f"ADT field: {e}") from None
    return _as_tensor(arr, "ADT field")


def export(value):
    """Turn a run-time value into what `invoke` returns. The caller owns, and may write, every
    array it gets, and none is memory it passed in: read-only arrays (constants) and arrays
    over memory the VM did not allocate (an argument returned as it is, or a view of one: their
    base is a numpy array, where the VM's storage has a buffer of its pool) are copies."""
    if type(value) is Tensor:       # the common result: a plain tensor
        a = value._array
        if a is None:
            a = value.array
        return a if a.flags.writeable and type(value.base) is not np.ndarray else a.copy()
    if isinstance(value, Tensor):
        value = value.array
        return value if value.flags.writeable else value.copy()
    if isinstance(value, (tuple, ADT)):
        return rebuild(value, export)
    return value




def import_arg(value, desc, where, ctors, function_count):
    """Check one invoke argument against its type descriptor and convert it to a run-time value
    (`ctors`: constructor name -> entry; `function_count`: closures must name a function)."""
    kind = desc["kind"]
    if kind == "tensor":
        return import_tensor(value, desc, where)
    if kind == "tuple":
        fields = desc["fields"]
        if not isinstance(value, tuple) or len(value) != len(fields):
            raise InvokeArgumentError(f"{where}: expected a tuple of {len(fields)} values, got {kind_of(value)}")
        return tuple(import_arg(v, d, f"{where}[{i}]", ctors, function_count) for i, (v, d) in enumerate(zip(value, fields)))
    if kind == "adt":
        return _import_adt(value, desc["name"], where, ctors)
    if kind == "any":
        return rebuild(value, _import_leaf, where=where)
    if not isinstance(value, Closure) or not 0 <= value.func_index < function_count:
        raise InvokeArgumentError(f"{where}: expected a vm.Closure from this executable, got {kind_of(value)}")
    return value

def _import_adt(value, adt_name, where, ctors):
    """An ADT argument, checked all the way down (iteratively: long lists are fine): every
    node's constructor exists with its tag and arity, and a field declared as an ADT or a
    tensor holds one of that type (fields typed by a type parameter are not checked).
    Without this, a match could read a node of another type as the constructor with the
    same tag."""
    if not isinstance(value, ADT):
        raise InvokeArgumentError(f"{where}: expected a vm.ADT of type {adt_name}, got {kind_of(value)}")
    ctor = ctors.get(value.constructor)
    if ctor is None or ctor["adt"] != adt_name:
        raise InvokeArgumentError(
            f"{where}: expected a {adt_name} value, got constructor {value.constructor!r} tag {value.tag}")

    def checked(node, fields):
        c = ctors.get(node.constructor)
        if c is None or c["tag"] != node.tag or c["arity"] not in (None, len(fields)):
            raise InvokeArgumentError(f"{where}: constructor {node.constructor!r} tag {node.tag} with "
                                      f"{len(fields)} fields is not a constructor of this program")
        for i, (field, desc) in enumerate(zip(fields, c.get("fields", ()))):
            if not _fits(field, desc, ctors):
                raise InvokeArgumentError(f"{where}: field {i} of a {node.constructor} must be "
                                          f"{_describe(desc)}, got {kind_of(field)}")
        return ADT(node.constructor, node.tag, fields)
    return rebuild(value, _import_leaf, make_adt=checked, where=where)
