"""Builds the ahead-of-time CPU kernels (src/lovasz/engine/_native.c, plain C loaded with ctypes).

Optional: where no C compiler is found, the package installs without them and the binned engine on CPU
uses the numba kernels instead (compiled on first use)."""

import sys

from setuptools import Extension, setup

if sys.platform == "win32":
    flags = ["/O2", "/fp:precise"]
else:
    flags = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-std=c11"]

setup(
    ext_modules=[
        Extension(
            "lovasz.engine._native",
            sources=["src/lovasz/engine/_native.c"],
            extra_compile_args=flags,
            libraries=[] if sys.platform == "win32" else ["m"],
            optional=True,
        )
    ]
)
