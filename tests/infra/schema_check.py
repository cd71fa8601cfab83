"""Resource bodies checked against the vendored bicep-types-az schemas: the offline stand-in for `bicep build`.

The Bicep compiler type-checks every resource body against the types generated from the Azure REST
specs (github.com/Azure/bicep-types-az). It cannot run here, so this module does the part that
catches real deployment failures, on the templates as pycep parses them:

- every property name exists at its place (unknown names are errors, e.g. ``anonymousPullEnabled``
  on ``Microsoft.ContainerRegistry/registries@2023-07-01``), nested objects and arrays included;
- read-only properties are not set; required properties are present;
- literal values have the right kind (string, int, bool, object, array) and length/range;
- literal strings are among an enum's values: exactly for a closed enum; for an open one
  (modelAsString, which Bicep itself does not police) ignoring case, and a value the spec does not
  list is reported unless the caller lists it in ``open_enum_values``, since it is usually a typo;
- discriminated objects (``computeType``, ``datastoreType``, ``credentialsType``) use a known
  discriminator value and only that variant's properties.

pycep writes identifiers and string literals alike as plain strings, so a string that names a
parameter or variable of the template is resolved: a variable to its value, a parameter to its
``@allowed`` values (each checked), or else to its declared type and its literal default. Function
calls and other expressions are not evaluated (their type is unknown here), nor is the ``pattern`` of
a string.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

SCHEMAS = Path(__file__).resolve().with_name("schemas")
# Body keys that are Bicep syntax, not resource properties.
BICEP_KEYS = frozenset({"parent", "scope", "dependsOn"})
REQUIRED, READ_ONLY = 1, 2
PARAM_KINDS = {"string": "string", "int": "int", "bool": "bool", "object": "object", "array": "array"}


@cache
def _load(name: str) -> list[dict[str, Any]]:
    return json.loads((SCHEMAS / name).read_text())


@cache
def index() -> dict[str, Any]:
    """schemas/index.json: resource name -> file#/position, and the source commit and paths."""
    return json.loads((SCHEMAS / "index.json").read_text())


@dataclass(frozen=True)
class Ref:
    """A type in one vendored types.json."""

    file: str
    position: int

    def get(self) -> dict[str, Any]:
        """The type entry."""
        return _load(self.file)[self.position]

    def to(self, node: dict[str, Any]) -> Ref:
        """The type a ``{"$ref": "#/N"}`` inside this file points at."""
        return Ref(self.file, int(str(node["$ref"]).removeprefix("#/")))


def body_type(resource_type: str, api_version: str) -> Ref | None:
    """The body type of ``resource_type@api_version`` (case-insensitive), or None when not vendored."""
    wanted = f"{resource_type}@{api_version}".lower()
    for name, ref in index()["resources"].items():
        if name.lower() == wanted:
            file, position = ref["$ref"].split("#/")
            resource = Ref(file, int(position))
            return resource.to(resource.get()["body"])
    return None


# ---- values as pycep writes them --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unknown:
    """An expression whose value is not known offline, with its kind when the syntax tells it."""

    kind: str | None = None


@dataclass(frozen=True)
class Choices:
    """A parameter with @allowed values: every one must fit."""

    values: tuple[Any, ...]


@dataclass
class Context:
    """The template a body comes from: what a bare string may name."""

    template: dict[str, Any]
    open_enum_values: frozenset[str] = frozenset()
    resolving: set[str] = field(default_factory=set)

    def resolve(self, value: Any) -> Any:
        """A literal, an object/array literal, Choices, or Unknown."""
        if isinstance(value, str):
            return self._identifier(value)
        if isinstance(value, dict) and _is_node(value, "function"):
            return Unknown()
        if isinstance(value, dict) and _is_node(value, "operator"):
            operator = value["operator"]
            if operator["type"] == "conditional":
                operands = operator["operands"]
                branches = [self.resolve(operands["true_value"]), self.resolve(operands["false_value"])]
                return Choices(tuple(branches))
            return Unknown()
        return value

    def _identifier(self, text: str) -> Any:
        template = self.template
        if text in (template.get("parameters") or {}):
            block = template["parameters"][text]
            for decorator in block.get("decorators") or []:
                if decorator["type"] == "allowed":
                    return Choices(tuple(decorator["argument"]))
            kind = Unknown(PARAM_KINDS.get(str(block.get("type"))))
            default = block.get("default")
            if isinstance(default, (str, int, bool)):
                return Choices((kind, default))  # any value of the type, and the default as written
            return kind
        if text in (template.get("variables") or {}) and text not in self.resolving:
            self.resolving.add(text)
            try:
                return self.resolve(template["variables"][text]["value"])
            finally:
                self.resolving.discard(text)
        # A resource's or module's symbolic name is never a property value by itself (Bicep-only keys
        # such as parent and scope are not checked), so such a string is a literal: category: 'workbook'.
        if "${" in text:
            return Unknown("string")
        return text


def _is_node(value: dict[str, Any], key: str) -> bool:
    inner = value.get(key)
    return set(value) == {key} and isinstance(inner, dict) and "type" in inner


def _kind(value: Any) -> str | None:
    if isinstance(value, Unknown):
        return value.kind
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return None


# ---- the check --------------------------------------------------------------------------------------------------


def check_body(
    resource_type: str,
    api_version: str,
    config: dict[str, Any],
    template: dict[str, Any],
    open_enum_values: frozenset[str] = frozenset(),
) -> list[str]:
    """Every mismatch between a resource body and its schema, as ``path: problem`` lines.

    ``open_enum_values`` are values accepted where the spec's enum is open (modelAsString: the
    service takes values the spec does not list), each one a deliberate exception.
    """
    ref = body_type(resource_type, api_version)
    if ref is None:
        return [f"{resource_type}@{api_version}: not in tests/infra/schemas (run tests/infra/schemas/vendor.py)"]
    body = {key: value for key, value in config.items() if key not in BICEP_KEYS}
    errors: list[str] = []
    _check(Context(template, open_enum_values), body, ref, "", errors)
    return errors


def _check(context: Context, raw: Any, ref: Ref, path: str, errors: list[str]) -> None:
    value = context.resolve(raw)
    if isinstance(value, Choices):
        for choice in value.values:
            _check(context, choice, ref, path, errors)
        return
    schema = ref.get()
    kind = schema["$type"]
    if isinstance(value, Unknown) and kind not in ("UnionType",):
        expected = _expected_kind(ref)
        if value.kind and expected and value.kind not in expected:
            errors.append(f"{path or '.'}: a {value.kind} expression where the schema expects {'/'.join(expected)}")
        return
    if value is None or kind == "AnyType":
        return
    if kind == "UnionType":
        _check_union(context, raw, value, ref, path, errors)
    elif kind == "StringLiteralType":
        if value != schema["value"]:
            errors.append(f"{path}: {value!r} is not {schema['value']!r}")
    elif kind == "StringType":
        _check_string(value, schema, path, errors)
    elif kind == "IntegerType":
        _check_int(value, schema, path, errors)
    elif kind == "BooleanType":
        if not isinstance(value, bool):
            errors.append(f"{path}: {_show(value)} is not a bool")
    elif kind == "ArrayType":
        if not isinstance(value, list):
            errors.append(f"{path}: {_show(value)} is not an array")
            return
        for i, item in enumerate(value):
            _check(context, item, ref.to(schema["itemType"]), f"{path}[{i}]", errors)
    elif kind in ("ObjectType", "DiscriminatedObjectType"):
        _check_object(context, value, ref, path, errors)
    else:
        errors.append(f"{path}: schema type {kind} is not supported by schema_check.py")


def _expected_kind(ref: Ref) -> set[str]:
    """The value kinds a type accepts (empty: anything)."""
    schema = ref.get()
    kind = schema["$type"]
    simple = {
        "StringType": "string",
        "StringLiteralType": "string",
        "IntegerType": "int",
        "BooleanType": "bool",
        "ArrayType": "array",
        "ObjectType": "object",
        "DiscriminatedObjectType": "object",
    }
    if kind in simple:
        return {simple[kind]}
    if kind == "UnionType":
        kinds: set[str] = set()
        for element in schema["elements"]:
            inner = _expected_kind(ref.to(element))
            if not inner:
                return set()
            kinds |= inner
        return kinds
    return set()


def _check_union(context: Context, raw: Any, value: Any, ref: Ref, path: str, errors: list[str]) -> None:
    schema = ref.get()
    elements = [ref.to(element) for element in schema["elements"]]
    if isinstance(value, Unknown):
        expected = _expected_kind(ref)
        if value.kind and expected and value.kind not in expected:
            errors.append(f"{path}: a {value.kind} expression where the schema expects {'/'.join(sorted(expected))}")
        return
    literals = [e.get()["value"] for e in elements if e.get()["$type"] == "StringLiteralType"]
    if isinstance(value, str) and literals:
        is_open = any(e.get()["$type"] == "StringType" for e in elements)
        if value in literals:
            return
        if is_open and (value.lower() in {v.lower() for v in literals} or value in context.open_enum_values):
            return  # ARM compares an open enum's values ignoring case; the extra value is allowed on purpose
        kind = "open enum: the service may accept more, list it in open_enum_values" if is_open else "closed enum"
        errors.append(f"{path}: {value!r} is not one of {sorted(literals)} ({kind})")
        return
    attempts = []
    for element in elements:
        found: list[str] = []
        _check(context, raw, element, path, found)
        if not found:
            return
        attempts.append(found)
    errors.extend(min(attempts, key=len) if attempts else [f"{path}: no type of the union fits {_show(value)}"])


def _check_string(value: Any, schema: dict[str, Any], path: str, errors: list[str]) -> None:
    if not isinstance(value, str):
        errors.append(f"{path}: {_show(value)} is not a string")
        return
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    if len(value) < low or (high is not None and len(value) > high):
        errors.append(f"{path}: {value!r} has {len(value)} characters (min {low}, max {high})")


def _check_int(value: Any, schema: dict[str, Any], path: str, errors: list[str]) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        errors.append(f"{path}: {_show(value)} is not an int")
        return
    low, high = schema.get("minValue"), schema.get("maxValue")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = ", ".join(f"{word} {bound}" for word, bound in (("min", low), ("max", high)) if bound is not None)
        errors.append(f"{path}: {value} is out of range ({bounds})")


def _object_properties(context: Context, value: dict[str, Any], ref: Ref, path: str, errors: list[str]) -> Any:
    """(properties, additionalProperties, type name) of an object type, the discriminated variant chosen."""
    schema = ref.get()
    if schema["$type"] == "ObjectType":
        return schema.get("properties") or {}, schema.get("additionalProperties"), schema.get("name", "object")
    discriminator = schema["discriminator"]
    variants = {name: ref.to(element) for name, element in schema["elements"].items()}
    properties = dict(schema.get("baseProperties") or {})
    chosen = context.resolve(value.get(discriminator)) if discriminator in value else None
    if isinstance(chosen, str) and chosen in variants:
        variant = variants[chosen]
        properties.update(variant.get().get("properties") or {})
        return properties, variant.get().get("additionalProperties"), variant.get().get("name", schema["name"])
    if isinstance(chosen, str) or discriminator not in value:
        errors.append(
            f"{path}.{discriminator}: {chosen!r} is not one of {sorted(variants)} ({schema.get('name', 'object')})"
        )
        return None
    for variant in variants.values():  # an expression: any variant's properties may appear
        properties.update(variant.get().get("properties") or {})
    return properties, None, schema.get("name", "object")


def _check_object(context: Context, value: Any, ref: Ref, path: str, errors: list[str]) -> None:
    if not isinstance(value, dict):
        errors.append(f"{path}: {_show(value)} is not an object")
        return
    found = _object_properties(context, value, ref, path, errors)
    if found is None:
        return
    properties, additional, name = found
    keys = {str(key).strip("'"): item for key, item in value.items()}
    for key, item in keys.items():
        where = f"{path}.{key}" if path else key
        if key in properties:
            declared = properties[key]
            if declared.get("flags", 0) & READ_ONLY:
                errors.append(f"{where}: read-only in {name}, it cannot be set")
                continue
            _check(context, item, ref.to(declared["type"]), where, errors)
        elif additional is not None:
            _check(context, item, ref.to(additional), where, errors)
        else:
            errors.append(f"{where}: {name} has no property {key!r} (it has {', '.join(sorted(properties))})")
    missing = [k for k, declared in properties.items() if declared.get("flags", 0) & REQUIRED and k not in keys]
    if missing:
        errors.append(f"{path or '.'}: {name} requires {', '.join(sorted(missing))}")


def _show(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
