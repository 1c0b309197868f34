"""Which native code a loaded executable may run: only code this machine generated.

A kernels section records, for every kernel, exactly what the builder takes (family, spec,
signature) besides the LLVM IR and object code. The object code and IR of a file are not
trusted by default: a file is just bytes, and its checksum is not a signature. Instead:

- every section this machine builds (`KernelBuilder.finish`) is remembered under its *spec
  key*: a hash of the kernels' names, families, specs and signatures, the host target and a
  fingerprint of the kernel generators' source. `remember` keeps it in memory and in the
  object cache directory;
- loading a section looks its spec key up (`local_section`): a file built on this machine
  finds the code this machine generated for it, read from the cache (as fast as loading the
  file's own object code, and no code generator is imported); any other file's kernels are
  regenerated from their specs by the local generators (`builder.rebuild_section`, an O3
  compile on the first load, then a cache hit), so what runs is always what the local
  generator produces for those specs;
- `trust_native_code=True` (Executable.load / from_bytes) is the explicit opt-in to run a
  file's own object code (or its IR, re-JITted for another CPU) as it is.

`native_section` makes that choice and says what it cost (`LoadReport`, kept on the Executable
as `load_report`). A rebuild takes seconds, so it is never silent: it emits a
`PerformanceWarning` naming the kernel count, the time and whether the result was cached.
"""
from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import hashlib
import importlib.util
import json
import os
import sys
import threading
import time
import warnings

import msgpack

from dynvm.kernels import codelib
from dynvm.vm.errors import PerformanceWarning

_SECTION_SUFFIX = ".section"
# spec key -> section (a private copy): the sections this process built most recently, found
# without the disk cache (or when it is disabled); bounded, since each holds its object code
_remembered: collections.OrderedDict = collections.OrderedDict()
_REMEMBERED_MAX = 64
_lock = threading.Lock()


@functools.cache
def generator_fingerprint() -> str:
    """Hash of the kernel generators' source (kernels/*.py, and shape_funcs/*.py, which the
    shape_func family traces into code) and the LLVM version: code cached by another version of
    the generators is never mistaken for what this version produces."""
    h = hashlib.sha256(codelib.llvmlite.__version__.encode())
    shape_funcs = importlib.util.find_spec("dynvm.shape_funcs").submodule_search_locations[0]
    for folder in (os.path.dirname(os.path.abspath(__file__)), shape_funcs):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                with open(os.path.join(folder, name), "rb") as f:
                    h.update(name.encode() + b"\0" + f.read() + b"\0")
    return h.hexdigest()


def spec_key(section: dict, target: dict) -> str:
    """What determines the code the local builder generates for `section` on `target`."""
    specs = [[k["name"], k["op"], k["attrs"], k["inputs"], k["outputs"]] for k in section["kernels"]]
    text = json.dumps([generator_fingerprint(), target["triple"], target["cpu"], target["features"],
                       specs])   # JSON: specs may hold integers msgpack cannot (attrs beyond int64)
    return "s" + hashlib.sha256(text.encode()).hexdigest()


def remember(section: dict, directory=None) -> None:
    """Record a section this machine just generated (called by the builder); its cache file goes
    to `directory` if given (a private cache, e.g. the fuzz harness's workers'), else to the
    object cache."""
    key = spec_key(section, section["target"])
    with _lock:
        _remembered[key] = copy.deepcopy(section)
        _remembered.move_to_end(key)
        while len(_remembered) > _REMEMBERED_MAX:
            _remembered.popitem(last=False)
    try:
        packed = msgpack.packb(section, use_bin_type=True)
    except (OverflowError, TypeError, ValueError):
        return   # a spec no file can hold: remembered in this process only
    codelib.cache_write(key, packed, _SECTION_SUFFIX, directory)


def local_section(section: dict) -> dict | None:
    """The section this machine generated for the same specs on this host, or None."""
    host = codelib.host_target()
    key = spec_key(section, host)
    with _lock:
        local = _remembered.get(key)
    if local is not None:
        return local
    packed = codelib.cache_read(key, _SECTION_SUFFIX)
    if packed is None:
        return None
    try:
        local = msgpack.unpackb(packed, raw=False, strict_map_key=True, use_list=True)
    except Exception:  # noqa: BLE001 - a damaged cache file only costs a rebuild
        return None
    return local if spec_key(local, host) == key else None


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """How a loaded kernels section got the native code it runs.

    origin: "local" (code this machine generated for these specs, from memory or the object
    cache), "rebuilt" (regenerated from the specs during this load) or "trusted" (the file's own
    code, `trust_native_code=True`); seconds: time spent rebuilding (0 otherwise); cached: the
    rebuilt code is in the object cache, so the next load of the file, in any process, is fast.
    """
    kernels: int
    origin: str
    seconds: float = 0.0
    cached: bool = False

    @property
    def rebuilt(self) -> int:
        """Kernels regenerated from their specs during this load."""
        return self.kernels if self.origin == "rebuilt" else 0


def native_section(section: dict, trust_native_code=False) -> tuple[dict, LoadReport]:
    """The section whose code runs for the (validated) `section` of a file, and how it was
    obtained; a rebuild warns (PerformanceWarning)."""
    count = len(section["kernels"])
    if trust_native_code:
        return section, LoadReport(count, "trusted")
    local = local_section(section)
    if local is not None:
        return local, LoadReport(count, "local")
    from dynvm.kernels.builder import rebuild_section  # the code generator: foreign files only
    start = time.perf_counter()
    rebuilt = rebuild_section(section)
    cached = codelib.cache_path(spec_key(rebuilt, rebuilt["target"]), _SECTION_SUFFIX) is not None
    report = LoadReport(count, "rebuilt", time.perf_counter() - start, cached)
    warnings.warn(_rebuild_message(report), PerformanceWarning, stacklevel=_caller_outside_dynvm())
    return rebuilt, report


def _rebuild_message(report: LoadReport) -> str:
    kernels = ("1 kernel of this executable was" if report.kernels == 1
               else f"{report.kernels} kernels of this executable were")
    if report.cached:
        after = (f"the rebuilt code is cached in {codelib.cache_dir()}, so the next load of "
                 "this file is fast")
    else:
        after = ("the object cache is disabled or not writable (DYNVM_CACHE_DIR), so every "
                 "new process rebuilds them again")
    return (f"{kernels} rebuilt from their specs in "
            f"{report.seconds:.2f} s: the file's native code was not generated on this machine "
            f"(or is no longer in its object cache); {after}. Files from a source you trust can "
            "run their own code: Executable.load(path, trust_native_code=True)")


def _caller_outside_dynvm() -> int:
    """The `stacklevel` that attributes a warning to the first caller outside dynvm (the line
    that loaded the file), however deep inside dynvm the warning is raised."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] == "dynvm":
        level, frame = level + 1, frame.f_back
    return level
