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
- Otherwise it publishes the job and takes part itself. The chunks are cut into one
  contiguous *home range* per participant (the caller first, then the helping workers):
  each participant claims its own range's chunks one at a time from its own counter (a cache
  line of its own, so claims cost no cross-core traffic), then what is left of the others'
  (a descheduled or late worker only does fewer chunks: on a loaded machine the caller simply
  does more), and adds the chunks it ran to the job's finished count once. It returns when
  every chunk has finished; a worker that wakes after the caller claimed the last chunk does
  nothing, and the caller does not wait for it (no wake-up tail). The same participant gets
  the same share of every job of the same size, so consecutive kernels over the same data
  find it in the core's own cache.
- Publishing is a seqlock write (the generation is odd while the job's fields are written, a
  polling worker reads them and checks the generation again) and wakes the workers through
  the condition variable only when some sleep: a polling worker never touches the mutex. A
  cross-core cache-line transfer costs 150-250 ns on the 2-vCPU virtual machines this was
  measured on, so a job costs about four of them (the job, the worker's counter, the finished
  count, the caller's read of it): 0.8 us for an empty job.
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
variable between jobs (after polling for SPIN_CYCLES): an idle pool uses no CPU. After fork()
the child starts its own workers.

Every counter holds the job's tag (its generation / 2) in its high 32 bits, so a worker that
read an older job can never claim a chunk of a newer one.
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
@mutex = internal global [64 x i8] zeroinitializer, align 64     ; glibc's initialisers are 0
@work_cond = internal global [64 x i8] zeroinitializer, align 64
@done_cond = internal global [64 x i8] zeroinitializer, align 64
@busy = internal global i32 0
@pid = internal global i32 0
@workers = global i64 0
@dynvm_pool_key = global i32 0
@dynvm_pool_default = global i64 1
; the published job, one cache line: generation (odd while the caller writes the job), fn,
; ctx, chunk count, participants (the caller and its helping workers)
%job = type { i64, ptr, ptr, i64, i64 }
@job = internal global %job zeroinitializer, align 64
; participant p's claim word, a cache line each: (tag << 32) | next chunk of its home range
@slots = internal global [MAX_PARTS x [8 x i64]] zeroinitializer, align 64
@done = internal global [8 x i64] zeroinitializer, align 64       ; chunks finished
@sleepers = internal global [8 x i64] zeroinitializer, align 64   ; workers on work_cond
@caller_waits = internal global [8 x i64] zeroinitializer, align 64  ; caller on done_cond

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

define internal ptr @slot(i64 %p) {
  %s = getelementptr [MAX_PARTS x [8 x i64]], ptr @slots, i64 0, i64 %p, i64 0
  ret ptr %s
}

; the first chunk of participant p's home range (p == parts: the end of the last range)
define internal i64 @home(i64 %p, i64 %n, i64 %parts) {
  %x = mul i64 %p, %n
  %h = udiv i64 %x, %parts
  ret i64 %h
}

; broadcast %cond (under the mutex) if the count of its sleepers at %waiting is not 0
define internal void @wake_sleepers(ptr %waiting, ptr %cond) {
entry:
  %n = load atomic i64, ptr %waiting seq_cst, align 8
  %any = icmp ne i64 %n, 0
  br i1 %any, label %wake, label %out
wake:
  call i32 @pthread_mutex_lock(ptr @mutex)
  call i32 @pthread_cond_broadcast(ptr %cond)
  call i32 @pthread_mutex_unlock(ptr @mutex)
  br label %out
out:
  ret void
}

; participant p of the job tagged %tag: its own home range first, then what is left of the
; others' (a late or descheduled participant only does fewer chunks), one chunk per claim;
; then it adds the chunks it ran to @done once and wakes the caller if it sleeps on the last
define internal void @run_chunks(ptr %fn, ptr %ctx, i64 %n, i64 %parts, i64 %tag, i64 %p) {
entry:
  br label %range
range:
  %k = phi i64 [ 0, %entry ], [ %k1, %next ]
  %count = phi i64 [ 0, %entry ], [ %count1, %next ]
  %more = icmp ult i64 %k, %parts
  br i1 %more, label %open, label %finish
open:
  %pk = add i64 %p, %k
  %s = urem i64 %pk, %parts
  %s1 = add i64 %s, 1
  %end = call i64 @home(i64 %s1, i64 %n, i64 %parts)
  %word = call ptr @slot(i64 %s)
  br label %claim
claim:
  %c = phi i64 [ %count, %open ], [ %c1, %work ], [ %c, %try ]
  %w = load atomic i64, ptr %word acquire, align 8
  %wtag = lshr i64 %w, 32
  %idx = and i64 %w, 4294967295
  %same = icmp eq i64 %wtag, %tag
  %left = icmp ult i64 %idx, %end
  %ok = and i1 %same, %left
  br i1 %ok, label %try, label %next
try:
  %w1 = add i64 %w, 1
  %r = cmpxchg ptr %word, i64 %w, i64 %w1 acq_rel acquire
  %got = extractvalue {i64, i1} %r, 1
  br i1 %got, label %work, label %claim
work:
  %hi = add i64 %idx, 1
  %ignored = call i32 %fn(ptr %ctx, i64 %idx, i64 %hi)
  %c1 = add i64 %c, 1
  br label %claim
next:
  %count1 = phi i64 [ %c, %claim ]
  %k1 = add i64 %k, 1
  br label %range
finish:
  %none = icmp eq i64 %count, 0
  br i1 %none, label %out, label %add
add:
  %d = atomicrmw add ptr @done, i64 %count seq_cst
  %d1 = add i64 %d, %count
  %last = icmp eq i64 %d1, %n
  br i1 %last, label %wake, label %out
wake:
  call void @wake_sleepers(ptr @caller_waits, ptr @done_cond)
  br label %out
out:
  ret void
}

; i1: %g is a published job other than %seen (even: not being written)
define internal i1 @is_new(i64 %g, i64 %seen) {
  %odd = and i64 %g, 1
  %even = icmp eq i64 %odd, 0
  %new = icmp ne i64 %g, %seen
  %ok = and i1 %even, %new
  ret i1 %ok
}

; one pause between polls; i1: polling began at %t0 less than SPIN_CYCLES ago
define internal i1 @poll_on(i64 %t0) {
  call void @llvm.x86.sse2.pause()
  %t = call i64 @llvm.readcyclecounter()
  %spent = sub i64 %t, %t0
  %more = icmp ult i64 %spent, SPIN_CYCLES
  ret i1 %more
}

; a new job's generation, polling up to SPIN_CYCLES; %seen if none came
define internal i64 @poll_job(i64 %seen) {
entry:
  %t0 = call i64 @llvm.readcyclecounter()
  br label %test
test:
  %g = load atomic i64, ptr @job acquire, align 8
  %ok = call i1 @is_new(i64 %g, i64 %seen)
  br i1 %ok, label %found, label %pause
pause:
  %more = call i1 @poll_on(i64 %t0)
  br i1 %more, label %test, label %none
found:
  ret i64 %g
none:
  ret i64 %seen
}

; sleep on work_cond until a new job is published (the caller wakes only counted sleepers:
; the count and the generation are both seq_cst, so either it sees this sleeper or this
; sleeper sees its job)
define internal i64 @sleep_for_job(i64 %seen) {
entry:
  call i32 @pthread_mutex_lock(ptr @mutex)
  atomicrmw add ptr @sleepers, i64 1 seq_cst
  br label %test
test:
  %g = load atomic i64, ptr @job seq_cst, align 8
  %ok = call i1 @is_new(i64 %g, i64 %seen)
  br i1 %ok, label %found, label %sleep
sleep:
  call i32 @pthread_cond_wait(ptr @work_cond, ptr @mutex)
  br label %test
found:
  atomicrmw sub ptr @sleepers, i64 1 seq_cst
  call i32 @pthread_mutex_unlock(ptr @mutex)
  ret i64 %g
}

; arg = (job generation when started << 16) | worker index
define internal ptr @worker(ptr %arg) {
entry:
  %set = alloca [128 x i8], align 8
  call void @llvm.memset.p0.i64(ptr %set, i8 -1, i64 128, i1 false)
  call i32 @pthread_sigmask(i32 0, ptr %set, ptr null)
  %a = ptrtoint ptr %arg to i64
  %index = and i64 %a, 65535
  %p = add i64 %index, 1
  %seen0 = lshr i64 %a, 16
  br label %next
next:
  %seen = phi i64 [ %seen0, %entry ], [ %g, %read ], [ %g, %take ], [ %g, %run ]
  %g1 = call i64 @poll_job(i64 %seen)
  %polled = icmp ne i64 %g1, %seen
  br i1 %polled, label %read, label %sleep
sleep:
  %g2 = call i64 @sleep_for_job(i64 %seen)
  br label %read
read:                       ; the job's fields, then the generation again (a seqlock read)
  %g = phi i64 [ %g1, %next ], [ %g2, %sleep ]
  %fnp = getelementptr %job, ptr @job, i64 0, i32 1
  %ctxp = getelementptr %job, ptr @job, i64 0, i32 2
  %np = getelementptr %job, ptr @job, i64 0, i32 3
  %partsp = getelementptr %job, ptr @job, i64 0, i32 4
  %fn = load atomic ptr, ptr %fnp monotonic, align 8
  %ctx = load atomic ptr, ptr %ctxp monotonic, align 8
  %n = load atomic i64, ptr %np monotonic, align 8
  %parts = load atomic i64, ptr %partsp monotonic, align 8
  fence acquire
  %again = load atomic i64, ptr @job monotonic, align 8
  %intact = icmp eq i64 %again, %g
  br i1 %intact, label %take, label %next    ; rewritten: that job has finished already
take:
  %mine = icmp ult i64 %p, %parts
  br i1 %mine, label %run, label %next
run:
  %tag = call i64 @tag(i64 %g)
  call void @run_chunks(ptr %fn, ptr %ctx, i64 %n, i64 %parts, i64 %tag, i64 %p)
  br label %next
}

define internal i64 @tag(i64 %gen) {
  %h = lshr i64 %gen, 1
  %t = and i64 %h, 4294967295
  ret i64 %t
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
  store i64 0, ptr @sleepers
  store i64 0, ptr @caller_waits
  store i32 %p, ptr @pid
  br label %loop
loop:
  %have = load i64, ptr @workers
  %enough = icmp uge i64 %have, %want
  br i1 %enough, label %out, label %start
start:
  %gen = load i64, ptr @job
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

; publish a job for `parts` participants (a seqlock write: odd generation, fields, home
; ranges, finished count, even generation), then wake the workers only if some sleep
define internal i64 @publish(ptr %fn, ptr %ctx, i64 %n, i64 %parts) {
entry:
  %g0 = load atomic i64, ptr @job monotonic, align 8
  %odd = add i64 %g0, 1
  store atomic i64 %odd, ptr @job monotonic, align 8
  fence release
  %fnp = getelementptr %job, ptr @job, i64 0, i32 1
  %ctxp = getelementptr %job, ptr @job, i64 0, i32 2
  %np = getelementptr %job, ptr @job, i64 0, i32 3
  %partsp = getelementptr %job, ptr @job, i64 0, i32 4
  store atomic ptr %fn, ptr %fnp monotonic, align 8
  store atomic ptr %ctx, ptr %ctxp monotonic, align 8
  store atomic i64 %n, ptr %np monotonic, align 8
  store atomic i64 %parts, ptr %partsp monotonic, align 8
  %g = add i64 %g0, 2
  %tag = call i64 @tag(i64 %g)
  %high = shl i64 %tag, 32
  br label %ranges
ranges:
  %s = phi i64 [ 0, %entry ], [ %s1, %ranges ]
  %first = call i64 @home(i64 %s, i64 %n, i64 %parts)
  %w = or i64 %high, %first
  %word = call ptr @slot(i64 %s)
  store atomic i64 %w, ptr %word monotonic, align 8
  %s1 = add i64 %s, 1
  %more = icmp ult i64 %s1, %parts
  br i1 %more, label %ranges, label %go
go:
  store atomic i64 0, ptr @done monotonic, align 8
  store atomic i64 %g, ptr @job seq_cst, align 8
  call void @wake_sleepers(ptr @sleepers, ptr @work_cond)
  ret i64 %tag
}

; the caller waits for its workers' last chunks: polling up to SPIN_CYCLES, then asleep on
; done_cond (woken by the participant that finishes the last chunk if it sees the flag)
define internal void @wait_done(i64 %n) {
entry:
  %t0 = call i64 @llvm.readcyclecounter()
  br label %test
test:
  %d = load atomic i64, ptr @done acquire, align 8
  %finished = icmp uge i64 %d, %n
  br i1 %finished, label %out, label %pause
pause:
  %more = call i1 @poll_on(i64 %t0)
  br i1 %more, label %test, label %lock
lock:
  call i32 @pthread_mutex_lock(ptr @mutex)
  store atomic i64 1, ptr @caller_waits seq_cst, align 8
  br label %check
check:
  %d2 = load atomic i64, ptr @done seq_cst, align 8
  %finished2 = icmp uge i64 %d2, %n
  br i1 %finished2, label %unlock, label %sleep
sleep:
  call i32 @pthread_cond_wait(ptr @done_cond, ptr @mutex)
  br label %check
unlock:
  store atomic i64 0, ptr @caller_waits seq_cst, align 8
  call i32 @pthread_mutex_unlock(ptr @mutex)
  br label %out
out:
  ret void
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
  %parts = add i64 %helpers, 1
  %tag = call i64 @publish(ptr %fn, ptr %ctx, i64 %n, i64 %parts)
  call void @run_chunks(ptr %fn, ptr %ctx, i64 %n, i64 %parts, i64 %tag, i64 0)
  call void @wait_done(i64 %n)
  store atomic i32 0, ptr @busy release, align 4
  ret i32 0
}
"""
_IR = (_IR.replace("SPIN_CYCLES", str(SPIN_CYCLES)).replace("MAX_WORKERS", str(MAX_WORKERS))
       .replace("MAX_PARTS", str(MAX_WORKERS + 1)))

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
