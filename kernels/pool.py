"""The kernels' thread pool: `dynvm_parallel_for(fn, ctx, n)` runs `fn(ctx, lo, hi)` over the
chunks [0, n) on the calling thread plus sleeping worker threads, all in native code.

Everything that runs per call is JIT-compiled IR (below) calling libc's pthread functions; no
Python runs per task and kernels reach the entry as an ordinary external symbol (registered
with the JIT before any kernels library loads: codelib's runtime hook calls `make`), as is
`i64 dynvm_pool_threads()`, the calling thread's count. Kernels emit the calls with llvm_util's
`parallel_for` / `kernel_threads`; this module is runtime only (no code generator).

Contract of `i32 dynvm_parallel_for(ptr fn, ptr ctx, i64 n)`, fn being
`i32 fn(ptr ctx, i64 lo, i64 hi)` (its result is ignored: kernels validate before they split):
- With one thread (the calling thread's count is 1, n <= 1, or the pool is in use by another
  caller) it makes exactly one call, fn(ctx, 0, n), on the calling thread: a kernel's chunk
  loop then runs in its usual order, as if there were no pool.
- Otherwise it publishes the job, wakes the workers and takes part itself: every participant
  claims one chunk at a time from a shared counter (so a descheduled worker never holds up the
  others: on a loaded machine the caller simply does more chunks) and calls fn(ctx, c, c + 1).
  It returns when every chunk has finished; a worker that wakes after the caller claimed the
  last chunk does nothing, and the caller does not wait for it (no wake-up tail).
- Waiting polls first: a worker polls for the next job for SPIN_CYCLES after one, the caller
  as long for the last running chunks, and only then sleeps (no futex wake-up between a
  model's back-to-back kernels; an idle pool sleeps).
- One job at a time: a second caller (another VM on another Python thread) that finds the pool
  busy runs its chunks alone, on its own thread, as above.

Thread count: per calling OS thread, a pthread thread-specific value (`use_threads`; the VM
sets it per invoke, so VMs with different counts on different threads never disturb each
other); unset means `default_threads()`, the cores this process may run on. Workers are
started on first need, up to count - 1 (at most MAX_WORKERS), live as long as the process,
block every signal (Python handles signals on the main thread) and sleep on a condition
variable between jobs (after polling for SPIN_CYCLES): an idle pool uses no CPU. After fork() the child starts its own workers.

The job's chunk counter holds the job's generation in its high 32 bits, so a worker that read
an older job can never claim a chunk of a newer one.
"""
import os
import threading

import cffi

from dynvm.kernels import codelib

MAX_WORKERS = 63
# How long a worker polls for the next job after one (and the caller for its workers' last
# chunks) before sleeping on the condition variable, in time-stamp counter cycles (about 60 us
# at 3 GHz). A model's parallel kernels follow each other within microseconds, so the worker
# is still polling when the next one comes: no futex wake-up (several microseconds on a virtual
# machine) per kernel; between invocations it sleeps after that long.
SPIN_CYCLES = 180_000

_IR = r"""
@mutex = internal global [64 x i8] zeroinitializer, align 16     ; glibc's initialisers are 0
@work_cond = internal global [64 x i8] zeroinitializer, align 16
@done_cond = internal global [64 x i8] zeroinitializer, align 16
@busy = internal global i32 0
@pid = internal global i32 0
@workers = global i64 0
@dynvm_pool_key = global i32 0
@dynvm_pool_default = global i64 1
@job_gen = internal global i64 0
@job_fn = internal global ptr null
@job_ctx = internal global ptr null
@job_n = internal global i64 0
@job_helpers = internal global i64 0
@job_claim = internal global i64 0      ; (generation << 32) | next chunk
@job_done = internal global i64 0       ; chunks finished

declare i32 @pthread_mutex_lock(ptr)
declare i32 @pthread_mutex_unlock(ptr)
declare i32 @pthread_cond_wait(ptr, ptr)
declare i32 @pthread_cond_broadcast(ptr)
declare i32 @pthread_create(ptr, ptr, ptr, ptr)
declare i32 @pthread_detach(i64)
declare ptr @pthread_getspecific(i32)
declare i32 @pthread_sigmask(i32, ptr, ptr)
declare i32 @getpid()
declare void @llvm.memset.p0.i64(ptr, i8, i64, i1)
declare i64 @llvm.readcyclecounter()
declare void @llvm.x86.sse2.pause()

define internal void @run_chunks(ptr %fn, ptr %ctx, i64 %n, i64 %gen) {
entry:
  br label %loop
loop:
  %w = load atomic i64, ptr @job_claim acquire, align 8
  %wg = lshr i64 %w, 32
  %idx = and i64 %w, 4294967295
  %same = icmp eq i64 %wg, %gen
  %left = icmp ult i64 %idx, %n
  %ok = and i1 %same, %left
  br i1 %ok, label %try, label %out
try:
  %w1 = add i64 %w, 1
  %r = cmpxchg ptr @job_claim, i64 %w, i64 %w1 acq_rel acquire
  %got = extractvalue {i64, i1} %r, 1
  br i1 %got, label %work, label %loop
work:
  %hi = add i64 %idx, 1
  %ignored = call i32 %fn(ptr %ctx, i64 %idx, i64 %hi)
  %d = atomicrmw add ptr @job_done, i64 1 acq_rel
  %d1 = add i64 %d, 1
  %fin = icmp eq i64 %d1, %n
  br i1 %fin, label %signal, label %loop
signal:
  call i32 @pthread_mutex_lock(ptr @mutex)
  call i32 @pthread_cond_broadcast(ptr @done_cond)
  call i32 @pthread_mutex_unlock(ptr @mutex)
  br label %loop
out:
  ret void
}

; arg = (job generation when started << 16) | worker index
define internal ptr @worker(ptr %arg) {
entry:
  %set = alloca [128 x i8], align 8
  call void @llvm.memset.p0.i64(ptr %set, i8 -1, i64 128, i1 false)
  call i32 @pthread_sigmask(i32 0, ptr %set, ptr null)
  %a = ptrtoint ptr %arg to i64
  %index = and i64 %a, 65535
  %seen0 = lshr i64 %a, 16
  br label %next
next:
  %seen = phi i64 [ %seen0, %entry ], [ %g, %again ]
  br label %spin
SPIN_FOR_JOB
WAIT_FOR_JOB
take:
  %fn = load ptr, ptr @job_fn
  %ctx = load ptr, ptr @job_ctx
  %n = load i64, ptr @job_n
  %helpers = load i64, ptr @job_helpers
  call i32 @pthread_mutex_unlock(ptr @mutex)
  %mine = icmp ult i64 %index, %helpers
  br i1 %mine, label %run, label %again
run:
  %g32 = and i64 %g, 4294967295
  call void @run_chunks(ptr %fn, ptr %ctx, i64 %n, i64 %g32)
  br label %again
again:
  br label %next
}

define i64 @dynvm_pool_threads() {
  %key = load i32, ptr @dynvm_pool_key
  %v = call ptr @pthread_getspecific(i32 %key)
  %t = ptrtoint ptr %v to i64
  %unset = icmp eq i64 %t, 0
  %default = load i64, ptr @dynvm_pool_default
  %r = select i1 %unset, i64 %default, i64 %t
  ret i64 %r
}

; start workers until there are `want`; returns how many there are
define internal i64 @spawn(i64 %want) {
entry:
  %tid = alloca i64
  %p = call i32 @getpid()
  %old = load i32, ptr @pid
  %forked = icmp ne i32 %p, %old
  br i1 %forked, label %reset, label %loop
reset:                              ; a new process (or the first call): no workers yet
  call void @llvm.memset.p0.i64(ptr @mutex, i8 0, i64 64, i1 false)
  call void @llvm.memset.p0.i64(ptr @work_cond, i8 0, i64 64, i1 false)
  call void @llvm.memset.p0.i64(ptr @done_cond, i8 0, i64 64, i1 false)
  store i64 0, ptr @workers
  store i32 %p, ptr @pid
  br label %loop
loop:
  %have = load i64, ptr @workers
  %enough = icmp uge i64 %have, %want
  br i1 %enough, label %out, label %start
start:
  %gen = load i64, ptr @job_gen
  %tag = shl i64 %gen, 16
  %packed = or i64 %tag, %have
  %arg = inttoptr i64 %packed to ptr
  %rc = call i32 @pthread_create(ptr %tid, ptr null, ptr @worker, ptr %arg)
  %failed = icmp ne i32 %rc, 0
  br i1 %failed, label %out, label %started
started:
  %t = load i64, ptr %tid
  call i32 @pthread_detach(i64 %t)
  %have1 = add i64 %have, 1
  store i64 %have1, ptr @workers
  br label %loop
out:
  %n = load i64, ptr @workers
  ret i64 %n
}

define i32 @dynvm_parallel_for(ptr %fn, ptr %ctx, i64 %n) {
entry:
  %threads = call i64 @dynvm_pool_threads()
  %one = icmp sle i64 %threads, 1
  %small = icmp sle i64 %n, 1
  %alone = or i1 %one, %small
  br i1 %alone, label %serial, label %claim
serial:
  call i32 %fn(ptr %ctx, i64 0, i64 %n)
  ret i32 0
claim:
  %r = cmpxchg ptr @busy, i32 0, i32 1 acquire monotonic
  %got = extractvalue {i32, i1} %r, 1
  br i1 %got, label %owned, label %serial
owned:
  %t1 = sub i64 %threads, 1
  %n1 = sub i64 %n, 1
  %c1 = icmp ult i64 %t1, %n1
  %w0 = select i1 %c1, i64 %t1, i64 %n1
  %c2 = icmp ult i64 %w0, MAX_WORKERS
  %want = select i1 %c2, i64 %w0, i64 MAX_WORKERS
  %have = call i64 @spawn(i64 %want)
  %c3 = icmp ult i64 %want, %have
  %helpers = select i1 %c3, i64 %want, i64 %have
  call i32 @pthread_mutex_lock(ptr @mutex)
  %g0 = load i64, ptr @job_gen
  %g = add i64 %g0, 1
  store ptr %fn, ptr @job_fn
  store ptr %ctx, ptr @job_ctx
  store i64 %n, ptr @job_n
  store i64 %helpers, ptr @job_helpers
  store atomic i64 0, ptr @job_done release, align 8
  %g32 = and i64 %g, 4294967295
  %w = shl i64 %g32, 32
  store atomic i64 %w, ptr @job_claim release, align 8
  store atomic i64 %g, ptr @job_gen release, align 8
  call i32 @pthread_cond_broadcast(ptr @work_cond)
  call i32 @pthread_mutex_unlock(ptr @mutex)
  call void @run_chunks(ptr %fn, ptr %ctx, i64 %n, i64 %g32)
  %d = load atomic i64, ptr @job_done acquire, align 8
  %finished = icmp uge i64 %d, %n
  br i1 %finished, label %release, label %spin
SPIN_FOR_DONE
WAIT_FOR_DONE
unlock:
  call i32 @pthread_mutex_unlock(ptr @mutex)
  br label %release
release:
  store atomic i32 0, ptr @busy release, align 4
  ret i32 0
}
"""


def _spin_until(label, test, then, otherwise):
    """IR blocks from `label`: poll `test` (IR lines defining %<label>.ok, no lock held) with a
    pause between polls for up to SPIN_CYCLES time-stamp counter cycles, then branch to `then`
    if it held, else to `otherwise` (the sleeping wait, which tests again under the lock)."""
    lines = "\n  ".join(test)
    return f"""{label}:
  %{label}.t0 = call i64 @llvm.readcyclecounter()
  br label %{label}.test
{label}.test:
  {lines}
  br i1 %{label}.ok, label %{then}, label %{label}.pause
{label}.pause:
  call void @llvm.x86.sse2.pause()
  %{label}.t = call i64 @llvm.readcyclecounter()
  %{label}.spent = sub i64 %{label}.t, %{label}.t0
  %{label}.more = icmp ult i64 %{label}.spent, SPIN_CYCLES
  br i1 %{label}.more, label %{label}.test, label %{otherwise}"""


def _wait_until(label, test, cond, then):
    """IR blocks from `label`: lock the mutex, then until `test` (IR lines defining %<label>.ok)
    holds, sleep on `cond` (the wait releases the mutex and takes it again before the test
    runs again); then branch to `then` with the mutex held. The worker waiting for a job and
    the caller waiting for its last chunk are both this loop."""
    lines = "\n  ".join(test)
    return f"""{label}:
  call i32 @pthread_mutex_lock(ptr @mutex)
  br label %{label}.test
{label}.test:
  {lines}
  br i1 %{label}.ok, label %{then}, label %{label}.sleep
{label}.sleep:
  call i32 @pthread_cond_wait(ptr @{cond}, ptr @mutex)
  br label %{label}.test"""


_IR = (_IR.replace("SPIN_FOR_JOB", _spin_until("spin", ["%gs = load atomic i64, ptr @job_gen "
                                                      "acquire, align 8",
                                                      "%spin.ok = icmp ne i64 %gs, %seen"],
                                             "wait", "wait"))
       .replace("SPIN_FOR_DONE", _spin_until("spin", ["%d1 = load atomic i64, ptr @job_done "
                                                       "acquire, align 8",
                                                       "%spin.ok = icmp uge i64 %d1, %n"],
                                              "release", "wait"))
       .replace("SPIN_CYCLES", str(SPIN_CYCLES))
       .replace("MAX_WORKERS", str(MAX_WORKERS))
       .replace("WAIT_FOR_JOB", _wait_until("wait", ["%g = load i64, ptr @job_gen",
                                                     "%wait.ok = icmp ne i64 %g, %seen"],
                                            "work_cond", "take"))
       .replace("WAIT_FOR_DONE", _wait_until("wait", ["%d2 = load atomic i64, ptr @job_done "
                                                      "acquire, align 8",
                                                      "%wait.ok = icmp uge i64 %d2, %n"],
                                             "done_cond", "unlock")))

_LIBC_SYMBOLS = ("pthread_mutex_lock", "pthread_mutex_unlock", "pthread_cond_wait",
                 "pthread_cond_broadcast", "pthread_create", "pthread_detach",
                 "pthread_getspecific", "pthread_sigmask", "getpid")

_ffi = cffi.FFI()
_ffi.cdef("""
int pthread_key_create(unsigned int *key, void *destructor);
int pthread_setspecific(unsigned int key, const void *value);
""")
_libc = _ffi.dlopen(None)
_state = None       # (library, key, the count's getter), once installed
_local = threading.local()      # the count this OS thread's value was last set to


def default_threads() -> int:
    """The cores this process may run on (what `threads` defaults to)."""
    return len(os.sched_getaffinity(0))


def install():
    """Make sure the pool exists and kernels can call it (codelib calls `make` once)."""
    codelib.install_runtime()


def make():
    """JIT the pool and register `dynvm_parallel_for` with the JIT's symbol table (once, under
    codelib's lock, before any kernels library loads)."""
    global _state
    if _state is None:
        codelib.register_process_symbols(_LIBC_SYMBOLS)
        host = codelib.host_target()
        library = codelib.CodeLibrary(_IR, codelib.compile_ir(_IR, host), host)
        key = _ffi.new("unsigned int *")
        if _libc.pthread_key_create(key, _ffi.NULL) != 0:
            raise OSError("pthread_key_create failed: no thread-specific key left")
        _global(library, "dynvm_pool_key", "uint32_t *")[0] = key[0]
        _global(library, "dynvm_pool_default", "int64_t *")[0] = default_threads()
        for symbol in ("dynvm_parallel_for", "dynvm_pool_threads"):
            codelib.add_symbol(symbol, library.address(symbol))
        threads = _ffi.cast("int64_t (*)(void)", library.address("dynvm_pool_threads"))
        _state = (library, key[0], threads, _global(library, "workers", "int64_t *"))


def _global(library, name, ctype):
    return _ffi.cast(ctype, library.global_address(name))


def use_threads(n: int):
    """Kernels called from this OS thread run on up to `n` threads (n >= 1) from now on."""
    if getattr(_local, "threads", None) == n:
        return
    install()
    _libc.pthread_setspecific(_state[1], _ffi.cast("void *", n))
    _local.threads = n


def current_threads() -> int:
    """The thread count kernels called from this OS thread use."""
    install()
    return int(_state[2]())


def started_workers() -> int:
    """Worker threads started so far in this process (a test hook)."""
    install()
    return int(_state[3][0])
