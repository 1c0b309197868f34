import os
import tempfile

# Kernel tests must see real LLVM compiles and must not touch the user's ~/.cache/dynvm:
# each test process gets its own empty object cache.
os.environ["DYNVM_CACHE_DIR"] = tempfile.mkdtemp(prefix="dynvm-test-cache-")
