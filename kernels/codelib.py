"""The single door to llvmlite (numba's CodeLibrary idea).

Everything that touches LLVM lives here: initialisation, the host target, the target machine,
the O3 pipeline, object emission (in parallel worker processes for a kernels section's compile
units: `Compilation`), the on-disk object cache and loading object code into an MCJIT engine.
The rest of `kernels/` only produces LLVM IR text and consumes function addresses, so the LLVM
version and its API churn stay in one file.

Counters in `stats` let tests prove what happened: "compiles" counts real LLVM compilations
(optimise + codegen), "cache_hits" objects read back from the disk cache, "loads" object files
loaded into an engine, "rejits" loads of trusted foreign code that had to recompile its IR
because the stored target is not the host, "rebuilds" kernels sections regenerated from their
specs at load (provenance.py).
"""
import ctypes
import ctypes.util
import hashlib
import os
import queue
import struct
import subprocess
import sys
import tempfile
import threading

import llvmlite
import llvmlite.binding as llvm
import msgpack

from dynvm.vm.errors import ExecutableFormatError, KernelError

stats = {"compiles": 0, "cache_hits": 0, "loads": 0, "rejits": 0, "rebuilds": 0}

_lock = threading.RLock()
_stats_lock = threading.Lock()      # compile workers' threads count too (not behind _lock: they
                                    # must not wait for this process's LLVM work)
_initialised = False
_target_machines = {}

# libm functions the LLVM intrinsics (llvm.exp, llvm.tanh, ...) lower to. MCJIT resolves
# undefined symbols in the process; registering them explicitly makes that independent of how
# the Python binary was linked.
_LIBM_SYMBOLS = ("exp", "expf", "log", "logf", "pow", "powf", "tanh", "tanhf", "sqrt", "sqrtf")


def _count(what, n=1):
    with _stats_lock:
        stats[what] += n


def _initialise():
    """Initialise the native target once (llvm.initialize() is deprecated in llvmlite 0.50)."""
    global _initialised
    with _lock:
        if _initialised:
            return
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        llvm.initialize_native_asmparser()
        _register_libm()
        _initialised = True


def _register_libm():
    path = ctypes.util.find_library("m")
    if path is None:
        return  # rely on the process's own symbols
    _register(ctypes.CDLL(path), _LIBM_SYMBOLS)


def _register(library, names):
    for name in names:
        fn = getattr(library, name, None)
        if fn is not None:
            llvm.add_symbol(name, ctypes.cast(fn, ctypes.c_void_p).value)


def register_process_symbols(names):
    """Resolve `names` (libc functions JIT code calls) in this process, explicitly."""
    _initialise()
    _register(ctypes.CDLL(None), names)


def add_symbol(name: str, address: int):
    """Make `name` resolve to `address` in every object loaded from now on."""
    _initialise()
    llvm.add_symbol(name, address)


_runtime = None     # None, "installing", "installed": the kernels' runtime symbols


def install_runtime():
    """Register the symbols kernels call (the thread pool's `dynvm_parallel_for`) before the
    first object loads; the pool's own library loads while this runs ("installing")."""
    global _runtime
    if _runtime == "installed":
        return
    with _lock:
        if _runtime is None:
            _runtime = "installing"
            from dynvm.kernels import pool
            try:
                pool.make()
            except BaseException:
                _runtime = None
                raise
            _runtime = "installed"


def host_target() -> dict:
    """The target LLVM reports for this machine; stored in every kernels section.

    llvmlite may report more features than /proc/cpuinfo lists; code compiled for
    what llvmlite reports runs correctly, so that is what we use and record.
    """
    _initialise()
    return {
        "triple": llvm.get_process_triple(),
        "cpu": llvm.get_host_cpu_name(),
        "features": llvm.get_host_cpu_features().flatten(),
    }


def _target_machine(target: dict, shared=True):
    """A JIT-style target machine (large code model) so objects load at any address.

    MCJIT engines take ownership of (and free) their target machine, so an engine must get
    its own (`shared=False`); compilation reuses one cached machine per target.
    """
    key = (target["triple"], target["cpu"], target["features"])
    with _lock:
        tm = _target_machines.get(key) if shared else None
        if tm is None:
            llvm_target = llvm.Target.from_triple(target["triple"])
            tm = llvm_target.create_target_machine(
                cpu=target["cpu"], features=target["features"], opt=3,
                reloc="default", codemodel="jitdefault", jit=True)
            if shared:
                _target_machines[key] = tm
        return tm


def _optimise(module, tm, speed_level=3):
    """Run the new-pass-manager pipeline (O3 by default) with loop and SLP vectorisation on."""
    pto = llvm.create_pipeline_tuning_options(speed_level=speed_level)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pto.loop_unrolling = True
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(module, pb)


# ---------------------------------------------------------------------------------------------
# object cache


def cache_dir():
    """Directory of the object cache, or None when disabled (DYNVM_CACHE_DIR set to '')."""
    env = os.environ.get("DYNVM_CACHE_DIR")
    if env is not None:
        return env or None
    return os.path.join(os.path.expanduser("~"), ".cache", "dynvm")


def _cache_key(texts: list, target: dict, speed_level=3) -> str:
    h = hashlib.sha256()
    for part in (llvmlite.__version__, target["triple"], target["cpu"], target["features"],
                 str(speed_level), *texts):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def cache_path(key, suffix=".o"):
    """The path of the cached file `key + suffix` if it exists, else None."""
    directory = cache_dir()
    if directory is None:
        return None
    path = os.path.join(directory, key + suffix)
    return path if os.path.isfile(path) else None


def cache_read(key, suffix=".o"):
    """The cached file `key + suffix`, or None (no cache, no such file, unreadable)."""
    path = cache_path(key, suffix)
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def cached_object(key):
    """The object code cached under `key`, or None."""
    obj = cache_read(key)
    # files appear atomically (see cache_write), but a damaged disk or a hand-edited file
    # must cost a recompile, not a crash inside LLVM
    if obj is None or not _looks_like_object(obj):
        return None
    _count("cache_hits")
    return obj


def source_key(source: bytes, target: dict, speed_level=3) -> str:
    """An object-cache key for code generated from `source` (a digest of everything the
    generated IR depends on), so a hit skips generating the IR as well as compiling it."""
    return _cache_key(["generated from " + hashlib.sha256(source).hexdigest()], target,
                      speed_level)


def cache_write(key, data: bytes, suffix=".o", directory=None):
    """Write atomically (temp file + os.replace) so concurrent processes never see half a file;
    into `directory` if given, else the object cache."""
    directory = directory or cache_dir()
    if directory is None:
        return
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=key[:16], suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, os.path.join(directory, key + suffix))
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass  # a cache that cannot be written is only a slower cache


# ---------------------------------------------------------------------------------------------
# compile and load


def compile_ir(llvm_ir, target: dict, speed_level=3, key=None) -> bytes:
    """Optimise `llvm_ir` (O3 unless `speed_level` says less) for `target` and return native
    object code (disk-cached under `key`, by default the hash of the IR and target: a caller
    that can name its IR without generating it passes a key of its own, `source_key`).

    `llvm_ir` is one module's text, or a compilation unit: a list of module texts, linked into
    one module (LLVM renames clashing internal helpers; a symbol defined with external linkage
    in two of them is an error)."""
    _initialise()
    texts = [llvm_ir] if isinstance(llvm_ir, str) else list(llvm_ir)
    key = key or _cache_key(texts, target, speed_level)
    cached = cached_object(key)
    if cached is not None:
        return cached
    tm = _target_machine(target)
    with _lock:
        try:
            module = llvm.parse_assembly(texts[0])
            for text in texts[1:]:
                module.link_in(llvm.parse_assembly(text))
            module.verify()
        except RuntimeError as e:
            raise KernelError(f"generated LLVM IR is invalid: {e}") from None
        _optimise(module, tm, speed_level)
        obj = tm.emit_object(module)
    _count("compiles")
    cache_write(key, obj)
    return obj


class Compilation:
    """Compiles units (lists of IR module texts, see `compile_ir`) into one object each, in
    parallel: units are queued as they come (`submit`); once a unit is queued, up to
    `compile_jobs()` - 1 worker processes (`serve`) take units from the queue while the caller
    goes on emitting, and `objects()` compiles what is left in this process. llvmlite runs every
    LLVM call of a process behind one lock, so threads would not overlap; processes do.

    Which process compiles a unit does not change its object (the same IR, target and pipeline
    give the same bytes). A worker that fails leaves its unit to this process, which then
    raises the error (if the IR is invalid) or compiles it."""

    def __init__(self, target: dict):
        self._target = target
        self._units = []
        self._objects = []
        self._queue = queue.SimpleQueue()
        self._workers = []

    def submit(self, texts: list, last=False) -> None:
        """Queue a unit; the first, unless it is also the `last`, starts the workers."""
        if not self._units and not last:
            for _ in range(compile_jobs() - 1):
                try:
                    self._workers.append(_Worker(self._queue, self._units, self._target,
                                                 self._objects))
                except OSError:
                    break           # no worker can start (no Python executable): compile here
        self._units.append(texts)
        self._objects.append(None)
        self._queue.put(len(self._units) - 1)

    def objects(self) -> list:
        """The units' objects, in submission order (waits for the workers)."""
        for _ in range(len(self._workers) + 1):
            self._queue.put(None)                   # after every unit: each taker stops there
        try:
            while True:
                i = self._queue.get()
                if i is None:
                    break
                self._objects[i] = compile_ir(self._units[i], self._target)
        finally:
            for w in self._workers:
                w.close()
        for i, obj in enumerate(self._objects):
            if obj is None:                         # its worker failed
                self._objects[i] = compile_ir(self._units[i], self._target)
        return self._objects


def compile_jobs() -> int:
    """Processes compiling kernels at once: DYNVM_COMPILE_JOBS, else this process's CPUs (at
    most 2: the units of one build rarely keep more busy)."""
    env = os.environ.get("DYNVM_COMPILE_JOBS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise KernelError(f"DYNVM_COMPILE_JOBS must be a number of processes, "
                              f"got {env!r}") from None
    return max(1, min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1))


class _Worker:
    """A compile worker process (`serve`) and the thread feeding it units from `tasks` (indices
    into `units`; None: stop), one at a time over its stdin/stdout, into `objects`."""

    def __init__(self, tasks, units, target, objects):
        self._process = subprocess.Popen(
            [sys.executable, "-c", "from dynvm.kernels.codelib import serve; serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self._thread = threading.Thread(target=self._feed, args=(tasks, units, target, objects),
                                        daemon=True)
        self._thread.start()

    def _feed(self, tasks, units, target, objects):
        while True:
            i = tasks.get()
            if i is None:
                return
            try:
                _write_frame(self._process.stdin, {"texts": units[i], "target": target})
                reply = _read_frame(self._process.stdout)
            except (OSError, EOFError, ValueError):
                reply = {}
            if "object" not in reply:
                return          # objects[i] stays None: compiled by the caller, as the rest
            objects[i] = reply["object"]
            for what, n in reply["stats"].items():
                _count(what, n)

    def close(self):
        """Wait for the feeding thread (it stops at the queue's None) and end the process."""
        self._thread.join()
        try:
            self._process.stdin.close()
        except OSError:
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process.stdout.close()


def serve():
    """The compile worker's loop: a unit in ({"texts", "target"}), its {"object", "stats"} (what
    compiling it added to `stats`) or {"error"} out, until stdin closes."""
    while True:
        try:
            request = _read_frame(sys.stdin.buffer)
        except EOFError:
            return
        before = dict(stats)
        try:
            obj = compile_ir(request["texts"], request["target"])
            reply = {"object": obj, "stats": {k: stats[k] - before[k] for k in stats}}
        except KernelError as e:
            reply = {"error": str(e)}
        _write_frame(sys.stdout.buffer, reply)


def _write_frame(stream, value):
    data = msgpack.packb(value, use_bin_type=True)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def _read_frame(stream):
    header = stream.read(8)
    if len(header) < 8:
        raise EOFError("compile worker stream closed")
    size, = struct.unpack("<Q", header)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("compile worker stream closed")
    return msgpack.unpackb(data, raw=False)


def _looks_like_object(obj: bytes) -> bool:
    """Reject obviously non-object bytes before LLVM sees them (LLVM may abort on garbage)."""
    return obj[:4] in (b"\x7fELF", b"\xcf\xfa\xed\xfe", b"\xce\xfa\xed\xfe") or obj[:2] == b"\x64\x86"


class CodeLibrary:
    """Native code of one kernels section loaded into its own MCJIT engine.

    The engine owns the machine code, so the library must outlive every function pointer taken
    from it (Kernel objects keep a reference).
    """

    def __init__(self, llvm_ir, obj, target: dict):
        """llvm_ir, obj: one IR text (or unit, see `compile_ir`) and its object, or lists of
        them (a kernels section's units, loaded into one engine)."""
        _initialise()
        install_runtime()
        if isinstance(obj, (bytes, bytearray)):
            llvm_ir, obj = [llvm_ir], [obj]
        host = host_target()
        self.rejitted = _same_target(target, host) is False
        if self.rejitted:
            obj = [compile_ir(text, host) for text in llvm_ir]
            stats["rejits"] += 1
        if not all(_looks_like_object(o) for o in obj):
            raise ExecutableFormatError("kernels section: object code is not a native object file")
        tm = _target_machine(host, shared=False)
        with _lock:
            self._engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), tm)
            for o in obj:
                self._engine.add_object_file(llvm.ObjectFileRef.from_data(bytes(o)))
            self._engine.finalize_object()
            stats["loads"] += 1

    def address(self, symbol: str) -> int:
        """Address of `symbol`, or 0 when the object does not define it."""
        with _lock:
            return self._engine.get_function_address(symbol)

    def global_address(self, symbol: str) -> int:
        """Address of the global variable `symbol` (e.g. a dispatcher's `S__variant`), or 0."""
        with _lock:
            return self._engine.get_global_value_address(symbol)


def _same_target(stored: dict, host: dict) -> bool:
    return all(stored[k] == host[k] for k in ("triple", "cpu", "features"))
