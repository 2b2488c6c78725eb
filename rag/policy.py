"""Redaction policies: the YAML files under ``policies/`` read, validated and frozen.

A policy says which entity types must leave a document before it is chunked into the catalog,
how each one is replaced (typed placeholder, mask or keyed hash), how sure a detector must be,
which terms are never redacted, and which extra pattern recognizers (medical record numbers,
street addresses, ...) join Presidio's own. The file is data; :class:`PolicyFile` (pydantic)
is its schema (``policies/schema.json`` is generated from it), and :class:`Policy` is the frozen
value that :mod:`rag.redaction` runs. ``Policy.content_hash`` is the sha256 of the file bytes:
the catalog stores it so that a changed policy re-processes documents.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rag.errors import PolicyInvalidError

_ENTITY = r"^[A-Z][A-Z0-9_]*$"
_POLICY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
OperatorKind = Literal["replace", "mask", "hash", "pseudonymise"]


# -- schema (pydantic, at the edge) ----------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OperatorSpec(_Strict):
    """How one entity type is replaced."""

    type: OperatorKind = "replace"
    masking_char: str = Field(default="*", min_length=1, max_length=1)
    keep_last: int = Field(default=0, ge=0, le=4, description="mask only: characters left visible at the end")


class PatternSpec(_Strict):
    name: str = Field(min_length=1)
    regex: str = Field(min_length=1)
    score: float = Field(ge=0.0, le=1.0)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        import regex

        try:
            regex.compile(value)
        except regex.error as exc:
            raise ValueError(f"regex does not compile: {exc}") from None
        return value


class RecognizerSpec(_Strict):
    """A custom pattern recognizer (a Presidio ``PatternRecognizer`` as data)."""

    name: str = Field(min_length=1)
    entity: str = Field(pattern=_ENTITY)
    patterns: list[PatternSpec] = Field(min_length=1)
    context: list[str] = Field(default_factory=list)
    ignore_case: bool = True
    validator: Literal["luhn", "phone_digits"] | None = Field(
        default=None, description="check a match must pass (luhn: score 1.0 if valid, dropped if not; "
                                  "phone_digits: dropped unless it holds 7 to 15 digits, score unchanged)")


class DetectionSpec(_Strict):
    """Defence in depth beyond Presidio's recognizers."""

    case_variants: bool = Field(
        default=True, description="re-run NER on a title-cased copy of ALL-CAPS names")
    propagate_names: bool = Field(
        default=True, description="also remove other mentions of a detected name's words in the same text")
    ner_person_score: float = Field(
        default=0.85, ge=0.0, le=1.0,
        description="score given to spaCy NER's PERSON entities; below the PERSON threshold they are dropped")
    vocabulary: bool = Field(
        default=True, description="find names, places and streets by words English does not use (wordfreq), "
                                  "words in another script, and a rare word before a house number")
    strict: bool = Field(
        default=False, description="fail closed: every capitalised word English does not use becomes a "
                                   "placeholder wherever it stands (over-redacts; see README for its cost)")
    phone_leniency: Literal["possible", "valid"] = Field(
        default="possible", description="libphonenumber leniency: possible (any number of a possible length, "
                                        "extensions, +CC without separators) or valid (allocated ranges only)")
    phone_regions: list[str] = Field(
        default_factory=lambda: ["US", "GB"], min_length=1,
        description="regions whose national phone formats libphonenumber checks (ISO 3166 codes; numbers "
                    "with a + prefix are found in any region). Each region is one more scan of every text.")


class PolicyFile(_Strict):
    """Schema of ``policies/*.yaml``."""

    name: str = Field(pattern=_POLICY_NAME.pattern)
    extends: str | None = Field(default=None, pattern=_POLICY_NAME.pattern,
                                description="a policy in the same directory whose settings this one adds to")
    description: str = ""
    entities: list[str] = Field(min_length=1)
    default_operator: OperatorSpec = OperatorSpec()
    operators: dict[str, OperatorSpec] = Field(default_factory=dict)
    thresholds: dict[str, float] = Field(default_factory=lambda: {"default": 0.35})
    allow_list: list[str] = Field(default_factory=list)
    detection: DetectionSpec = DetectionSpec()
    recognizers: list[RecognizerSpec] = Field(default_factory=list)

    @field_validator("entities")
    @classmethod
    def _entity_names(cls, value: list[str]) -> list[str]:
        bad = [e for e in value if not re.match(_ENTITY, e)]
        if bad:
            raise ValueError(f"entity types must be UPPER_SNAKE_CASE: {bad}")
        if len(set(value)) != len(value):
            raise ValueError("entities lists a type twice")
        return value

    @field_validator("thresholds")
    @classmethod
    def _threshold_range(cls, value: dict[str, float]) -> dict[str, float]:
        for key, score in value.items():
            if not 0.0 <= score <= 1.0:
                raise ValueError(f"threshold for {key} must be within [0, 1]")
        return value

    def merged_onto(self, base: PolicyFile) -> PolicyFile:
        """This policy's settings added to (and overriding) ``base``'s."""
        own = {r.name for r in self.recognizers}
        return PolicyFile.model_validate({
            **self.model_dump(exclude={"extends"}),
            "entities": base.entities + [e for e in self.entities if e not in base.entities],
            "default_operator": (self.default_operator if "default_operator" in self.model_fields_set
                                 else base.default_operator).model_dump(),
            "operators": {k: v.model_dump() for k, v in (base.operators | self.operators).items()},
            "thresholds": base.thresholds | self.thresholds,
            "allow_list": base.allow_list + [a for a in self.allow_list if a not in base.allow_list],
            "detection": (self.detection if "detection" in self.model_fields_set else base.detection).model_dump(),
            "recognizers": [r.model_dump() for r in base.recognizers if r.name not in own]
                           + [r.model_dump() for r in self.recognizers],
        })

    @model_validator(mode="after")
    def _types_are_listed(self) -> PolicyFile:
        if self.extends is not None:
            return self  # checked once merged onto its base
        listed = set(self.entities)
        for where, keys in (("operators", self.operators), ("thresholds", self.thresholds)):
            unknown = sorted(k for k in keys if k not in listed and k != "default")
            if unknown:
                raise ValueError(f"{where} names entity types not in entities: {unknown}")
        unknown = sorted({r.entity for r in self.recognizers} - listed)
        if unknown:
            raise ValueError(f"recognizers detect entity types not in entities: {unknown}")
        names = [r.name for r in self.recognizers]
        if len(set(names)) != len(names):
            raise ValueError("two recognizers share a name")
        return self


def policy_json_schema() -> dict[str, Any]:
    """The JSON schema of policy files (what ``policies/schema.json`` holds)."""
    return PolicyFile.model_json_schema()


# -- the frozen policy (inside) --------------------------------------------------------------------


@dataclass(frozen=True)
class Operator:
    kind: OperatorKind = "replace"
    masking_char: str = "*"
    keep_last: int = 0


@dataclass(frozen=True)
class PatternRule:
    name: str
    regex: str
    score: float


@dataclass(frozen=True)
class CustomRecognizer:
    name: str
    entity: str
    patterns: tuple[PatternRule, ...]
    context: tuple[str, ...] = ()
    ignore_case: bool = True
    validator: str | None = None


@dataclass(frozen=True)
class Policy:
    """A validated redaction policy. Hashable; never holds document text."""

    name: str
    content_hash: str
    entities: tuple[str, ...]
    operators: tuple[tuple[str, Operator], ...] = ()
    default_operator: Operator = field(default_factory=Operator)
    thresholds: tuple[tuple[str, float], ...] = ()
    default_threshold: float = 0.35
    allow_list: tuple[str, ...] = ()
    recognizers: tuple[CustomRecognizer, ...] = ()
    case_variants: bool = True
    propagate_names: bool = True
    ner_person_score: float = 0.85
    vocabulary: bool = True
    strict: bool = False
    phone_leniency: Literal["possible", "valid"] = "possible"
    phone_regions: tuple[str, ...] = ("US", "GB")
    description: str = ""

    def operator_for(self, entity: str) -> Operator:
        return dict(self.operators).get(entity, self.default_operator)

    def uses_operator(self, kind: OperatorKind) -> bool:
        """Whether any entity type (or the default) is replaced by this operator (pseudonymise needs the vault)."""
        return any(op.kind == kind for op in (self.default_operator, *dict(self.operators).values()))

    def threshold_for(self, entity: str) -> float:
        return dict(self.thresholds).get(entity, self.default_threshold)


def _from_file_model(model: PolicyFile, content_hash: str) -> Policy:
    def op(spec: OperatorSpec) -> Operator:
        return Operator(kind=spec.type, masking_char=spec.masking_char, keep_last=spec.keep_last)

    thresholds = dict(model.thresholds)
    default_threshold = thresholds.pop("default", 0.35)
    return Policy(
        name=model.name,
        content_hash=content_hash,
        entities=tuple(model.entities),
        operators=tuple(sorted((k, op(v)) for k, v in model.operators.items())),
        default_operator=op(model.default_operator),
        thresholds=tuple(sorted(thresholds.items())),
        default_threshold=default_threshold,
        allow_list=tuple(model.allow_list),
        recognizers=tuple(
            CustomRecognizer(name=r.name, entity=r.entity,
                             patterns=tuple(PatternRule(p.name, p.regex, p.score) for p in r.patterns),
                             context=tuple(r.context), ignore_case=r.ignore_case, validator=r.validator)
            for r in model.recognizers),
        case_variants=model.detection.case_variants,
        propagate_names=model.detection.propagate_names,
        ner_person_score=model.detection.ner_person_score,
        vocabulary=model.detection.vocabulary,
        strict=model.detection.strict,
        phone_leniency=model.detection.phone_leniency,
        phone_regions=tuple(r.upper() for r in model.detection.phone_regions),
        description=model.description,
    )


def resolve_policy_path(name_or_path: str, policies_dir: Path) -> Path:
    """``default`` -> ``policies_dir/default.yaml``; an existing file path is used as given."""
    candidate = Path(name_or_path)
    if candidate.suffix in {".yaml", ".yml"} or candidate.is_file():
        return candidate
    if not _POLICY_NAME.match(name_or_path):
        raise PolicyInvalidError(f"policy name {name_or_path!r} is not a plain name; pass a name or a .yaml path")
    return Path(policies_dir) / f"{name_or_path}.yaml"


def parse_policy(data: bytes, source: str = "<bytes>", policies_dir: Path | None = None,
                 _seen: frozenset[str] = frozenset()) -> Policy:
    """Validate policy file bytes against the schema; ``source`` names it in error messages.

    A policy that ``extends`` another is merged onto it; its ``content_hash`` then covers both
    files (sha256 of the base's hash and this file's bytes), so editing the base re-processes too.
    """
    model, digest = _read_model(data, source, policies_dir, _seen)
    return _from_file_model(model, digest)


def _read_model(data: bytes, source: str, policies_dir: Path | None,
                seen: frozenset[str]) -> tuple[PolicyFile, str]:
    try:
        raw = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise PolicyInvalidError(f"policy {source} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise PolicyInvalidError(f"policy {source} must be a YAML mapping, got {type(raw).__name__}")
    try:
        model = PolicyFile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors())
        raise PolicyInvalidError(f"policy {source} violates the schema ({problems}); "
                                 "see policies/schema.json") from None
    digest = hashlib.sha256(data).hexdigest()
    if model.extends is None:
        return model, digest
    if policies_dir is None or model.extends in seen:
        raise PolicyInvalidError(f"policy {source} extends {model.extends!r}, which cannot be resolved "
                                 "(no policies directory, or a cycle)")
    base_path = resolve_policy_path(model.extends, policies_dir)
    try:
        base_data = base_path.read_bytes()
    except OSError as exc:
        raise PolicyInvalidError(f"policy {source} extends {model.extends!r} but {base_path} cannot be read "
                                 f"({type(exc).__name__})") from None
    base, base_digest = _read_model(base_data, str(base_path), policies_dir, seen | {model.name})
    try:
        merged = model.merged_onto(base)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors())
        raise PolicyInvalidError(f"policy {source} merged onto {model.extends!r} violates the schema "
                                 f"({problems})") from None
    return merged, hashlib.sha256(f"{base_digest}:{digest}".encode()).hexdigest()


def load_policy(name_or_path: str, policies_dir: Path) -> Policy:
    """Load and validate a policy by name (``policies_dir/NAME.yaml``) or by file path.

    Raises :class:`~rag.errors.PolicyInvalidError` when the file is missing or violates the schema.
    """
    path = resolve_policy_path(name_or_path, policies_dir)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PolicyInvalidError(f"policy file {path} cannot be read ({type(exc).__name__}); "
                                 f"known policies: {available_policies(policies_dir)}") from None
    return parse_policy(data, str(path), path.parent)


def available_policies(policies_dir: Path) -> list[str]:
    return sorted(p.stem for p in Path(policies_dir).glob("*.yaml") if p.stem != "retention")  # retention rules


def write_schema(path: Path) -> None:
    """Regenerate ``policies/schema.json`` (``python -m rag.policy``)."""
    path.write_text(json.dumps(policy_json_schema(), indent=2, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write_schema(Path(__file__).resolve().parent.parent / "policies" / "schema.json")
