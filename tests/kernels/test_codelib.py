"""codelib: the host target, O3 compilation and the on-disk object cache."""
import os
import subprocess
import sys

from dynvm.kernels import codelib



IR = """
define i32 @answer(ptr %args, i32 %nargs) {
  ret i32 42
}
"""


def test_host_target_reports_triple_cpu_and_features():
    t = codelib.host_target()
    assert set(t) == {"triple", "cpu", "features"}
    assert all(isinstance(v, str) for v in t.values()) and t["cpu"]


def test_compiled_object_loads_and_runs():
    obj = codelib.compile_ir(IR, codelib.host_target())
    lib = codelib.CodeLibrary(IR, obj, codelib.host_target())
    from dynvm.kernels import abi
    assert abi.kernel_function(lib.address("answer"))(abi.ffi.NULL, 0) == 42
    assert lib.address("missing") == 0


def test_object_cache_hit_skips_compilation(monkeypatch, tmp_path):
    monkeypatch.setenv("DYNVM_CACHE_DIR", str(tmp_path))
    target = codelib.host_target()
    before = dict(codelib.stats)
    first = codelib.compile_ir(IR, target)
    second = codelib.compile_ir(IR, target)
    assert first == second
    assert codelib.stats["compiles"] == before["compiles"] + 1
    assert codelib.stats["cache_hits"] == before["cache_hits"] + 1
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].endswith(".o")  # no temp files left behind


def test_empty_cache_dir_disables_the_cache(monkeypatch):
    monkeypatch.setenv("DYNVM_CACHE_DIR", "")
    before = codelib.stats["compiles"]
    codelib.compile_ir(IR, codelib.host_target())
    codelib.compile_ir(IR, codelib.host_target())
    assert codelib.stats["compiles"] == before + 2


def test_two_processes_fill_the_same_cache_safely(tmp_path):
    code = ("from dynvm.kernels import codelib\n"
            "ir = 'define i32 @f(ptr %a, i32 %n) {\\n  ret i32 7\\n}\\n'\n"
            "obj = codelib.compile_ir(ir, codelib.host_target())\n"
            "assert len(obj) > 0\n")
    env = dict(os.environ, DYNVM_CACHE_DIR=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(2)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    assert [f for f in os.listdir(tmp_path) if not f.endswith(".o")] == []


def test_freeing_a_loaded_library_leaves_compilation_working():
    """Regression: MCJIT frees its target machine, so engines must not share the cached one."""
    import gc
    target = codelib.host_target()
    lib = codelib.CodeLibrary(IR, codelib.compile_ir(IR, target), target)
    del lib
    gc.collect()
    assert codelib.compile_ir(IR + "\n", target)[:4] == b"\x7fELF"


def _module(name, value):
    """A module defining `name` (external) through an internal helper all of them call `helper`."""
    return f"""
define internal i32 @helper() {{
  ret i32 {value}
}}
define i32 @{name}(ptr %args, i32 %nargs) {{
  %v = call i32 @helper()
  ret i32 %v
}}
"""


UNITS = [[_module("first", 1), _module("second", 2)], [_module("third", 3)]]


def compile_units():
    compilation = codelib.Compilation(codelib.host_target())
    compilation.submit(UNITS[0])
    compilation.submit(UNITS[1], last=True)
    return compilation.objects()


def test_units_link_their_modules_and_compile_in_a_worker_as_here(monkeypatch):
    """Two processes compile the two units (the first unit starts a worker); each unit's
    modules are linked (their internal helpers kept apart); a worker's object is the one
    this process compiles for the same unit."""
    monkeypatch.setenv("DYNVM_CACHE_DIR", "")
    monkeypatch.setenv("DYNVM_COMPILE_JOBS", "2")
    before = codelib.stats["compiles"]
    objects = compile_units()
    assert codelib.stats["compiles"] == before + 2
    assert objects == [codelib.compile_ir(unit, codelib.host_target()) for unit in UNITS]
    lib = codelib.CodeLibrary(UNITS, objects, codelib.host_target())
    from dynvm.kernels import abi
    assert [abi.kernel_function(lib.address(name))(abi.ffi.NULL, 0)
            for name in ("first", "second", "third")] == [1, 2, 3]


def test_a_failed_worker_leaves_its_units_to_this_process(monkeypatch):
    monkeypatch.setenv("DYNVM_CACHE_DIR", "")
    monkeypatch.setenv("DYNVM_COMPILE_JOBS", "2")
    monkeypatch.setattr(codelib.sys, "executable", "/bin/false")
    assert compile_units() == [codelib.compile_ir(unit, codelib.host_target()) for unit in UNITS]
