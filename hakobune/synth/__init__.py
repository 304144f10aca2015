"""A realistic, deterministic synthetic SS-MIX2 hospital (``hakobune synth``).

``generate(out, patients, days, seed, workers)`` writes ``out/ssmix2`` (standardized storage),
``out/consent.csv``, ``out/synth.json`` and the transaction journal ``out/journal/TR_<day>.DAT``;
``advance(out, days)`` continues that tree in place by more days (renames and new files, as a hospital
system would, journaled).  Same seed and parameters give a byte-identical tree
for any number of workers, and ``generate(days=n)`` + ``advance(k)`` equals ``generate(days=n + k)``.
"""

from __future__ import annotations

from hakobune.synth.generator import (
    CONSENT_FILE,
    DEFAULT_CHANGE_RATE,
    JOURNAL_DIR,
    META_FILE,
    SSMIX2_DIR,
    SynthStats,
    advance,
    generate,
    read_meta,
)

__all__ = [
    "CONSENT_FILE",
    "DEFAULT_CHANGE_RATE",
    "JOURNAL_DIR",
    "META_FILE",
    "SSMIX2_DIR",
    "SynthStats",
    "advance",
    "generate",
    "read_meta",
]
