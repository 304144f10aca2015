"""Code systems, declared once.

SS-MIX2 messages name a code system by its HL7 table identifier (CWE-3, e.g. ``HOT9``); FHIR names it by a
URI.  Readers, the FHIR builder and the research pipeline look both up here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CodeSystem:
    hl7_id: str
    name: str
    uri: str


_SYSTEMS = (
    CodeSystem("HOT9", "HOT9 (医薬品 9桁)", "urn:oid:1.2.392.200119.4.403.1"),
    CodeSystem("HOT13", "HOT13 (医薬品 13桁)", "urn:oid:1.2.392.200119.4.402.1"),
    CodeSystem("YJ", "YJコード", "urn:oid:1.2.392.100495.20.1.73"),
    CodeSystem("I10", "ICD-10 (2013)", "http://hl7.org/fhir/sid/icd-10"),
    CodeSystem("MDCDX2", "MEDIS 標準病名マスター 病名交換用コード", "urn:oid:1.2.392.200250.2.2.20.20"),
    CodeSystem("JC10", "JLAC10", "urn:oid:1.2.392.200119.4.504"),
    CodeSystem("JC11", "JLAC11", "urn:oid:1.2.392.200119.4.505"),
    CodeSystem("MR9P", "MERIT-9 単位", "urn:oid:1.2.392.100495.20.2.101"),
    CodeSystem("JAMISDP01", "JAMI 標準用法コード", "urn:oid:1.2.392.200250.2.2.20"),
    CodeSystem("HL70162", "HL7 Route of administration", "http://terminology.hl7.org/CodeSystem/v2-0162"),
    CodeSystem("HL70127", "HL7 Allergen type", "http://terminology.hl7.org/CodeSystem/v2-0127"),
    CodeSystem("HL70128", "HL7 Allergy severity", "http://terminology.hl7.org/CodeSystem/v2-0128"),
    CodeSystem("HL70241", "HL7 Patient outcome", "http://terminology.hl7.org/CodeSystem/v2-0241"),
)

BY_HL7_ID: dict[str, CodeSystem] = {s.hl7_id: s for s in _SYSTEMS}


def lookup(hl7_id: str) -> CodeSystem | None:
    """The code system an HL7 table identifier names, or None for local/unknown tables."""
    return BY_HL7_ID.get(hl7_id)
