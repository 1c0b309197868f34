"""Read ONNX models into dynvm (`pip install dynvm[onnx]`).

    from dynvm.frontend.onnx import from_onnx
    mod = from_onnx("model.onnx")                  # or an onnx.ModelProto; shapes={"x": (1, None)}
    exe = dynvm.build(mod)

Inputs with symbolic or unknown dims get `Any` dims; `UnsupportedOnnxError` names every node
that cannot be converted. `backend.DynvmBackend` is an `onnx.backend` Backend (ONNX's own node
tests run through it: benchmarks/onnx_conformance.py).
"""
from dynvm.frontend.onnx.importer import UnsupportedOnnxError, from_onnx  # noqa: F401
from dynvm.frontend.onnx import converters  # noqa: F401,E402  (fills the converter table)

__all__ = ["from_onnx", "UnsupportedOnnxError"]
