"""Build hook for the C extensions: the ISO-2022-JP fast path of :func:`hakobune.hl7.decode` and the
SS-MIX2 reader's split, the reader's compiled mappers and folder walk, and the FHIR export's compiled lab
results.

Everything else is in pyproject.toml.  The extensions are optional: where they cannot be compiled the
pure-Python code (the reference) is used, slower but with the same results."""

from setuptools import Extension, setup


def _optional(module: str) -> Extension:
    """The extension ``module`` from its one C file, optional, warnings as errors."""
    return Extension(
        module,
        [module.replace(".", "/") + ".c"],
        optional=True,
        extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror"],
    )


setup(
    ext_modules=[
        _optional("hakobune._jisdecode"),
        _optional("agent.ssmix2._fastmap"),
        _optional("agent.ssmix2._fastwalk"),
        _optional("restore.fhir._fastlabs"),
    ]
)
