"""`dynvm bench` and the measuring helpers of the benchmark scripts.

    harness   measuring (interleaved batches, medians), rows and tables, a progress bar
    peers     the models on PyTorch eager and ONNX Runtime (optional packages)
    suite     the models the bench runs, their sizes and one runner per runtime
    run       checking, timing, the report (table, bench.json, bench.png), the command line

The models themselves are `dynvm.models`: everything the bench runs ships with the package.
"""
