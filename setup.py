"""Build the compiled core, ``concmagic._core``.

Metadata lives in pyproject.toml; this file only describes the extension,
because the Cython options below are code, not configuration.
"""
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "concmagic._core",
        ["src/concmagic/_core.pyx"],
        extra_compile_args=[
            "-O3",
            # No fused multiply-add contraction: the three kernel paths must give
            # bit-identical floats, and Python never fuses `a*b + c`.
            "-ffp-contract=off",
        ],
        libraries=["pthread"],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": 3,
            # Safety on by default; the hot loops switch bounds/wraparound
            # checks off locally with decorators, where indices are proven.
            "boundscheck": True,
            "wraparound": True,
            "cdivision": False,
            "embedsignature": True,
        },
        annotate=False,
    ),
)
