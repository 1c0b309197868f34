"""The storage allocator: size classes, pooling across invocations, ownership (a block comes
back only when nothing can reach it), memory_stats, one VM per thread. Numeric checks compare
with numpy exactly (the ops here are single IEEE operations per element, as in numpy)."""
import gc
import threading
import tracemalloc

import numpy as np
import pytest

from dynvm.compiler import build, ir, op
from dynvm.vm import VirtualMachine, VMError
from dynvm.vm.memory import StoragePool, size_class

STAT_KEYS = {"allocations", "bytes_allocated", "pool_hits", "peak_bytes_live", "bytes_live",
             "bytes_free"}


def byte_range(a: np.ndarray):
    start = a.__array_interface__["data"][0]
    return start, start + a.nbytes


def assert_disjoint(arrays):
    """No two non-empty arrays share a byte."""
    ranges = sorted(byte_range(a) for a in arrays if a.nbytes)
    for (_, end), (start, _) in zip(ranges, ranges[1:]):
        assert end <= start, "two live results share bytes"


@pytest.fixture(scope="module")
def dyn_exe():
    """main(x: (?, 4)) -> (2 * concat([x, x + 1]), sum(concat(...), axis=1)): several dynamic
    allocations per call, two of them returned."""
    x = ir.var("x", ir.TensorType((ir.Any(), 4), "float32"))
    y = op.concatenate([x, op.add(x, ir.const(1.0, "float32"))], axis=0)
    out = ir.Tuple([op.multiply(y, ir.const(2.0, "float32")), op.sum(y, axis=[1])])
    return build(ir.IRModule.from_expr(ir.Function([x], out)))


def dyn_reference(x):
    y = np.concatenate([x, x + np.float32(1)])
    return y * np.float32(2), y.sum(axis=1, dtype=np.float32)


def rows(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)


# ------------------------------------------------------------------ size classes, the pool


def test_size_classes_are_64_byte_multiples_within_25_percent():
    for n in list(range(0, 5000)) + [10**6, 10**6 + 1, 2**30 + 3]:
        c = size_class(n)
        assert c >= max(n, 1) and c % 64 == 0
        assert c <= max(64, n * 1.25 + 64)
    assert [size_class(n) for n in (1, 64, 65, 512, 513, 1025)] == [64, 64, 128, 512, 640, 1280]


@pytest.mark.parametrize("alignment", [1, 64, 256, 4096])
def test_pool_storage_is_aligned_sized_and_writable(alignment):
    pool = StoragePool()
    s = pool.storage(1000, alignment, "float32")
    assert s.address % alignment == 0 and s.size == 1000
    view = s.view(0, (250,), "float32")
    view[:] = 3
    assert view.__array_interface__["data"][0] == s.address and np.all(s.data.view(np.float32) == 3)


def test_pool_rejects_bad_requests():
    with pytest.raises(VMError, match="size must be >= 0"):
        StoragePool().storage(-1, 64)
    with pytest.raises(VMError, match="power of two"):
        StoragePool().storage(64, 48)


def test_block_comes_back_only_after_the_last_view_dies():
    pool = StoragePool()
    s = pool.storage(256)
    address = s.address
    t = s.tensor(0, ("float32", (64,)), 256)
    view = t.array[10:20]
    del s, t
    assert pool.stats()["bytes_live"] == 256           # the view still reaches the block
    assert pool.storage(256).address != address        # so a new request cannot get it
    del view
    stats = pool.stats()
    assert stats["bytes_live"] == 0 and stats["allocations"] == 2
    assert pool.storage(256).address == address          # recycled: no third allocation
    assert pool.stats()["allocations"] == 2 and pool.stats()["pool_hits"] == 1


def test_free_blocks_of_the_next_larger_classes_are_reused():
    pool = StoragePool()
    s = pool.storage(1200)                              # class 1280
    del s
    assert pool.storage(1000).size == 1000              # class 1024: none free, 1280 serves it
    assert pool.stats()["allocations"] == 1 and pool.stats()["pool_hits"] == 1


def test_release_gives_free_blocks_back_and_caps_apply():
    pool = StoragePool(max_free_bytes=1024)
    blocks = [pool.storage(512) for _ in range(4)]
    del blocks
    stats = pool.stats()
    assert stats["bytes_free"] == 1024 and stats["bytes_live"] == 0
    pool.release()
    assert pool.stats()["bytes_free"] == 0
    kept = pool.storage(512)             # a new block: the released ones are gone
    assert kept.size == 512 and pool.stats()["allocations"] == 5 and pool.stats()["pool_hits"] == 0


def test_released_blocks_go_back_to_the_os():
    """Measured with tracemalloc (numpy reports its buffers to it): a returned block stays in
    the pool until `release`, which frees its memory; a later block is tracked only while used."""
    big = 1 << 24
    tracemalloc.start()
    try:
        pool = StoragePool()
        base = tracemalloc.get_traced_memory()[0]
        s = pool.storage(big)
        assert tracemalloc.get_traced_memory()[0] - base >= big
        del s
        assert tracemalloc.get_traced_memory()[0] - base >= big   # free, kept for reuse
        pool.release()
        assert tracemalloc.get_traced_memory()[0] - base < big // 16
        kept = pool.storage(big)
        assert tracemalloc.get_traced_memory()[0] - base >= big
        del kept
        pool.release()
        assert tracemalloc.get_traced_memory()[0] - base < big // 16
    finally:
        tracemalloc.stop()


# ------------------------------------------------------------------ the VM (both tiers: the
# native tier has a pool of its own with the same size classes and ownership rules)


@pytest.fixture(params=["python", "native"])
def tier(request):
    return request.param


def test_memory_stats_reports_and_resets(dyn_exe, tier):
    vm = VirtualMachine(dyn_exe, tier=tier)
    vm.invoke("main", rows(10))
    stats = vm.memory_stats()
    assert set(stats) == STAT_KEYS
    assert stats["allocations"] > 0 and stats["bytes_allocated"] >= 10 * 4 * 4 * 2
    assert stats["peak_bytes_live"] >= stats["bytes_live"] == 0   # results dropped
    vm.reset_memory_stats()
    stats = vm.memory_stats()
    assert stats["allocations"] == stats["pool_hits"] == stats["bytes_allocated"] == 0
    assert stats["peak_bytes_live"] == 0


def test_repeated_invocations_with_the_same_shape_make_no_new_allocations(dyn_exe, tier):
    vm = VirtualMachine(dyn_exe, tier=tier)
    x = rows(37)
    vm.invoke("main", x)
    vm.reset_memory_stats()
    for _ in range(20):
        vm.invoke("main", x)
    stats = vm.memory_stats()
    assert stats["allocations"] == 0 and stats["pool_hits"] > 0


def test_varying_shapes_reuse_freed_blocks(dyn_exe, tier):
    vm = VirtualMachine(dyn_exe, tier=tier)
    for n in range(1, 200):
        vm.invoke("main", rows(n))
    stats = vm.memory_stats()
    assert stats["pool_hits"] > 5 * stats["allocations"]


def test_results_kept_across_100_invocations_never_alias(dyn_exe, tier):
    """The test that would catch a block recycled while a result still uses it: keep every
    result (and a slice of some), with shapes varying up and down so that blocks of every
    class get freed and reused in between, and check them all at the end."""
    vm = VirtualMachine(dyn_exe, tier=tier)
    rng = np.random.default_rng(7)
    kept, inputs = [], []
    for i in range(100):
        n = int(rng.integers(0, 60))
        x = rows(n, seed=i)
        out = vm.invoke("main", x)
        if i % 3 == 0:
            out = (out[0][1:], out[1])                    # only a view keeps the block
        kept.append(out)
        inputs.append(x)
        if i % 7 == 0:
            vm.invoke("main", rows(int(rng.integers(0, 60)), seed=1000 + i))  # dropped at once
        if i % 10 == 0:
            gc.collect()    # refcounting frees the rest at once; a full collection is slow
    for i, (x, out) in enumerate(zip(inputs, kept)):
        want = dyn_reference(x)
        np.testing.assert_array_equal(out[0], want[0][1:] if i % 3 == 0 else want[0])
        np.testing.assert_array_equal(out[1], want[1])
    assert_disjoint([a for out in kept for a in out])


def test_a_result_passed_back_in_stays_intact(dyn_exe, tier):
    vm = VirtualMachine(dyn_exe, tier=tier)
    first = vm.invoke("main", rows(8))[0][:, :4].copy()
    doubled = vm.invoke("main", rows(8))[0]
    snapshot = doubled.copy()
    again = vm.invoke("main", doubled)
    np.testing.assert_array_equal(doubled, snapshot)
    np.testing.assert_array_equal(doubled, dyn_reference(rows(8))[0])
    np.testing.assert_array_equal(again[0], dyn_reference(snapshot)[0])
    np.testing.assert_array_equal(again[1], dyn_reference(snapshot)[1])
    np.testing.assert_array_equal(first, dyn_reference(rows(8))[0][:, :4])


def test_results_are_writable_and_writing_them_does_not_affect_later_calls(dyn_exe, tier):
    vm = VirtualMachine(dyn_exe, tier=tier)
    a = vm.invoke("main", rows(5))[0]
    a[...] = -1
    np.testing.assert_array_equal(vm.invoke("main", rows(5))[0], dyn_reference(rows(5))[0])
    assert np.all(a == -1)


def test_one_vm_per_thread_and_results_dropped_on_another_thread(dyn_exe, tier):
    errors, handoff = [], []

    def worker(seed):
        try:
            vm = VirtualMachine(dyn_exe, tier=tier)
            for i in range(50):
                x = rows(1 + (seed * 7 + i) % 40, seed=seed + i)
                out = vm.invoke("main", x)
                np.testing.assert_array_equal(out[0], dyn_reference(x)[0])
                handoff.append(out)          # the main thread drops these
            vm.invoke("main", rows(3))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert_disjoint([a for out in handoff for a in out])
    handoff.clear()


def test_bytes_live_follow_results_held_by_the_caller(dyn_exe, tier):
    """Held results keep their blocks live (the native tier copies results of at most 16 KiB
    out of its blocks, so the results here are larger)."""
    vm = VirtualMachine(dyn_exe, tier=tier)
    held = vm.invoke("main", rows(2000))
    live = vm.memory_stats()["bytes_live"]
    assert live >= held[0].nbytes > 16384
    del held
    assert vm.memory_stats()["bytes_live"] == 0
