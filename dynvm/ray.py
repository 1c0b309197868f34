"""Scale out on Ray: score a Ray Dataset with an executable, or serve one with Ray Serve.

    import dynvm.ray
    exe_ref = dynvm.ray.ship(exe)     # the .dvm bytes, put in the object store once
    scored = dataset.map_batches(dynvm.ray.Predictor, batch_format="numpy", num_cpus=1,
                                 compute=ray.data.ActorPoolStrategy(size=2),
                                 fn_constructor_kwargs={"executable": exe_ref})
    serve.run(dynvm.ray.deployment("model.dvm"))   # POST {"args": [...]} -> {"output": ...}

What crosses to a worker is the executable's bytes (`Executable.to_bytes`), through the object
store or as a path every node can read; each actor (or Serve replica) loads them once, verified
like any file (`Executable.from_bytes`: by default its kernels run native code the worker's
machine generates, see `trust_native_code`), and keeps one `VirtualMachine` per thread, since a
VM runs one invocation at a time. A row whose invocation raises a `dynvm.DynVMError` gets a
`RowError` (the error's class name and message) in place of its output: the other rows of its
batch are unaffected. Any other exception is a bug and propagates.

Ray is imported only when needed (`pip install 'dynvm[ray]'`), so this module imports without it.
"""
import os
import threading
from dataclasses import dataclass

import numpy as np

from dynvm.vm import Executable, VirtualMachine
from dynvm.vm.errors import DynVMError


@dataclass(frozen=True)
class RowError:
    """A row whose invocation failed: the `dynvm.DynVMError` subclass's name and its message."""

    type: str
    message: str

    def __str__(self):
        return f"{self.type}: {self.message}"


def ship(executable):
    """Put an executable (an `Executable` or the path of a .dvm file) into Ray's object store
    once, as its .dvm bytes; pass the returned `ray.ObjectRef` as `Predictor`'s or
    `deployment`'s `executable` so every worker fetches it from there instead of a file."""
    import ray
    if isinstance(executable, (str, os.PathLike)):
        with open(executable, "rb") as f:
            return ray.put(f.read())
    return ray.put(executable.to_bytes())


def load(executable, trust_native_code: bool = False) -> Executable:
    """An `Executable` from what `ship` returned (a `ray.ObjectRef` to .dvm bytes), the bytes
    themselves, a path, or an `Executable` (returned as it is)."""
    if isinstance(executable, Executable):
        return executable
    if isinstance(executable, (str, os.PathLike)):
        return Executable.load(executable, trust_native_code)
    if not isinstance(executable, (bytes, bytearray, memoryview)):
        ray = _ray()
        if ray is None or not isinstance(executable, ray.ObjectRef):
            raise TypeError(f"executable must be an Executable, .dvm bytes, a path or a "
                            f"ray.ObjectRef to .dvm bytes, got a {type(executable).__name__}")
        executable = ray.get(executable)
    return Executable.from_bytes(bytes(executable), trust_native_code)


class Runner:
    """Runs rows (tuples of arguments of one function) on one executable, with one
    `VirtualMachine` per calling thread; `Predictor` and the Serve deployment share it.

    `batch_dim=True` says the function's parameters and result carry a leading batch
    dimension the rows lack: rows whose arguments have equal shapes and dtypes are stacked
    along a new axis 0 into one invocation, and its result is split back into rows. Without
    it, every row is its own invocation (any shapes the function accepts, no padding).
    `threads`: each VM's kernel threads; None is the CPUs Ray assigned to this worker (or the
    VM's default outside a Ray task or actor)."""

    def __init__(self, executable, function: str = "main", batch_dim: bool = False,
                 threads=None, trust_native_code: bool = False):
        self.exe = load(executable, trust_native_code)
        self.exe.function_index(function)   # KeyError now, not on the first row
        self.function, self.batch_dim = function, batch_dim
        self.threads = _assigned_cpus() if threads is None else threads
        self._local = threading.local()

    def vm(self) -> VirtualMachine:
        """This thread's VM (made on the thread's first call)."""
        vm = getattr(self._local, "vm", None)
        if vm is None:
            vm = self._local.vm = VirtualMachine(self.exe, threads=self.threads)
        return vm

    def run(self, rows) -> list:
        """One result per row, in order: the function's result, or a RowError."""
        rows = [tuple(args) for args in rows]
        if not self.batch_dim:
            return [self._invoke(args) for args in rows]
        results = [None] * len(rows)
        for indices in _groups_of_equal_shape(rows).values():
            for i, value in zip(indices, self._invoke_stacked([rows[i] for i in indices])):
                results[i] = value
        return results

    def _invoke(self, args):
        try:
            return self.vm().invoke(self.function, *args)
        except DynVMError as e:
            return RowError(type(e).__name__, str(e))

    def _invoke_stacked(self, rows) -> list:
        """Rows of equal shapes as one invocation; if it fails, each row alone, so an error
        lands on the rows that cause it."""
        stacked = self._invoke(tuple(_stack(values) for values in zip(*rows)))
        if not isinstance(stacked, RowError):
            return self._unstack(stacked, len(rows))
        if len(rows) == 1:
            return [stacked]
        return [self._invoke_stacked([row])[0] for row in rows]

    def _unstack(self, result, count: int) -> list:
        """A stacked invocation's result (a tensor, or a tuple of them) as `count` rows."""
        if isinstance(result, tuple):
            return [tuple(row) for row in zip(*(self._unstack(r, count) for r in result))]
        if np.ndim(result) == 0 or len(result) != count:
            raise ValueError(f"batch_dim=True, but {self.function} returned shape "
                             f"{np.shape(result)} for {count} stacked rows: its result needs "
                             f"the leading batch dimension")
        return list(result)


def _stack(values):
    """Equal-shaped arrays as one array with a new leading axis; (nested) lists, which the VM
    converts to the declared dtype itself, as one longer list."""
    if all(isinstance(v, np.ndarray) for v in values):
        return np.stack(values)
    return list(values)


def _groups_of_equal_shape(rows) -> dict:
    """{(shape, dtype) of each argument: [row index, ...]}; a row whose arguments have no
    shape (a ragged list) is a group of its own, so the VM reports it."""
    groups = {}
    for i, args in enumerate(rows):
        try:
            key = tuple((np.shape(a), a.dtype.str if isinstance(a, np.ndarray) else "list")
                        for a in args)
        except ValueError:
            key = ("row", i)
        groups.setdefault(key, []).append(i)
    return groups


def _ray():
    """The ray module, or None when it is not installed."""
    try:
        import ray
    except ImportError:
        return None
    return ray


def _assigned_cpus():
    """The CPUs Ray assigned to the current task or actor (at least 1), or None outside one
    (also when Ray is not installed: a `Runner` works without it)."""
    ray = _ray()
    if ray is None or not ray.is_initialized():
        return None
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    return max(1, int(cpus)) if cpus else None


class Predictor:
    """A callable class for `ray.data.Dataset.map_batches(Predictor, batch_format="numpy",
    compute=ray.data.ActorPoolStrategy(size=N), fn_constructor_kwargs={"executable": ...})`:
    each actor loads the executable once (see `load`) and scores every row of a batch with
    `function`.

    `inputs` names the columns holding the function's arguments, in order (a column of
    variable-shaped arrays is fine: each row is invoked with its own shape). The result batch
    has the other columns as they came (an id column, say), `output` (each row's result) and
    `error` (`"ShapeError: ..."` for a failed row, "" otherwise). A failed row's output is an
    empty array of the declared result's rank and dtype, so the column keeps one Arrow type
    (a None would not). `batch_dim`, `threads` and `trust_native_code`: see `Runner`."""

    def __init__(self, executable, function: str = "main", inputs=("x",), output: str = "output",
                 error: str = "error", batch_dim: bool = False, threads=None,
                 trust_native_code: bool = False):
        self.runner = Runner(executable, function, batch_dim, threads, trust_native_code)
        self.inputs, self.output, self.error = list(inputs), output, error
        self._failed = _empty_result(self.runner)

    def __call__(self, batch: dict) -> dict:
        """Score one batch (a dict of column name -> numpy array)."""
        results = self.runner.run(zip(*(batch[name] for name in self.inputs)))
        out = {k: v for k, v in batch.items() if k not in self.inputs}
        failed = [isinstance(r, RowError) for r in results]
        out[self.output] = _column([self._failed if f else r for f, r in zip(failed, results)])
        out[self.error] = np.array([str(r) if f else "" for f, r in zip(failed, results)])
        return out


def _empty_result(runner: Runner):
    """A failed row's output: a size-0 array of the declared result's rank (less the batch
    dimension) and dtype; None when the function does not return one tensor."""
    ret = runner.exe.functions[runner.exe.function_index(runner.function)].ret_type
    if ret.get("kind") != "tensor":
        return None
    return np.zeros((0,) * (len(ret["shape"]) - runner.batch_dim), ret["dtype"])


def _column(values) -> np.ndarray:
    """Row results as one column: stacked when they are arrays of one shape and dtype, else an
    object array (variable shapes, failed rows)."""
    if values and all(isinstance(v, np.ndarray) for v in values) and \
            len({(v.shape, v.dtype) for v in values}) == 1:
        return np.stack(values)
    column = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        column[i] = value
    return column


def deployment(executable, function: str = "main", batch_dim: bool = False,
               max_batch_size: int = 16, batch_wait_timeout_s: float = 0.002, threads=None,
               trust_native_code: bool = False, **options):
    """A Ray Serve application serving `function` of an executable (an `Executable`, a path,
    or what `ship` returned): `serve.run(deployment(...))`. `options` go to
    `serve.deployment` (`num_replicas`, `ray_actor_options`, `name`, ...).

    Requests are grouped by `@serve.batch` (up to `max_batch_size` waiting at most
    `batch_wait_timeout_s`) and run by a `Runner`: with `batch_dim`, requests of equal shapes
    become one invocation. HTTP: POST `{"args": [argument, ...]}` (nested lists, converted to
    the declared dtypes) answers `{"output": ...}` (the result as nested lists), or status 422
    and `{"error": {"type": ..., "message": ...}}` when the invocation raised a
    `dynvm.DynVMError`. From Python, `handle.infer.remote(*args).result()` returns the result
    (numpy arrays) or a `RowError`."""
    from ray import serve
    from starlette.responses import JSONResponse

    # a replica takes in enough requests to fill a batch while it runs the previous one
    @serve.deployment(**{"name": "dynvm", "max_ongoing_requests": 2 * max_batch_size, **options})
    class Server:
        def __init__(self, executable):
            self.runner = Runner(executable, function, batch_dim, threads, trust_native_code)

        @serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s)
        async def _run(self, rows: list) -> list:
            return self.runner.run(rows)

        async def infer(self, *args):
            return await self._run(args)

        async def __call__(self, request):
            try:
                args = (await request.json())["args"]
                if not isinstance(args, list):
                    raise TypeError("args must be a list")
            except (ValueError, KeyError, TypeError) as e:
                return JSONResponse({"error": {"type": "BadRequest", "message":
                                     f'the body must be JSON {{"args": [...]}} ({e})'}}, 400)
            result = await self._run(tuple(args))
            if isinstance(result, RowError):
                error = {"type": result.type, "message": result.message}
                return JSONResponse({"error": error}, 422)
            return {"output": _jsonable(result)}

    return Server.bind(executable)


def _jsonable(value):
    """A result as JSON values: arrays as nested lists, tuples as lists."""
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value
