"""Builds the ahead-of-time CPU kernels (src/lovasz/engine/_native.c, plain C loaded with ctypes).

Optional: where no C compiler is found, the package installs without them and the binned engine on CPU
uses the numba kernels instead (compiled on first use)."""

import hashlib
import pathlib
import sys

from setuptools import Extension, setup

SOURCE = "src/lovasz/engine/_native.c"
# The library records the hash of the source it was built from; lovasz.engine.kernels_native refuses a
# library whose source has changed since (a stale build after editing the C file), and says to reinstall.
DIGEST = hashlib.sha256(pathlib.Path(SOURCE).read_bytes()).hexdigest()[:16]

if sys.platform == "win32":
    flags = ["/O2", "/fp:precise"]
else:
    flags = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-std=c11"]

setup(
    ext_modules=[
        Extension(
            "lovasz.engine._native",
            sources=[SOURCE],
            extra_compile_args=flags,
            define_macros=[("LOVASZ_SOURCE_DIGEST", f'"{DIGEST}"')],
            libraries=[] if sys.platform == "win32" else ["m"],
            optional=True,
        )
    ]
)
