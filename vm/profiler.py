"""The VM profiler: what ran, which kernel variant, and where the time went.

Profiling is hooks set up when code is prepared, not separate handlers: with
`VirtualMachine(exe, profile=True)` every instruction handler runs inside `Profile.timed` (count
and time per opcode), every kernel entry point inside `Profile.kernel_timer` (each native call
timed on its own, reading the dispatcher's `S__variant` global after the call to learn which
variant ran) and every shape function inside `Profile.shape_func_counter` (how often it really
ran: memoised results do not count). The unprofiled VM runs the plain handlers: profiling off
costs nothing. The VM's own cost is handler time minus native kernel time. `StaticRuntime`
uses the same timers around its kernel calls.
"""
from __future__ import annotations

import functools
import json
import time
from collections import Counter, defaultdict

MAX_EVENTS = 1_000_000  # trace events kept (counts and times keep accumulating past it)


class Profile:
    """Counts and times of one VM's instructions and kernel calls (all invocations so far)."""

    def __init__(self):
        self.opcodes = Counter()                 # opcode name -> executed count
        self.opcode_seconds = defaultdict(float)  # opcode name -> handler time incl. kernels
        self.kernels = {}                        # (kernel name, variant) -> [calls, seconds]
        self.events = []                         # (label, start seconds, duration seconds)
        self.dropped_events = 0
        self.loop_iterations = Counter()         # native loop kernel name -> iterations run
        self.loop_seconds = 0.0                  # native time of CallLoop (kernels/loop.py)
        self.shape_func_calls = Counter()        # shape function name -> times it ran
        self.origin = time.perf_counter()

    # ------------------------------------------------------------ hooks (set up at preparation)

    def timed(self, name, handler):
        """`handler` counting itself as opcode `name` and adding its time."""
        counts, seconds, clock = self.opcodes, self.opcode_seconds, time.perf_counter

        @functools.wraps(handler)
        def timed(*args):
            t0 = clock()
            try:
                return handler(*args)
            finally:
                seconds[name] += clock() - t0
                counts[name] += 1
        return timed

    def kernel_timer(self, kernel, fn):
        """A kernel entry point `fn(tensors, nargs) -> rc` recording each call (its native time
        and the variant that ran) as `kernel`'s."""
        clock, record = time.perf_counter, self.record_kernel

        def timed_kernel(tensors, nargs):
            t0 = clock()
            rc = fn(tensors, nargs)
            if not rc:      # a failed call raises; it is not recorded
                record(kernel.name, kernel.last_variant, t0, clock() - t0)
            return rc
        return timed_kernel

    def shape_func_counter(self, name, fn):
        """A shape function counting its runs under `name`."""
        counts = self.shape_func_calls

        def counted(*args):
            counts[name] += 1
            return fn(*args)
        return counted

    # ------------------------------------------------------------ recording (VM side)

    def record_kernel(self, name, variant, start, seconds):
        entry = self.kernels.get((name, variant))
        if entry is None:
            entry = self.kernels[(name, variant)] = [0, 0.0]
        entry[0] += 1
        entry[1] += seconds
        if len(self.events) < MAX_EVENTS:
            self.events.append((f"{name}[{variant}]", start, seconds))
        else:
            self.dropped_events += 1

    def record_loop(self, name, start, seconds, iterations):
        """One CallLoop: a native loop kernel that ran `iterations` iterations (the instruction
        itself is counted and timed by `timed`, like every other)."""
        self.record_kernel(name, "native", start, seconds)
        self.loop_iterations[name] += iterations
        self.loop_seconds += seconds

    # ------------------------------------------------------------ reading

    def kernel_stats(self) -> dict:
        """{kernel: {"calls", "seconds", "variants": {variant: {"calls", "seconds"}}}}."""
        out = {}
        for (name, variant), (calls, seconds) in sorted(self.kernels.items()):
            k = out.setdefault(name, {"calls": 0, "seconds": 0.0, "variants": {}})
            k["calls"] += calls
            k["seconds"] += seconds
            k["variants"][variant] = {"calls": calls, "seconds": seconds}
        return out

    @property
    def kernel_seconds(self) -> float:
        return sum(s for _, s in self.kernels.values())

    @property
    def vm_seconds(self) -> float:
        """Time spent in instruction handlers outside native kernel code."""
        return sum(self.opcode_seconds.values()) - self.kernel_seconds

    def kernel_instruction_overhead(self) -> float:
        """Seconds of VM work per CallKernel instruction (handler time minus native time)."""
        calls = self.opcodes.get("CallKernel", 0)
        if not calls:
            return 0.0
        return (self.opcode_seconds["CallKernel"] - (self.kernel_seconds - self.loop_seconds)) / calls

    def __getitem__(self, key):
        """Dict-style access: profile["opcodes"] (counts), profile["kernels"] (kernel_stats)."""
        if key == "opcodes":
            return dict(self.opcodes)
        if key == "kernels":
            return self.kernel_stats()
        raise KeyError(key)

    def to_chrome_trace(self) -> dict:
        """Chrome trace-event JSON: one complete ("X") event per executed kernel, times in us."""
        events = [{"name": label, "cat": "kernel", "ph": "X", "pid": 1, "tid": 1,
                   "ts": round((start - self.origin) * 1e6, 3), "dur": round(seconds * 1e6, 3),
                   "args": {"kernel": label.split("[")[0], "variant": label[label.index("[") + 1:-1]}}
                  for label, start, seconds in self.events]
        return {"traceEvents": events, "displayTimeUnit": "ns",
                "otherData": {"dropped_events": self.dropped_events}}

    def save_chrome_trace(self, path) -> None:
        """Write the trace for chrome://tracing or https://ui.perfetto.dev."""
        with open(path, "w") as f:
            json.dump(self.to_chrome_trace(), f)

    def __str__(self):
        lines = [f"{'kernel [variant]':40} {'calls':>9} {'total ms':>10} {'mean us':>9}"]
        for (name, variant), (calls, seconds) in sorted(self.kernels.items(), key=lambda kv: -kv[1][1]):
            lines.append(f"{name + ' [' + variant + ']':40} {calls:>9} {seconds * 1e3:>10.3f} "
                         f"{seconds / calls * 1e6:>9.2f}")
        lines.append("")
        lines.append(f"{'instruction':40} {'count':>9} {'total ms':>10} {'mean us':>9}")
        for op, count in self.opcodes.most_common():
            seconds = self.opcode_seconds[op]
            lines.append(f"{op:40} {count:>9} {seconds * 1e3:>10.3f} {seconds / count * 1e6:>9.2f}")
        lines.append("")
        lines.append(f"kernel time {self.kernel_seconds * 1e3:.3f} ms, VM overhead "
                     f"{self.vm_seconds * 1e3:.3f} ms, VM cost per kernel instruction "
                     f"{self.kernel_instruction_overhead() * 1e6:.2f} us "
                     "(handler time includes the profiler's own timer calls)")
        return "\n".join(lines)

    def __repr__(self):
        return f"<Profile {sum(self.opcodes.values())} instructions, {len(self.events)} kernel events>"
