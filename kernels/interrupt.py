"""Ctrl-C for native code: one process-wide interrupt word that native loops poll.

Python handles SIGINT in two steps: its C handler only records the signal, and the
interpreter raises KeyboardInterrupt at its next check, which a long native call never
reaches. So the main thread's native loops poll a word in JIT memory (an int32, one load per
iteration) that a tiny JIT-compiled C handler sets: it runs the handler it replaced (Python's
own C handler, which records the signal as before) and then sets the word. A loop that sees the
word set returns ERR_INTERRUPT (kernels/abi.py); the VM then lets Python's handler run, which
raises KeyboardInterrupt (or, if a Python handler that does not raise is installed, raises
KeyboardInterrupt itself: the invocation ended early either way).

The handler is installed lazily, when an invocation that may loop is armed in the main thread,
and again whenever the installed handler is no longer ours (Python's `signal.signal` replaced
it). It is never installed over SIG_DFL, SIG_IGN or a three-argument (SA_SIGINFO) handler:
with those, native loops run without the word (Ctrl-C then does what that disposition does).
Other threads get a quiet word, which nothing sets: Python delivers signals to the main thread.
Linux only (the `struct sigaction` layout below is glibc's); elsewhere every loop gets the
quiet word. Native code of any tier may poll the same word: `word_address()`.

Arming is itself JIT-compiled (`dynvm_arm`: one sigaction query, and an install when the
handler is not ours), so that the native tier's edge functions arm without a Python call; an
invocation pays one system call for it.
"""
import sys
import threading

import cffi
import numpy as np

from dynvm.kernels import codelib

_IR = r"""
@dynvm_interrupt = global i32 0
@dynvm_sigint_previous = global ptr null
@dynvm_main_thread = global i64 0

declare i64 @pthread_self()
declare i32 @sigaction(i32, ptr, ptr)

define void @dynvm_sigint(i32 %sig) {
  %previous = load ptr, ptr @dynvm_sigint_previous
  call void %previous(i32 %sig)
  store volatile i32 1, ptr @dynvm_interrupt
  ret void
}

; The address of the word the calling thread's invocation polls: in the main thread the
; interrupt word, cleared, with dynvm_sigint installed in front of the current handler (not
; over SIG_DFL, SIG_IGN or an SA_SIGINFO handler); else `quiet`.
define i64 @dynvm_arm(i64 %quiet) {
entry:
  %self = call i64 @pthread_self()
  %main = load i64, ptr @dynvm_main_thread
  %is_main = icmp eq i64 %self, %main
  br i1 %is_main, label %query, label %quiet_word
query:
  %act = alloca [19 x i64]
  %rc = call i32 @sigaction(i32 2, ptr null, ptr %act)
  %failed = icmp ne i32 %rc, 0
  br i1 %failed, label %quiet_word, label %queried
queried:
  %handler = load ptr, ptr %act
  %ours = icmp eq ptr %handler, @dynvm_sigint
  br i1 %ours, label %armed, label %other
other:
  %address = ptrtoint ptr %handler to i64
  %default_or_ignore = icmp ule i64 %address, 1
  %flags_at = getelementptr i8, ptr %act, i64 136
  %flags = load i32, ptr %flags_at
  %siginfo = and i32 %flags, 4
  %three_arguments = icmp ne i32 %siginfo, 0
  %leave = or i1 %default_or_ignore, %three_arguments
  br i1 %leave, label %quiet_word, label %install
install:
  store ptr %handler, ptr @dynvm_sigint_previous
  store ptr @dynvm_sigint, ptr %act
  %installed = call i32 @sigaction(i32 2, ptr %act, ptr null)
  br label %armed
armed:
  store volatile i32 0, ptr @dynvm_interrupt
  ret i64 ptrtoint (ptr @dynvm_interrupt to i64)
quiet_word:
  ret i64 %quiet
}
"""

_ffi = cffi.FFI()
_MAIN_THREAD = threading.main_thread().ident
_LINUX = sys.platform == "linux"
QUIET_WORD = np.zeros((), np.int32)      # the word of loops nothing interrupts
QUIET_WORD.setflags(write=False)
QUIET_ADDRESS = QUIET_WORD.__array_interface__["data"][0]

_lock = threading.Lock()
_state = None      # the _Interrupt, once made


class _Interrupt:
    """The JIT-compiled handler and arming function; the interrupt word as an array."""

    def __init__(self):
        codelib.register_process_symbols(("pthread_self", "sigaction"))
        host = codelib.host_target()
        self.library = codelib.CodeLibrary(_IR, codelib.compile_ir(_IR, host), host)
        self.word = self._global("dynvm_interrupt", np.int32)
        if _LINUX:          # elsewhere no thread is the main one: every invocation stays quiet
            self._global("dynvm_main_thread", np.uint64)[()] = _MAIN_THREAD
        self.arm_address = self.library.address("dynvm_arm")
        self.arm = _ffi.cast("int64_t (*)(int64_t)", self.arm_address)
        self.word_address = self.word.__array_interface__["data"][0]
        codelib.add_symbol("dynvm_arm", self.arm_address)

    def _global(self, name, dtype):
        address = self.library.global_address(name)
        return np.frombuffer(_ffi.buffer(_ffi.cast("char *", address), np.dtype(dtype).itemsize),
                             dtype).reshape(())


def word_address() -> int:
    """Address of the interrupt word (int32, nonzero: stop; the VM clears it)."""
    return _made().word_address


def _made() -> _Interrupt:
    global _state
    if _state is None:
        with _lock:
            if _state is None:
                _state = _Interrupt()
    return _state


def arm(quiet_address: int) -> int:
    """The address of the word an invocation in this thread polls, armed (`dynvm_arm`);
    `quiet_address` when nothing may set it here."""
    return _made().arm(quiet_address)


def register_arm():
    """Make `dynvm_arm` resolvable in every object loaded from now on (native code calls it)."""
    _made()


def armed_word() -> np.ndarray:
    """The word a native loop in this thread polls, cleared: in the main thread (on Linux),
    the interrupt word with our SIGINT handler installed in front of the current one;
    elsewhere QUIET_WORD."""
    state = _made()
    return state.word if state.arm(QUIET_ADDRESS) == state.word_address else QUIET_WORD


def let_signal_handlers_run():
    """Nothing: calling a Python function is a point where the interpreter runs the signal
    handlers of signals that arrived (Python's SIGINT handler raises KeyboardInterrupt)."""
