"""Hakobune (方舟): disaster-recovery backup of hospital medical records.

This package is the shared kernel: the record model, code systems, the HL7 v2 codec, errors, and the CLI root.
"""

__version__ = "0.1.0"
