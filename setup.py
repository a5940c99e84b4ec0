"""Builds the ahead-of-time CPU kernels (src/lovasz/engine/_native.c, plain C loaded with ctypes).

The library has no Python ABI (no Python header, no module init; ctypes loads it by path), so it is built
as a plain shared library, ``lovasz/engine/_native.so`` (``.dylib`` on macOS, ``.dll`` on Windows), not as
an extension module with an interpreter-specific name, and the wheel that holds it is tagged
``py3-none-<platform>``: one wheel per platform serves every Python version.

Optional: where no C compiler is found, the package installs without the library and the binned engine on
the CPU falls back to the other backends (lovasz.engine.backends says why).  ``pip install -e .`` builds
the library in place, next to kernels_native.py."""

import hashlib
import os
import pathlib
import re
import sys

from setuptools import Extension, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_ext import build_ext

NAME = "lovasz.engine._native"
SOURCE = "src/lovasz/engine/_native.c"
# The file name kernels_native.library_path() looks for (keep the two in step).
SUFFIX = {"win32": ".dll", "darwin": ".dylib"}.get(sys.platform, ".so")
# The library records the hash of the source it was built from; lovasz.engine.kernels_native refuses a
# library whose source has changed since (a stale build after editing the C file), and says to reinstall.
TEXT = pathlib.Path(SOURCE).read_text(encoding="utf-8")
DIGEST = hashlib.sha256(pathlib.Path(SOURCE).read_bytes()).hexdigest()[:16]
# The functions ctypes calls: the file's non-static ``lovasz_*`` definitions (a line that starts with the
# return type or the name, not ``static``, and a parameter list followed by a body).  MSVC exports nothing
# from a DLL unless told (/EXPORT: for each); GCC and Clang export every non-static function anyway.
DEFINITION = r"^(?!static\b)(?:[A-Za-z_][\w \t\*]*?[ \t\*\n])?(lovasz_\w+)\s*\([^;{]*\)\s*\{"
EXPORTS = sorted(set(re.findall(DEFINITION, TEXT, re.M)))
if not EXPORTS:
    raise SystemExit(f"setup.py: no lovasz_* function definitions found in {SOURCE} to export")

if sys.platform == "win32":
    flags = ["/O2", "/fp:precise"]
else:
    flags = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-std=c11"]


class build_plain_library(build_ext):
    """``build_ext`` that links ``_native`` as a plain shared library: a file name without the
    interpreter's ABI tag, only the C functions exported (not ``PyInit__native``), and on macOS a
    ``-dynamiclib`` rather than the loadable bundle Python uses for its extensions.  Everything else
    (``--inplace`` and editable installs, ``optional``, the compiler's flags) is setuptools' own."""

    def get_ext_filename(self, fullname):
        # Asked with the full name ("lovasz.engine._native") and, by distutils, with the last part only.
        ext = self.ext_map.get(fullname)
        if ext is not None and ext.name == NAME:
            return os.path.join(*fullname.split(".")) + SUFFIX
        return super().get_ext_filename(fullname)

    def get_export_symbols(self, ext):
        return list(ext.export_symbols) if ext.name == NAME else super().get_export_symbols(ext)

    def build_extension(self, ext):
        if ext.name == NAME and sys.platform == "darwin":
            linker = list(self.compiler.linker_so)
            self.compiler.linker_so = ["-dynamiclib" if arg == "-bundle" else arg for arg in linker]
            try:
                return super().build_extension(ext)
            finally:
                self.compiler.linker_so = linker
        return super().build_extension(ext)


class bdist_wheel_py3_none(bdist_wheel):
    """Tags the wheel ``py3-none-<platform>``: it holds a platform library but no Python extension."""

    def finalize_options(self):
        super().finalize_options()
        self.root_is_purelib = False  # platform-specific: installed to platlib

    def get_tag(self):
        _, _, plat = super().get_tag()
        return "py3", "none", plat


setup(
    ext_modules=[
        Extension(
            NAME,
            sources=[SOURCE],
            extra_compile_args=flags,
            define_macros=[("LOVASZ_SOURCE_DIGEST", f'"{DIGEST}"')],
            libraries=[] if sys.platform == "win32" else ["m"],
            export_symbols=EXPORTS,
            optional=True,
        )
    ],
    cmdclass={"build_ext": build_plain_library, "bdist_wheel": bdist_wheel_py3_none},
)
