"""Patient search for the disaster desk (DESIGN.md §8): by name in kanji or kana, birth date, sex and address,
tolerant of the usual mistakes; ranked candidates with scores and reasons for a clinician to confirm.

See docs/search.md.  The CLI calls :func:`search_database`; the restore calls :func:`index_patients` (or
:class:`PatientIndex` on its own connection) with :func:`from_record` for each patient.
"""

from __future__ import annotations

from hakobune.records import Patient
from restore.search.index import (
    Candidate,
    PatientIndex,
    Query,
    SearchPatient,
    SearchQueryError,
    index_patients,
    search_database,
)


def from_record(patient: Patient) -> SearchPatient:
    """The index's view of a patient's demographics record."""
    return SearchPatient(
        patient_id=patient.key.patient_id,
        family_kanji=patient.family_kanji,
        given_kanji=patient.given_kanji,
        family_kana=patient.family_kana,
        given_kana=patient.given_kana,
        birth_date=patient.birth_date,
        sex=patient.sex,
        address=patient.address,
        postal_code=patient.postal_code,
    )


__all__ = [
    "Candidate",
    "PatientIndex",
    "Query",
    "SearchPatient",
    "SearchQueryError",
    "from_record",
    "index_patients",
    "search_database",
]
