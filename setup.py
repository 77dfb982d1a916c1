"""Build the Cython extensions in fluxmq/_speedups.

Every hot path (codec, topic trie, output buffers, routing, sessions) is one Cython module with a
.pxd so the others call it with C calls. There is no pure-Python fallback: the package needs a
compiler to build, and `make install` builds it.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

SPEEDUPS = "fluxmq/_speedups"

modules = sorted(
    name[:-4] for name in os.listdir(SPEEDUPS) if name.endswith(".pyx")
)

extensions = [
    Extension(
        f"fluxmq._speedups.{name}",
        [f"{SPEEDUPS}/{name}.pyx"],
        extra_compile_args=["-O2", "-Wno-unused-function", "-Wno-unreachable-code"],
    )
    for name in modules
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
            "embedsignature": True,
            "freethreading_compatible": False,
        },
        nthreads=int(os.environ.get("CYTHON_NTHREADS", "2")),
    ),
)
