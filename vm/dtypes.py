"""The tensor element types dynvm supports, their numpy types and their DLPack codes."""
import numpy as np

from dynvm.vm.errors import DynVMError

# name -> (numpy dtype, DLPack type code, bits)
DTYPES = {
    "float32": (np.dtype(np.float32), 2, 32),
    "float64": (np.dtype(np.float64), 2, 64),
    "int32": (np.dtype(np.int32), 0, 32),
    "int64": (np.dtype(np.int64), 0, 64),
    "bool": (np.dtype(np.bool_), 6, 8),
}


def check_dtype(name: str) -> str:
    """Return `name` if it is a supported dtype name, else raise."""
    if name not in DTYPES:
        raise DynVMError(f"unsupported dtype {name!r}; supported: {', '.join(DTYPES)}")
    return name


def np_dtype(name: str) -> np.dtype:
    return DTYPES[check_dtype(name)][0]


_NAMES = {np.dtype(v[0]): k for k, v in DTYPES.items()}


def dtype_name(dtype) -> str:
    """The dynvm name of a numpy dtype (raises for unsupported ones)."""
    name = _NAMES.get(dtype)  # numpy's dtype.name costs ~1 us: a dict hit is the fast path
    if name is not None:
        return name
    name = np.dtype(dtype).name
    return check_dtype(name)


def itemsize(name: str) -> int:
    return np_dtype(name).itemsize
