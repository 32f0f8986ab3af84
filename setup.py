"""Builds the optional native fast path (slirptrio/wire/_native.c); metadata is in pyproject.toml.

Without a working C compiler (or Python headers) the build prints a warning and goes on: the
package then runs on its pure-Python codecs, which are the reference anyway.
"""

from __future__ import annotations

import sys
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that turns a failed compile into a warning."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler at all (setuptools raises its own errors)
            self._warn(exc)

    def build_extension(self, ext: Any) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._warn(exc)

    @staticmethod
    def _warn(exc: Exception) -> None:
        print(
            f"WARNING: slirptrio's native fast path was not built ({exc}); "
            "the pure-Python path will be used",
            file=sys.stderr,
        )


setup(
    ext_modules=[
        Extension(
            "slirptrio.wire._native",
            sources=["slirptrio/wire/_native.c"],
            extra_compile_args=["-O2", "-std=c99", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
