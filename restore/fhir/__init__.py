"""FHIR R4 export: IPS-shaped document Bundles of JP Core resources (:mod:`restore.fhir.bundle`), the JP
code system URIs (:mod:`restore.fhir.codesystems`) and a conformance checker that reads the JP Core
packages (:mod:`restore.fhir.conformance`).  See docs/fhir.md."""

from restore.fhir.bundle import (
    ExportWindow,
    NdjsonWriter,
    dumps,
    hospital_bundles,
    patient_bundle,
    transaction_bundle,
)

__all__ = [
    "ExportWindow",
    "NdjsonWriter",
    "dumps",
    "hospital_bundles",
    "patient_bundle",
    "transaction_bundle",
]
