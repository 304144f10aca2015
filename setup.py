"""Build hook for the one C extension: the ISO-2022-JP fast path of :func:`hakobune.hl7.decode`.

Everything else is in pyproject.toml.  The extension is optional: where it cannot be compiled the
pure-Python decoder (the reference) is used, slower but the same text."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "hakobune._jisdecode",
            ["hakobune/_jisdecode.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror"],
        )
    ]
)
