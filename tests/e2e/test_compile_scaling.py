"""benchmarks/compile_scaling.py --tiny runs end to end (a smoke test; its numbers are not checked)."""
import os
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "compile_scaling.py")


def test_compile_scaling_tiny_prints_both_forms_and_a_verdict():
    out = subprocess.run([sys.executable, SCRIPT, "--tiny"], capture_output=True, text=True,
                         timeout=600, check=True).stdout
    for form in ("nested", "lets"):
        assert f"{form}: marginal us/op" in out
    assert out.count("\nnested ") == 3 and out.count("\nlets ") == 3
