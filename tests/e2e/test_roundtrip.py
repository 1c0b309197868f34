"""Random programs survive the text format and save/load with identical results, matching numpy."""
import numpy as np
from hypothesis import example, given, settings, strategies as st

from dynvm.compiler import build, ir
from dynvm.vm import Executable, VirtualMachine
from tests.strategies import evaluate, examples, layouts, pin_programs, program_inputs, random_program



@pin_programs()
@settings(max_examples=examples(8))
@given(program=random_program(), rows=st.sampled_from([0, 1, 4, 9, 17]), layout=layouts())
def test_random_program_survives_text_and_save_load(program, rows, layout, tmp_path_factory):
    func, reference = program
    mod = ir.IRModule.from_expr(func)
    reparsed = ir.parse(str(mod))
    assert ir.structural_equal(mod, reparsed)
    x, y = program_inputs(rows, layout, seed=rows)
    exe = build(mod)
    path = tmp_path_factory.mktemp("exe") / "prog.dvm"
    exe.save(str(path))
    outs = [VirtualMachine(e).invoke("main", x, y) for e in (exe, Executable.load(str(path)), build(reparsed))]
    np.testing.assert_allclose(outs[0][0], evaluate(reference, x, y), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(outs[0][1], x)
    for other in outs[1:]:
        np.testing.assert_array_equal(other[0], outs[0][0])
