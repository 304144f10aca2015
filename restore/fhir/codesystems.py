"""FHIR URIs of the code systems and identifier systems the export uses, each with its source.

Japanese systems come from the JP Core 1.1.2 package (``jp-core.r4-1.1.2.tgz``): the *preferred* ``uniqueId``
of its NamingSystems, or the ``fixedUri`` of a profile's identifier slice.  JP Core names no code system for
Condition.code; for diseases the URIs are those the JP-CLINS 1.5.2 profile ``JP_Condition_eCS`` (built on
JP_Condition) fixes in its ``code.coding`` slices, and its MHLW ICD-10 NamingSystem.  The conformance checker
reads the same packages and the tests assert that every URI here is still what they say.

SS-MIX2 names a code system by its HL7 table id (CWE-3); :func:`system_for` turns that into the URI.  Codes
of local tables (``99XYZ`` …) mean nothing outside the hospital: they get no URI and the exporter keeps
only their text.
"""

from __future__ import annotations

import re

# --- JP Core 1.1.2 NamingSystems (preferred uniqueId) -------------------------------------------------
#: NamingSystem-jp-medicationcodehot9-namingsystem.json (JP_MedicationCodeHOT9_NamingSystem)
HOT9 = "urn:oid:1.2.392.200119.4.403.1"
#: NamingSystem-jp-medicationcodehot13-namingsystem.json
HOT13 = "urn:oid:1.2.392.200119.4.402.1"
#: NamingSystem-jp-medicationcodehot7-namingsystem.json
HOT7 = "urn:oid:1.2.392.200119.4.403.2"
#: NamingSystem-jp-medicationcodeyj-namingsystem.json
YJ = "urn:oid:1.2.392.100495.20.1.73"
#: NamingSystem-jp-observation-jlac10-namingsystem.json (JP_Observation_JLAC10_CodeSystem)
JLAC10 = "urn:oid:1.2.392.200119.4.504"
#: NamingSystem-jp-medicationunitmerit9-namingsystem.json
MERIT9_UNIT = "urn:oid:1.2.392.100495.20.2.101"
#: NamingSystem-jp-medicationusagejami-namingsystem.json (JAMI 処方・注射オーダ標準用法規格, 16 digits)
JAMI_USAGE = "urn:oid:1.2.392.200250.2.2.20"
#: NamingSystem-jp-medicationroute-hl7-0162-namingsystem.json (HL7 table 0162 as JP Core names it)
ROUTE_HL70162 = "http://jpfhir.jp/fhir/core/CodeSystem/route-codes"
#: NamingSystem-jp-medicationingredientstrengthstrengthtype-namingsystem.json (1 製剤量, 2 原薬量)
STRENGTH_TYPE = "urn:oid:1.2.392.100495.20.2.22"
#: NamingSystem-jp-prefecturenumber-namingsystem.json
PREFECTURE = "urn:oid:1.2.392.100495.20.3.21"

# --- JP Core 1.1.2 identifier systems (profile text and fixedUri) -------------------------------------
#: StructureDefinition-jp-patient.json, Patient.identifier.system: this prefix + the 10-digit 医療機関コード
PATIENT_ID_PREFIX = "urn:oid:1.2.392.100495.20.3.51.1"
#: StructureDefinition-jp-organization.json, identifier:medicalInstitutionCode.system (fixedUri)
MEDICAL_INSTITUTION = "http://jpfhir.jp/fhir/core/IdSystem/insurance-medical-institution-no"
#: StructureDefinition-jp-medicationrequest.json, identifier:rpNumber.system (fixedUri)
RP_NUMBER = "urn:oid:1.2.392.100495.20.3.81"
#: StructureDefinition-jp-medicationrequest.json, identifier:orderInRp.system (fixedUri)
ORDER_IN_RP = "urn:oid:1.2.392.100495.20.3.82"
#: StructureDefinition-jp-medicationrequest.json, identifier:requestIdentifier.system (fixedUri)
RESOURCE_INSTANCE = "http://jpfhir.jp/fhir/core/IdSystem/resourceInstance-identifier"
#: StructureDefinition-jp-observation-labresult.json, category:laboratory.coding.system (fixedUri)
OBSERVATION_CATEGORY = "http://jpfhir.jp/fhir/core/CodeSystem/JP_SimpleObservationCategory_CS"

# --- JP-CLINS 1.5.2 (JP_Condition_eCS code.coding slices; MHLW_ICD10FullDigits_NamingSystem) -----------
#: slice medisRecordNo: MEDIS 標準病名マスター 病名管理番号 (8 digits, e.g. 20054174)
MEDIS_DISEASE_KEY = "http://medis.or.jp/CodeSystem/master-disease-keyNumber"
#: slice medisExchange: MEDIS 標準病名マスター 病名交換用コード (4 characters, e.g. TSQF)
MEDIS_DISEASE_EXCHANGE = "http://medis.or.jp/CodeSystem/master-disease-exCode"
#: slice icd10 / NamingSystem-mhlw-icd10-namingsystem.json (ICD-10 2013 as MHLW publishes it)
ICD10_JP = "http://jpfhir.jp/fhir/core/mhlw/CodeSystem/ICD10-2013-full"

# --- HL7 international --------------------------------------------------------------------------------
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
URI_IDENTIFIER = "urn:ietf:rfc:3986"
LIST_EMPTY_REASON = "http://terminology.hl7.org/CodeSystem/list-empty-reason"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
OBSERVATION_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
REFERENCE_RANGE_MEANING = "http://terminology.hl7.org/CodeSystem/referencerange-meaning"
EN_REPRESENTATION = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation"
XHTML_NS = "http://www.w3.org/1999/xhtml"

#: Systems named here, by the HL7 table id SS-MIX2 writes (the same ids as :mod:`hakobune.codes`).
BY_TABLE: dict[str, str] = {
    "HOT9": HOT9,
    "HOT13": HOT13,
    "HOT7": HOT7,
    "YJ": YJ,
    "JC10": JLAC10,
    "MR9P": MERIT9_UNIT,
    "JAMISDP01": JAMI_USAGE,
    "HL70162": ROUTE_HL70162,
    "I10": ICD10_JP,
}

_MEDIS_KEY = re.compile(r"\d{8}")
_MEDIS_EXCHANGE = re.compile(r"[0-9A-Z]{4}")


def system_for(table: str, code: str = "") -> str | None:
    """The FHIR URI for a code of HL7 table ``table``, or None for a local or unknown table.

    SS-MIX2 writes both MEDIS disease codes under ``MDCDX2``: the 8-digit 病名管理番号 (PRB-3) and the
    4-character 病名交換用コード; the code's shape tells which."""
    if table == "MDCDX2":
        if _MEDIS_KEY.fullmatch(code):
            return MEDIS_DISEASE_KEY
        if _MEDIS_EXCHANGE.fullmatch(code):
            return MEDIS_DISEASE_EXCHANGE
        return None
    return BY_TABLE.get(table)


def patient_id_system(hospital: str) -> str | None:
    """JP Core's namespace for the patient IDs of a hospital: ``urn:oid:1.2.392.100495.20.3.51.`` + ``1`` +
    the 10-digit 医療機関コード.  None when ``hospital`` is not a 10-digit code."""
    return PATIENT_ID_PREFIX + hospital if _is_institution_code(hospital) else None


def _is_institution_code(hospital: str) -> bool:
    return len(hospital) == 10 and hospital.isascii() and hospital.isdigit()
