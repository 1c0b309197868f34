"""Frontends: other formats into dynvm's IR. `dynvm.frontend.onnx` reads ONNX models
(`pip install dynvm[onnx]`)."""
