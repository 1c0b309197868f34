"""The short fuzz run: mutated real executables (structure-aware edits and raw damage, checksum
recomputed) each load and invoke with a typed error or a result — never an untyped exception,
a crash, a hang or a change to another VM's behaviour. The long run is
`python -m tests.fuzz.harness --mutants 100000` (see tests/fuzz/harness.py)."""
from tests.fuzz import harness

MUTANTS = 200   # a fixed count, so a busy machine makes the run slower, never weaker


def test_mutated_executables_fail_typed_or_run(tmp_path):
    report = harness.fuzz(MUTANTS, seed=20261205, out_dir=str(tmp_path))
    assert report["total"] == MUTANTS
    assert report["counts"]["rejected"] > 0 and report["counts"]["ran"] > 0
    assert not report["findings"], "\n".join(
        f"{f['outcome']} (seed {f['seed']}, mutant {f['index']}): {f['detail']}"
        for f in report["findings"][:10])
