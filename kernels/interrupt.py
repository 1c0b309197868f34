"""Ctrl-C for native code: one process-wide interrupt word that native loops poll.

Python handles SIGINT in two steps: its C handler only records the signal, and the
interpreter raises KeyboardInterrupt at its next check, which a long native call never
reaches. So the main thread's native loops poll a word in JIT memory (an int32, one load per
iteration) that a tiny JIT-compiled C handler sets: it runs the handler it replaced (Python's
own C handler, which records the signal as before) and then sets the word. A loop that sees the
word set returns ERR_INTERRUPT (kernels/abi.py); the VM then lets Python's handler run, which
raises KeyboardInterrupt (or, if a Python handler that does not raise is installed, raises
KeyboardInterrupt itself: the invocation ended early either way).

The handler is installed lazily, by `armed_word()` on the first native loop in the main thread,
and again whenever the installed handler is no longer ours (Python's `signal.signal` replaced
it). It is never installed over SIG_DFL, SIG_IGN or a three-argument (SA_SIGINFO) handler:
with those, native loops run without the word (Ctrl-C then does what that disposition does).
Other threads get `QUIET_WORD`, which nothing sets: Python delivers signals to the main thread.
Linux only (the `struct sigaction` layout below is glibc's); elsewhere every loop gets the
quiet word. Native code of any tier may poll the same word: `word_address()`.
"""
import sys
import threading

import cffi
import numpy as np

from dynvm.kernels.codelib import CodeLibrary, compile_ir, host_target

SIGINT, SA_SIGINFO = 2, 4
SIG_DFL, SIG_IGN = 0, 1

_IR = r"""
@dynvm_interrupt = global i32 0
@dynvm_sigint_previous = global ptr null

define void @dynvm_sigint(i32 %sig) {
  %previous = load ptr, ptr @dynvm_sigint_previous
  call void %previous(i32 %sig)
  store volatile i32 1, ptr @dynvm_interrupt
  ret void
}
"""

_ffi = cffi.FFI()
_ffi.cdef("""
typedef struct {            /* glibc's struct sigaction (x86-64, aarch64) */
    uintptr_t handler;
    unsigned long mask[16];
    int flags;
    uintptr_t restorer;
} dynvm_sigaction_t;
int sigaction(int signum, const dynvm_sigaction_t *act, dynvm_sigaction_t *oldact);
""")

_sigaction = _ffi.dlopen(None).sigaction
_CURRENT = _ffi.new("dynvm_sigaction_t *")     # what the main thread's query fills
_MAIN_THREAD = threading.main_thread().ident
_LINUX = sys.platform == "linux"
QUIET_WORD = np.zeros((), np.int32)      # the word of loops nothing interrupts
QUIET_WORD.setflags(write=False)

_lock = threading.Lock()
_state = None      # (library, handler address, word array, previous-handler array), once made


def _make():
    """JIT the handler and map its two globals (the word, the previous handler) as arrays."""
    host = host_target()
    library = CodeLibrary(_IR, compile_ir(_IR, host), host)

    def global_array(name, dtype):
        address = library.global_address(name)
        return np.frombuffer(_ffi.buffer(_ffi.cast("char *", address), np.dtype(dtype).itemsize),
                             dtype).reshape(())
    return (library, library.address("dynvm_sigint"), global_array("dynvm_interrupt", np.int32),
            global_array("dynvm_sigint_previous", np.uintp))


def word_address() -> int:
    """Address of the interrupt word (int32, nonzero: stop; the VM clears it)."""
    return _made()[2].__array_interface__["data"][0]


def _made():
    global _state
    if _state is None:
        with _lock:
            if _state is None:
                _state = _make()
    return _state


def armed_word() -> np.ndarray:
    """The word a native loop in this thread polls, cleared: in the main thread (on Linux),
    the interrupt word with our SIGINT handler installed in front of the current one;
    elsewhere QUIET_WORD."""
    if threading.get_ident() != _MAIN_THREAD or not _LINUX:
        return QUIET_WORD
    _, handler, word, previous = _made()
    current = _CURRENT      # only the main thread gets here
    _sigaction(SIGINT, _ffi.NULL, current)
    if current.handler != handler:
        if current.handler in (SIG_DFL, SIG_IGN) or current.flags & SA_SIGINFO:
            return QUIET_WORD
        previous[()] = current.handler          # set before ours can run
        ours = _ffi.new("dynvm_sigaction_t *", current[0])
        ours.handler = handler
        _sigaction(SIGINT, ours, _ffi.NULL)
    word[()] = 0
    return word


def let_signal_handlers_run():
    """Nothing: calling a Python function is a point where the interpreter runs the signal
    handlers of signals that arrived (Python's SIGINT handler raises KeyboardInterrupt)."""
