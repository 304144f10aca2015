"""Check that a patient summary Bundle is what it claims to be.

:func:`check_bundle` returns a list of problems (empty: conformant) from three checks:

1. **Structure**: the Bundle parses with ``fhir.resources.R4B`` (types, cardinalities of the base spec,
   no unknown elements).
2. **IPS document rules** (HL7 IPS 2.0.0, written out here): document Bundle with identifier and
   timestamp, a Composition first with LOINC type 60591-5, subject, date, author and title; the Problems
   (11450-4), Allergies (48765-2) and Medications (10160-0) sections present once each, every section with
   a title, a code and an XHTML narrative, either entries or an ``emptyReason`` and never both (cmp-2),
   entries of the resource types the section allows; every reference resolves inside the Bundle and every
   entry is reachable from the Composition.
3. **JP Core constraints**, read from the StructureDefinitions in the JP Core 1.1.2 package (and, for
   Condition codes, JP-CLINS 1.5.2): for each resource naming a ``http://jpfhir.jp`` profile in
   ``meta.profile`` the profile must exist; the snapshot's cardinalities (a ``min`` counts where the parent
   is present), fixed and pattern values, slices (by value, pattern or type discriminators), datatype and
   extension profiles (applied recursively), reference target types, required bindings to the FHIR R4
   value sets the profiles name (:data:`R4_REQUIRED_VALUE_SETS`) and to value sets inside the packages,
   and the code systems the profiles' bindings name (a JP value set ``X_VS`` is matched to the
   NamingSystems of ``X``; a coding from another JP system, or a non-preferred alias URI, is a problem).
   On top come rules JP Core states in its text rather than as constraints: JP_Patient's identifier system
   ``urn:oid:1.2.392.100495.20.3.51.1`` + 10-digit institution code, names marked ``IDE``/``SYL`` with at
   least one ``IDE``; Condition.code codings only from the systems JP_Condition_eCS slices.

The packages are read in place from their ``.tgz`` (never copied: CC BY-ND) from
``$HAKOBUNE_FHIR_PACKAGES``, by default ``shared/fhir-packages`` beside the repository.  Problems name
entry, resource type, element path and profile, never a value of the record (values may be patient data).
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

from restore.fhir import codesystems as cs

Json = dict[str, Any]

PACKAGES_ENV = "HAKOBUNE_FHIR_PACKAGES"
JP_CORE_PACKAGE = "jp-core.r4-1.1.2.tgz"
JP_CLINS_PACKAGE = "jp-clins.r4-1.5.2-snap.tgz"
JP_CONDITION_ECS = "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_Condition_eCS"

#: FHIR R4 (4.0.1) value sets that the JP Core profiles bind with strength *required* (codes as the R4
#: specification lists them).  Required bindings to other value sets outside the packages go unchecked.
R4_REQUIRED_VALUE_SETS: dict[str, tuple[str | None, frozenset[str]]] = {
    f"http://hl7.org/fhir/ValueSet/{name}": (system, frozenset(codes.split()))
    for name, system, codes in (
        ("administrative-gender", None, "male female other unknown"),
        ("address-use", None, "home work temp old billing"),
        ("address-type", None, "postal physical both"),
        ("contact-point-system", None, "phone fax email pager url sms other"),
        ("contact-point-use", None, "home work temp old mobile"),
        ("name-use", None, "usual official temp nickname anonymous old maiden"),
        ("identifier-use", None, "usual official temp secondary old"),
        ("link-type", None, "replaced-by replaces refer seealso"),
        ("allergy-intolerance-category", None, "food medication environment biologic"),
        ("allergy-intolerance-criticality", None, "low high unable-to-assess"),
        ("allergy-intolerance-type", None, "allergy intolerance"),
        ("allergyintolerance-clinical", cs.ALLERGY_CLINICAL, "active inactive resolved"),
        (
            "allergyintolerance-verification",
            "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
            "unconfirmed confirmed refuted entered-in-error",
        ),
        ("reaction-event-severity", None, "mild moderate severe"),
        (
            "condition-clinical",
            cs.CONDITION_CLINICAL,
            "active recurrence relapse inactive remission resolved",
        ),
        (
            "condition-ver-status",
            "http://terminology.hl7.org/CodeSystem/condition-ver-status",
            "unconfirmed provisional differential confirmed refuted entered-in-error",
        ),
        ("days-of-week", None, "mon tue wed thu fri sat sun"),
        ("units-of-time", None, "s min h d wk mo a"),
        ("quantity-comparator", None, "< <= >= >"),
        (
            "medication-admin-status",
            None,
            "in-progress not-done on-hold completed entered-in-error stopped unknown",
        ),
        ("medication-status", None, "active inactive entered-in-error"),
        (
            "medicationrequest-intent",
            None,
            "proposal plan order original-order reflex-order filler-order instance-order option",
        ),
        (
            "medicationrequest-status",
            None,
            "active on-hold cancelled completed entered-in-error stopped draft unknown",
        ),
        (
            "observation-status",
            None,
            "registered preliminary final amended corrected cancelled entered-in-error unknown",
        ),
        ("request-priority", None, "routine urgent asap stat"),
        ("specimen-status", None, "available unavailable unsatisfactory entered-in-error"),
    )
}

# --- IPS 2.0.0 (Composition-uv-ips) ------------------------------------------------------------------
IPS_DOCUMENT_TYPE = "60591-5"
IPS_REQUIRED_SECTIONS = {"11450-4": "Problems", "10160-0": "Medications", "48765-2": "Allergies"}
#: Resource types each IPS section may hold (the section's entry slices).
IPS_SECTION_ENTRIES: dict[str, frozenset[str]] = {
    "11450-4": frozenset({"Condition"}),
    "48765-2": frozenset({"AllergyIntolerance"}),
    "10160-0": frozenset(
        {"MedicationStatement", "MedicationRequest", "MedicationAdministration", "MedicationDispense"}
    ),
    "30954-2": frozenset({"Observation", "DiagnosticReport"}),
}
EMPTY_REASONS = frozenset({"nilknown", "notasked", "withheld", "unavailable", "notstarted", "closed"})


class PackagesNotFound(FileNotFoundError):
    """The JP FHIR packages are not where the checker looks."""


def default_packages_dir() -> Path:
    """``$HAKOBUNE_FHIR_PACKAGES``, else ``shared/fhir-packages`` beside the repository checkout."""
    env = os.environ.get(PACKAGES_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "fhir-packages"


# ------------------------------------------------------------------------------------------ packages
_NONE: Any = object()


@dataclass(eq=False)
class _Rule:
    """One element of a StructureDefinition snapshot, with its children and slices."""

    path: str
    min: int = 0
    max: int | None = None  # None: unbounded
    fixed: Any = _NONE
    pattern: Any = _NONE
    binding: tuple[str, str] | None = None  # (strength, value set URL without version)
    profiles: tuple[str, ...] = ()  # datatype / extension profiles of the element's type
    targets: tuple[str, ...] = ()  # target profiles of a Reference
    types: tuple[str, ...] = ()
    discriminators: tuple[tuple[str, str], ...] = ()
    children: dict[str, _Rule] = field(default_factory=dict)
    slices: dict[str, _Rule] = field(default_factory=dict)
    _constrains: bool | None = None

    def constrains(self) -> bool:
        """Whether a fixed or pattern value is set here or below (what value discriminators look at)."""
        if self._constrains is None:
            self._constrains = (
                self.fixed is not _NONE
                or self.pattern is not _NONE
                or any(c.constrains() for c in self.children.values())
            )
        return self._constrains


def _rule(e: Json) -> _Rule:
    r = _Rule(path=e["path"], min=int(e.get("min", 0)))
    mx = e.get("max", "*")
    r.max = None if mx == "*" else int(mx)
    for k, v in e.items():
        if k.startswith("fixed"):
            r.fixed = v
        elif k.startswith("pattern"):
            r.pattern = v
    b = e.get("binding")
    if b and b.get("valueSet"):
        r.binding = (b.get("strength", ""), b["valueSet"].split("|")[0])
    types = e.get("type", [])
    r.types = tuple(t["code"] for t in types)
    r.profiles = tuple(p for t in types for p in t.get("profile", ()))
    r.targets = tuple(p for t in types for p in t.get("targetProfile", ()))
    s = e.get("slicing")
    if s:
        r.discriminators = tuple((d["type"], d["path"]) for d in s.get("discriminator", ()))
    return r


def _compile(sd: Json) -> _Rule:
    elements = sd["snapshot"]["element"]
    root = _rule(elements[0])
    for e in elements[1:]:
        segs = e["id"].split(".")[1:]
        node: _Rule | None = root
        for seg in segs[:-1]:
            name, _, sl = seg.partition(":")
            node = node.children.get(name) if node is not None else None
            if node is not None and sl:
                node = node.slices.get(sl)
        if node is None:
            continue
        name, _, sl = segs[-1].partition(":")
        if sl:
            parent = node.children.get(name)
            if parent is not None:
                parent.slices[sl] = _rule(e)
        else:
            node.children[name] = _rule(e)
    return root


@dataclass(frozen=True)
class NamingSystemInfo:
    name: str
    preferred: str
    uris: frozenset[str]
    source: str


@dataclass
class Packages:
    """The JP FHIR packages, read in place."""

    directory: Path
    structure_definitions: dict[str, Json] = field(default_factory=dict)
    value_sets: dict[str, Json] = field(default_factory=dict)
    code_systems: dict[str, Json] = field(default_factory=dict)
    naming_systems: list[NamingSystemInfo] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # canonical URL -> "package.tgz:path"
    #: non-preferred URI of a NamingSystem -> its preferred one
    alias_to_preferred: dict[str, str] = field(default_factory=dict)
    #: every URI of the JP NamingSystems and of the disease code systems JP_Condition_eCS names
    jp_systems: frozenset[str] = frozenset()
    _rules: dict[str, _Rule | None] = field(default_factory=dict)
    _vs_systems: dict[str, frozenset[str] | None] = field(default_factory=dict)
    _vs_codes: dict[str, frozenset[tuple[str, str]] | None] = field(default_factory=dict)

    def rule(self, url: str) -> _Rule | None:
        if url not in self._rules:
            sd = self.structure_definitions.get(url)
            self._rules[url] = _compile(sd) if sd is not None and "snapshot" in sd else None
        return self._rules[url]

    def systems_for_value_set(self, vs: str) -> frozenset[str] | None:
        """The preferred URIs of the NamingSystems a JP value set ``…/X_VS`` stands for (by name), or None."""
        if vs not in self._vs_systems:
            self._vs_systems[vs] = _vs_systems(self, vs)
        return self._vs_systems[vs]

    def value_set_codes(self, vs: str) -> frozenset[tuple[str, str]] | None:
        """(system, code) of a value set in the packages whose codes can be listed, or None."""
        if vs not in self._vs_codes:
            self._vs_codes[vs] = _expand(self, vs)
        return self._vs_codes[vs]

    def condition_code_systems(self) -> frozenset[str]:
        """Systems JP_Condition_eCS (JP-CLINS) slices Condition.code.coding by."""
        rule = self.rule(JP_CONDITION_ECS)
        if rule is None:
            raise PackagesNotFound(f"{JP_CONDITION_ECS} is not in {self.directory / JP_CLINS_PACKAGE}")
        coding = rule.children["code"].children["coding"]
        out = set()
        for s in coding.slices.values():
            system = s.children.get("system")
            if system is not None and isinstance(system.fixed, str):
                out.add(system.fixed)
        return frozenset(out)


_KINDS = ("StructureDefinition-", "ValueSet-", "CodeSystem-", "NamingSystem-")


def _read_package(path: Path) -> Iterator[tuple[str, Json]]:
    with tarfile.open(path, "r:gz") as tar:
        for m in tar:
            base = m.name.rsplit("/", 1)[-1]
            if not m.isfile() or not base.endswith(".json") or not base.startswith(_KINDS):
                continue
            f = tar.extractfile(m)
            if f is None:
                continue
            yield m.name, json.loads(f.read())


@lru_cache(maxsize=4)
def _load(directory: Path) -> Packages:
    pk = Packages(directory)
    names: set[str] = set()
    for package in (JP_CORE_PACKAGE, JP_CLINS_PACKAGE):  # JP Core first: it wins where both define
        path = directory / package
        if not path.is_file():
            raise PackagesNotFound(f"FHIR package {package} not found in {directory} (set {PACKAGES_ENV})")
        for member, res in _read_package(path):
            rt = res.get("resourceType")
            where = f"{package}:{member}"
            if rt == "NamingSystem":
                if res.get("name") in names:
                    continue
                names.add(res.get("name", ""))
                uris = [u["value"] for u in res.get("uniqueId", ()) if u.get("type") == "uri"]
                preferred = next((u["value"] for u in res.get("uniqueId", ()) if u.get("preferred")), "")
                pk.naming_systems.append(
                    NamingSystemInfo(
                        res.get("name", ""), preferred or (uris[0] if uris else ""), frozenset(uris), where
                    )
                )
                continue
            url = res.get("url")
            if not isinstance(url, str) or url in pk.sources:
                continue
            pk.sources[url] = where
            if rt == "StructureDefinition":
                pk.structure_definitions[url] = res
            elif rt == "ValueSet":
                pk.value_sets[url] = res
            elif rt == "CodeSystem":
                pk.code_systems[url] = res
    preferred = {ns.preferred for ns in pk.naming_systems}
    for ns in pk.naming_systems:
        for u in ns.uris - preferred:
            pk.alias_to_preferred.setdefault(u, ns.preferred)
    pk.jp_systems = frozenset({u for ns in pk.naming_systems for u in ns.uris} | pk.condition_code_systems())
    return pk


def load_packages(directory: Path | None = None) -> Packages:
    """The JP Core and JP-CLINS packages in ``directory`` (default :func:`default_packages_dir`), read
    once per process.  Raises :class:`PackagesNotFound` when either is missing."""
    return _load((directory or default_packages_dir()).resolve())


def _norm(s: str) -> str:
    return s.replace("_", "").replace("-", "").lower()


def _vs_systems(pk: Packages, vs: str) -> frozenset[str] | None:
    if not vs.startswith("http://jpfhir.jp/") or not vs.endswith("_VS"):
        return None
    stem = _norm(vs.rsplit("/", 1)[-1][: -len("_VS")])
    out = set()
    for ns in pk.naming_systems:
        names = [_norm(ns.name)]
        names += [_norm(u.rsplit("/", 1)[-1].removesuffix("_CS")) for u in ns.uris if "/CodeSystem/" in u]
        if any(n.startswith(stem) for n in names):
            out.add(ns.preferred)
    return frozenset(out) or None


def _expand(pk: Packages, vs_url: str) -> frozenset[tuple[str, str]] | None:
    vs = pk.value_sets.get(vs_url)
    if vs is None:
        return None
    out: set[tuple[str, str]] = set()
    for inc in vs.get("compose", {}).get("include", ()):
        system = inc.get("system")
        if not system or inc.get("filter") or inc.get("valueSet"):
            return None
        if "concept" in inc:
            out.update((system, c["code"]) for c in inc["concept"])
            continue
        csys = pk.code_systems.get(system)
        if csys is None or csys.get("content") not in (None, "complete"):
            return None
        stack = list(csys.get("concept", ()))
        while stack:
            c = stack.pop()
            out.add((system, c["code"]))
            stack.extend(c.get("concept", ()))
    return frozenset(out)


# --------------------------------------------------------------------------------------- checking
def _values(obj: Json, name: str) -> list[tuple[str, Any]]:
    """(property name, value) of element ``name`` in ``obj``; a choice ``x[x]`` yields each ``xType``."""
    if name.endswith("[x]"):
        stem = name[:-3]
        n = len(stem)
        out: list[tuple[str, Any]] = []
        for k, v in obj.items():
            if len(k) > n and k.startswith(stem) and k[n].isupper():
                out.extend((k, x) for x in (v if isinstance(v, list) else [v]))
        return out
    v = obj.get(name)
    if v is None:
        return []
    if isinstance(v, list):
        return [(name, x) for x in v]
    return [(name, v)]


def _contains(value: Any, pattern: Any) -> bool:
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(_contains(value.get(k), pv) for k, pv in pattern.items())
    if isinstance(pattern, list):
        items = value if isinstance(value, list) else [value]
        return all(any(_contains(v, p) for v in items) for p in pattern)
    return bool(value == pattern)


def _matches(rule: _Rule, key: str, value: Any) -> bool:
    """Whether ``value`` carries the fixed/pattern values set at ``rule`` and below."""
    if rule.fixed is not _NONE:
        return bool(value == rule.fixed)
    if rule.pattern is not _NONE:
        return _contains(value, rule.pattern)
    if not isinstance(value, dict):
        return False
    found = False
    for cname, crule in rule.children.items():
        if not crule.constrains():
            continue
        found = True
        if not any(_matches(crule, k, v) for k, v in _values(value, cname)):
            return False
    return found


def _descend(rule: _Rule, path: str) -> _Rule | None:
    node: _Rule | None = rule
    for part in path.split("."):
        node = node.children.get(part) if node is not None else None
    return node


def _at_path(value: Any, path: str) -> list[tuple[str, Any]]:
    items: list[tuple[str, Any]] = [("", value)]
    for part in path.split("."):
        items = [kv for _, v in items if isinstance(v, dict) for kv in _values(v, part)]
    return items


def _in_slice(slice_rule: _Rule, discriminators: tuple[tuple[str, str], ...], key: str, value: Any) -> bool:
    for dtype, dpath in discriminators:
        if dtype in ("value", "pattern"):
            if dpath == "$this":
                if not _matches(slice_rule, key, value):
                    return False
                continue
            target = _descend(slice_rule, dpath)
            if target is not None and target.constrains():
                if not any(_matches(target, k, v) for k, v in _at_path(value, dpath)):
                    return False
            elif dpath == "url" and slice_rule.profiles:  # extension slices: the url is the profile's
                if not isinstance(value, dict) or value.get("url") not in slice_rule.profiles:
                    return False
            else:
                return False
        elif dtype == "type" and dpath == "$this":
            stem = slice_rule.path.rsplit(".", 1)[-1].removesuffix("[x]")
            wanted = {stem + t[:1].upper() + t[1:] for t in slice_rule.types}
            if key not in wanted:
                return False
        else:
            return False  # profile / exists discriminators: not evaluated
    return True


def _codings(value: Any) -> list[tuple[str | None, str]]:
    if isinstance(value, str):
        return [(None, value)]
    if not isinstance(value, dict):
        return []
    if "coding" in value:
        return [(c.get("system"), c.get("code", "")) for c in value["coding"] if isinstance(c, dict)]
    if "code" in value:
        return [(value.get("system"), value.get("code", ""))]
    return []


@dataclass
class _Context:
    pk: Packages
    resolve: dict[str, Json]  # fullUrl or "#id" -> resource
    problems: list[str]
    prefix: str
    profile: str

    def problem(self, where: str, what: str) -> None:
        self.problems.append(f"{self.prefix}: {where}: {what} ({self.profile})")


def _check(rule: _Rule, items: list[tuple[str, Any]], where: str, ctx: _Context, depth: int = 0) -> None:
    n = len(items)
    if n < rule.min:
        ctx.problem(where, f"required ({rule.min}..), found {n}")
    if rule.max is not None and n > rule.max:
        ctx.problem(where, f"at most {rule.max} allowed, found {n}")
    for _key, v in items:
        if rule.fixed is not _NONE and v != rule.fixed:
            ctx.problem(where, f"must be the fixed value {json.dumps(rule.fixed, ensure_ascii=False)}")
        if rule.pattern is not _NONE and not _contains(v, rule.pattern):
            ctx.problem(where, f"must match the pattern {json.dumps(rule.pattern, ensure_ascii=False)}")
        if rule.binding is not None:
            _check_binding(rule.binding, v, where, ctx)
        if rule.targets and isinstance(v, dict):
            _check_target(rule.targets, v, where, ctx)
    if rule.slices and rule.discriminators:
        for sname, srule in rule.slices.items():
            matched = [(k, v) for k, v in items if _in_slice(srule, rule.discriminators, k, v)]
            _check(srule, matched, f"{where}:{sname}", ctx, depth + 1)
    dicts = [v for _, v in items if isinstance(v, dict)]
    if not dicts or depth > 40:
        return
    for cname, crule in rule.children.items():
        for v in dicts:
            _check(crule, _values(v, cname), f"{where}.{cname}", ctx, depth + 1)
    for prof in rule.profiles:
        prule = ctx.pk.rule(prof)
        if prule is None:
            continue
        for cname, crule in prule.children.items():
            for v in dicts:
                _check(crule, _values(v, cname), f"{where}.{cname}", ctx, depth + 1)


def _check_binding(binding: tuple[str, str], value: Any, where: str, ctx: _Context) -> None:
    strength, vs = binding
    codes = _codings(value)
    if not codes:
        return
    if strength == "required":
        known = R4_REQUIRED_VALUE_SETS.get(vs)
        if known is not None:
            system, members = known
            if not any(c in members and (system is None or s is None or s == system) for s, c in codes):
                ctx.problem(where, f"code not in the required value set {vs}")
        else:
            listed = ctx.pk.value_set_codes(vs)
            if listed is not None and not any((s, c) in listed for s, c in codes):
                ctx.problem(where, f"code not in the required value set {vs}")
    if strength in ("required", "extensible", "preferred"):
        allowed = ctx.pk.systems_for_value_set(vs)
        if allowed:
            for s, _c in codes:
                if s is not None and s in ctx.pk.jp_systems and s not in allowed:
                    ctx.problem(
                        where,
                        f"code system {s} is not one the binding {vs} names ({', '.join(sorted(allowed))})",
                    )


def _type_of(pk: Packages, profile: str) -> str:
    sd = pk.structure_definitions.get(profile)
    if sd is not None:
        return str(sd.get("type", ""))
    return (
        profile.rsplit("/", 1)[-1] if profile.startswith("http://hl7.org/fhir/StructureDefinition/") else ""
    )


def _check_target(targets: tuple[str, ...], ref: Json, where: str, ctx: _Context) -> None:
    r = ref.get("reference")
    if not isinstance(r, str):
        return
    target = ctx.resolve.get(r)
    if target is None:
        return  # dangling references are the document check's
    types = {_type_of(ctx.pk, t) for t in targets}
    if "" not in types and "Resource" not in types and target.get("resourceType") not in types:
        ctx.problem(
            where, f"references a {target.get('resourceType')}, the profile allows {', '.join(sorted(types))}"
        )


_PATIENT_SYSTEM = re.compile(re.escape(cs.PATIENT_ID_PREFIX) + r"\d{10}")


def _jp_text_rules(res: Json, ctx: _Context) -> None:
    """Rules JP Core writes in its element comments, not as constraints."""
    rt = res.get("resourceType")
    if rt == "Patient":
        if not any(
            isinstance(i, dict) and _PATIENT_SYSTEM.fullmatch(str(i.get("system", "")))
            for i in res.get("identifier", ())
        ):
            ctx.problem(
                "Patient.identifier.system",
                f"no identifier in the namespace {cs.PATIENT_ID_PREFIX} + 10-digit medical institution code",
            )
        reps = []
        for name in res.get("name", ()):
            rep = [
                e.get("valueCode")
                for e in name.get("extension", ())
                if isinstance(e, dict) and e.get("url") == cs.EN_REPRESENTATION
            ]
            if not rep or rep[0] not in ("IDE", "SYL", "ABC"):
                ctx.problem(
                    "Patient.name.extension", "name without iso21090-EN-representation IDE, SYL or ABC"
                )
            reps.extend(rep)
        if "IDE" not in reps:
            ctx.problem("Patient.name", "no kanji name (iso21090-EN-representation IDE)")
    elif rt == "Condition":
        allowed = ctx.pk.condition_code_systems()
        code = res.get("code")
        for c in code.get("coding", ()) if isinstance(code, dict) else ():
            if c.get("system") not in allowed:
                names = ", ".join(sorted(allowed))
                ctx.problem(
                    "Condition.code.coding.system",
                    f"code system {c.get('system')} is not one JP_Condition_eCS names ({names})",
                )


def _walk_codings(value: Any, where: str, ctx: _Context) -> None:
    """Every coding and coded quantity: a system is given, and it is a JP system's preferred URI."""
    if isinstance(value, dict):
        code = value.get("code")
        if isinstance(code, str) and ("value" in value or where.endswith(".coding")):
            system = value.get("system")
            if system is None:
                ctx.problem(where, "code without a system")
            else:
                preferred = ctx.pk.alias_to_preferred.get(system)
                if preferred is not None:
                    ctx.problem(where, f"code system {system} is an alias; JP Core prefers {preferred}")
        for k, v in value.items():
            if k not in ("contained", "text"):
                _walk_codings(v, f"{where}.{k}", ctx)
    elif isinstance(value, list):
        for v in value:
            _walk_codings(v, where, ctx)


def check_resource(res: Json, pk: Packages, resolve: dict[str, Json], prefix: str) -> list[str]:
    """Problems of one resource against the JP profiles in its ``meta.profile``."""
    problems: list[str] = []
    rt = str(res.get("resourceType", ""))
    profiles = res.get("meta", {}).get("profile", ()) if isinstance(res.get("meta"), dict) else ()
    local = dict(resolve)
    for c in res.get("contained", ()):
        if isinstance(c, dict) and "id" in c:
            local["#" + str(c["id"])] = c
    for url in profiles:
        if not str(url).startswith("http://jpfhir.jp/"):
            continue
        name = str(url).rsplit("/", 1)[-1]
        ctx = _Context(pk, local, problems, prefix, name)
        rule = pk.rule(url)
        if rule is None:
            problems.append(f"{prefix}: meta.profile {url} is not a profile of the JP packages")
            continue
        if pk.structure_definitions[url].get("type") != rt:
            problems.append(
                f"{prefix}: profile {name} is for {pk.structure_definitions[url].get('type')}, not {rt}"
            )
            continue
        for cname, crule in rule.children.items():
            _check(crule, _values(res, cname), f"{rt}.{cname}", ctx)
        _jp_text_rules(res, ctx)
    _walk_codings(res, rt, _Context(pk, local, problems, prefix, "JP NamingSystems"))
    for i, c in enumerate(res.get("contained", ())):
        if isinstance(c, dict):
            problems.extend(check_resource(c, pk, local, f"{prefix} contained[{i}] {c.get('resourceType')}"))
    return problems


# ---------------------------------------------------------------------------------- IPS / document
def structure_problems(bundle: Json) -> list[str]:
    """What ``fhir.resources.R4B`` finds wrong when it parses ``bundle`` (locations and messages only,
    never values, which may be patient data)."""
    from fhir.resources.R4B.bundle import Bundle
    from pydantic import ValidationError

    from restore.fhir.bundle import dumps

    try:
        Bundle.model_validate(orjson.loads(dumps(bundle)))
    except ValidationError as e:
        return [f"structure: {'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
    return []


def _references(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for k, v in value.items():
            if k == "reference" and isinstance(v, str):
                yield v
            elif k != "contained":
                yield from _references(v)
    elif isinstance(value, list):
        for v in value:
            yield from _references(v)


def _loinc(concept: Any) -> set[str]:
    if not isinstance(concept, dict):
        return set()
    return {
        c.get("code", "")
        for c in concept.get("coding", ())
        if isinstance(c, dict) and c.get("system") == cs.LOINC
    }


def _xhtml_problem(text: Any) -> str | None:
    if not isinstance(text, dict) or not isinstance(text.get("div"), str):
        return "no narrative text"
    if text.get("status") not in ("generated", "extensions", "additional", "empty"):
        return "narrative status missing or unknown"
    try:
        root = ET.fromstring(text["div"])
    except ET.ParseError:
        return "narrative div is not well-formed XML"
    if root.tag != "{http://www.w3.org/1999/xhtml}div":
        return "narrative is not an XHTML div"
    return None


def document_problems(bundle: Json) -> list[str]:
    """IPS document rules (see the module doc)."""
    out: list[str] = []
    if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "document":
        return ["Bundle: not a document Bundle"]
    ident = bundle.get("identifier")
    if not isinstance(ident, dict) or not ident.get("system") or not ident.get("value"):
        out.append("Bundle.identifier: a document needs an identifier with system and value (bdl-9)")
    if not bundle.get("timestamp"):
        out.append("Bundle.timestamp: a document needs a timestamp (bdl-10)")
    entries = bundle.get("entry") or []
    by_url: dict[str, Json] = {}
    for i, e in enumerate(entries):
        url, res = e.get("fullUrl"), e.get("resource")
        if not isinstance(url, str) or not isinstance(res, dict):
            out.append(f"entry[{i}]: fullUrl and resource are required")
            continue
        if url in by_url:
            out.append(f"entry[{i}]: fullUrl is not unique (bdl-7)")
        by_url[url] = res
        rid = res.get("id")
        if url.startswith("urn:uuid:") and rid is not None and rid != url[9:]:
            out.append(f"entry[{i}]: resource id differs from its urn:uuid fullUrl")
    if not entries or not isinstance(entries[0].get("resource"), dict):
        return [*out, "Bundle.entry: a document starts with its Composition (bdl-11)"]
    comp = entries[0]["resource"]
    if comp.get("resourceType") != "Composition":
        return [*out, "Bundle.entry[0]: a document starts with its Composition (bdl-11)"]
    if IPS_DOCUMENT_TYPE not in _loinc(comp.get("type")):
        out.append(f"Composition.type: not LOINC {IPS_DOCUMENT_TYPE} (Patient summary Document)")
    for name in ("status", "date", "title"):
        if not comp.get(name):
            out.append(f"Composition.{name}: required")
    subject = comp.get("subject", {}).get("reference") if isinstance(comp.get("subject"), dict) else None
    if not subject or by_url.get(subject, {}).get("resourceType") != "Patient":
        out.append("Composition.subject: must reference the Patient entry")
    authors = comp.get("author") or []
    if not authors:
        out.append("Composition.author: required")
    patients = [u for u, r in by_url.items() if r.get("resourceType") == "Patient"]
    if len(patients) != 1:
        out.append(f"Bundle: exactly one Patient entry expected, found {len(patients)}")
    seen: dict[str, int] = {}
    for s_i, section in enumerate(comp.get("section") or []):
        where = f"Composition.section[{s_i}]"
        codes = _loinc(section.get("code"))
        if not codes:
            out.append(f"{where}.code: a LOINC section code is required")
        for c in codes:
            seen[c] = seen.get(c, 0) + 1
        if not section.get("title"):
            out.append(f"{where}.title: required")
        bad = _xhtml_problem(section.get("text"))
        if bad:
            out.append(f"{where}.text: {bad}")
        refs = [x.get("reference") for x in section.get("entry") or [] if isinstance(x, dict)]
        empty = section.get("emptyReason")
        if refs and empty:
            out.append(f"{where}: emptyReason on a section with entries (cmp-2)")
        if not refs and not empty:
            out.append(f"{where}: neither entries nor emptyReason (ips-comp-1)")
        if empty:
            reasons = {
                c.get("code")
                for c in (empty.get("coding") or [])
                if isinstance(c, dict) and c.get("system") == cs.LIST_EMPTY_REASON
            }
            if not reasons & EMPTY_REASONS:
                out.append(f"{where}.emptyReason: not a code of {cs.LIST_EMPTY_REASON}")
        allowed = set().union(*(IPS_SECTION_ENTRIES.get(c, frozenset()) for c in codes)) if codes else set()
        for r in refs:
            target = by_url.get(r) if isinstance(r, str) else None
            if target is None:
                out.append(f"{where}.entry: reference not resolved in the Bundle")
            elif allowed and target.get("resourceType") not in allowed:
                out.append(f"{where}.entry: a {target.get('resourceType')} does not belong in this section")
    for code, name in IPS_REQUIRED_SECTIONS.items():
        if seen.get(code, 0) != 1:
            found = seen.get(code, 0)
            out.append(
                f"Composition.section: the {name} section ({code}) must be present once, found {found}"
            )
    # references resolve; every entry is reachable from the Composition
    index = {e.get("fullUrl"): i for i, e in enumerate(entries)}
    first = entries[0].get("fullUrl")
    if not isinstance(first, str) or first not in by_url:
        return out
    reach = {first}
    todo = [first]
    while todo:
        url = todo.pop()
        res = by_url[url]
        for r in _references(res):
            if r.startswith("#"):
                if not any(
                    isinstance(c, dict) and "#" + str(c.get("id")) == r for c in res.get("contained", ())
                ):
                    out.append(
                        f"entry[{index[url]}] {res.get('resourceType')}: contained reference not resolved"
                    )
                continue
            if r not in by_url:
                out.append(
                    f"entry[{index[url]}] {res.get('resourceType')}: reference not resolved in the Bundle"
                )
            elif r not in reach:
                reach.add(r)
                todo.append(r)
    for i, e in enumerate(entries):
        if isinstance(e.get("fullUrl"), str) and e["fullUrl"] not in reach:
            out.append(
                f"entry[{i}] {e.get('resource', {}).get('resourceType')}: not referenced from the Composition"
            )
    return out


def check_bundle(bundle: Json, packages: Packages | None = None, *, structure: bool = True) -> list[str]:
    """Problems of a patient summary Bundle (empty: conformant).  ``structure=False`` skips the
    (slowest) ``fhir.resources`` parse."""
    pk = packages if packages is not None else load_packages()
    problems = structure_problems(bundle) if structure else []
    problems.extend(document_problems(bundle))
    resolve = {
        e["fullUrl"]: e["resource"]
        for e in bundle.get("entry") or []
        if isinstance(e, dict) and isinstance(e.get("fullUrl"), str) and isinstance(e.get("resource"), dict)
    }
    for i, e in enumerate(bundle.get("entry") or []):
        res = e.get("resource") if isinstance(e, dict) else None
        if isinstance(res, dict):
            problems.extend(check_resource(res, pk, resolve, f"entry[{i}] {res.get('resourceType')}"))
    return list(dict.fromkeys(problems))
