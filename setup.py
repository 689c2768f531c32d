"""The one compiled module: everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "openhosting.storage._xts",
            ["src/openhosting/storage/_xts.c"],
            extra_compile_args=["-O3"],
        )
    ]
)
