import atexit
import os
import shutil
import tempfile

# Kernel tests must see real LLVM compiles and must not touch the user's ~/.cache/dynvm:
# each test process gets its own empty object cache, removed when the process ends.
_CACHE = tempfile.mkdtemp(prefix="dynvm-test-cache-")
os.environ["DYNVM_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
