"""Build hook for the C extensions: the ISO-2022-JP fast path of :func:`hakobune.hl7.decode` and the
SS-MIX2 reader's split, the reader's compiled mappers and folder walk, and the FHIR export's compiled lab
results.

Everything else is in pyproject.toml.  The extensions are optional: where they cannot be compiled the
pure-Python code (the reference) is used, slower but with the same results."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "hakobune._jisdecode",
            ["hakobune/_jisdecode.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror"],
        ),
        Extension(
            "agent.ssmix2._fastmap",
            ["agent/ssmix2/_fastmap.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror"],
        ),
        Extension(
            "agent.ssmix2._fastwalk",
            ["agent/ssmix2/_fastwalk.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror"],
        ),
        Extension(
            "restore.fhir._fastlabs",
            ["restore/fhir/_fastlabs.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror"],
        ),
    ]
)
