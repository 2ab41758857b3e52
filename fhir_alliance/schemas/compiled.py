"""A fast path for loading the JSON form: generated Python code for well-formed input, marshmallow
for everything else, with exactly the same accepted inputs, results and errors.

The marshmallow schemas stay the single source of truth. From each one this module GENERATES, once,
the source of a Python function per schema (and per schema it nests) by walking the schema's
fields: their data keys, required fields and defaults, unknown fields refused, and for each field
the checks and conversion that marshmallow's field class makes for a value it accepts:

* a string, strict integer or by-value enum member: an exact JSON type check (``type(v) is str``)
  and the value itself, or the member looked up in the enum's own value map;
* a boolean with ``truthy={True}``/``falsy={False}``: the JSON ``true``/``false`` only;
* a nested schema: a call to that schema's generated function; a list or a dict: a loop over
  the items with the item field's code inlined;
* any other field (our ``IdentifierField``, ``AwareDateTime``, ``StrictDecimal``, …): a call to
  its own ``_deserialize``, marshmallow's or ours;
* validators: marshmallow's ``Range``, ``Length``, ``OneOf`` and ``Equal`` as the comparisons they
  make, any other validator called as it is.

Then the schema's own ``@validates_schema`` and ``@post_load`` methods run as marshmallow calls
them, so the domain objects are built by the schemas' own code; the keywords marshmallow passes
them (``partial``, ``many``, ``unknown``) are left out only for a hook whose parsed source provably
never reads them (:func:`_ignores_keywords`). A field class is trusted to
load as a marshmallow class only when it overrides none of that class's loading methods
(:data:`_LOAD_METHODS`); otherwise its own ``_deserialize`` is called.

Anything unusual (another JSON type, an unknown key, a refused value, a hook's ``ValidationError``,
any exception) is not judged here: the input goes to ``schema.load`` and marshmallow decides and
words the errors. So the fast path can only accept what marshmallow accepts and return what it
returns; hypothesis property tests (``tests/schemas/test_compiled.py``) check both paths agree.

A schema with hooks this module does not replay (``pre_load``, ``@validates`` field validators,
``pass_original``), ``many=True``, ``partial``, unknown fields not refused, or a dotted
``attribute`` is not compiled: :func:`load_or_raise_fast` then uses marshmallow alone. :func:`json_schema` gives the
JSON schema (draft 7) of what a schema loads, generated the same way (for documentation and
clients; the loader does not need it).
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import threading
from collections.abc import Callable
from typing import Any

from marshmallow import Schema, fields, missing
from marshmallow.validate import Equal, Length, OneOf, Range

from fhir_alliance.schemas.common import AwareDateTime, IdentifierField, load_or_raise

__all__ = ["CompiledLoader", "compiled_loader", "json_schema", "load_or_raise_fast"]

#: Hook tags the generated loader replays; a schema with any other load-time hook is not compiled.
_REPLAYED_HOOKS = ("validates_schema", "post_load")
_UNSUPPORTED_HOOKS = ("pre_load", "validates")


class _Fallback(Exception):
    """The fast path declines this input; marshmallow decides."""


# --- JSON schema generation ---------------------------------------------------------------------


def _with_none(node: dict[str, Any], field: fields.Field[Any]) -> dict[str, Any]:
    if not field.allow_none:
        return node
    if "type" in node and set(node) <= {"type"}:
        types = node["type"] if isinstance(node["type"], list) else [node["type"]]
        return {"type": [*types, "null"]}
    return {"anyOf": [node, {"type": "null"}]}


def _validator_rules(field: fields.Field[Any]) -> dict[str, Any]:
    """JSON-schema keywords for the field's validators marshmallow ships."""
    rules: dict[str, Any] = {}
    for validator in field.validators:
        if isinstance(validator, Range) and validator.min_inclusive and validator.max_inclusive:
            if validator.min is not None:
                rules["minimum"] = validator.min
            if validator.max is not None:
                rules["maximum"] = validator.max
        elif isinstance(validator, Length) and validator.equal is None:
            low, high = ("minItems", "maxItems")
            if isinstance(field, fields.String):
                low, high = ("minLength", "maxLength")
            if validator.min is not None:
                rules[low] = validator.min
            if validator.max is not None:
                rules[high] = validator.max
        elif isinstance(validator, OneOf):
            rules["enum"] = list(validator.choices)
    return rules


def _field_schema(field: fields.Field[Any], stack: tuple[type, ...]) -> dict[str, Any]:
    """The JSON schema of one field's value; ``{}`` (anything) where the JSON type is not fixed,
    and where a schema nests itself (``stack``: the schemas being walked)."""
    node: dict[str, Any]
    if isinstance(field, fields.Nested):
        nested = field.schema
        node = {} if type(nested) in stack else _object_schema(nested, stack)
    elif isinstance(field, fields.Enum) and field.by_value:
        node = {"enum": [member.value for member in field.enum]}
    elif isinstance(
        field, fields.Enum | fields.String | IdentifierField | AwareDateTime | fields.DateTime
    ):
        node = {"type": "string"}
    elif isinstance(field, fields.Boolean):
        node = {}  # marshmallow's truthy/falsy sets accept more than JSON booleans (1 in {True})
    elif isinstance(field, fields.Integer):
        node = {"type": "integer"} if field.strict else {}
    elif isinstance(field, fields.Decimal | fields.Float):
        node = {"type": "number"}
    elif isinstance(field, fields.Dict):
        node = {"type": "object"}
        if field.value_field is not None:
            node["additionalProperties"] = _field_schema(field.value_field, stack)
    elif isinstance(field, fields.List):
        node = {"type": "array", "items": _field_schema(field.inner, stack)}
    else:
        node = {}
    node.update(_validator_rules(field))
    return _with_none(node, field)


def _object_schema(schema: Schema, stack: tuple[type, ...] = ()) -> dict[str, Any]:
    stack = (*stack, type(schema))
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, field in schema.load_fields.items():
        key = field.data_key if field.data_key is not None else name
        properties[key] = _field_schema(field, stack)
        if field.required:
            required.append(key)
    node: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        node["required"] = required
    if schema.unknown == "raise":
        node["additionalProperties"] = False
    return node


def json_schema(schema: Schema) -> dict[str, Any]:
    """The JSON schema (draft 7) of what ``schema`` loads, generated from its fields."""
    return {"$schema": "http://json-schema.org/draft-07/schema#", **_object_schema(schema)}


# --- the generated loader -------------------------------------------------------------------------

#: Methods through which a field class decides what it loads; a subclass that overrides none of
#: them loads exactly as the marshmallow class it inherits them from.
_LOAD_METHODS = (
    "deserialize",
    "_deserialize",
    "_validated",
    "_format_num",
    "_validate",
    "_validate_missing",
    "_load",
    "_test_collection",
)


def _behaves_as(field: fields.Field[Any]) -> type:
    """The class whose loading code ``field`` runs: the nearest class in its MRO (its own class
    first) that defines one of :data:`_LOAD_METHODS`."""
    for cls in type(field).__mro__:
        if any(name in cls.__dict__ for name in _LOAD_METHODS):
            return cls
    return fields.Field  # pragma: no cover - Field defines them


class _Namespace:
    """The names (constants, hooks, field methods) the generated functions of one schema tree
    share, and a counter for fresh names."""

    def __init__(self) -> None:
        self.names: dict[str, Any] = {"_F": _Fallback, "_MISSING": missing}
        self.functions: list[str] = []
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"_{hint}{self.count}"

    def const(self, value: Any, hint: str) -> str:
        name = self.name(hint)
        self.names[name] = value
        return name


class _Lines:
    """The body of one generated function."""

    def __init__(self, space: _Namespace) -> None:
        self.space = space
        self.lines: list[str] = []

    def add(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def name(self, hint: str) -> str:
        return self.space.name(hint)

    def const(self, value: Any, hint: str) -> str:
        return self.space.const(value, hint)


def _check_validators(body: _Lines, field: fields.Field[Any], out: str, indent: int) -> None:
    """The field's validators over ``out``: marshmallow's ``Range``, ``Length``, ``OneOf`` and
    ``Equal`` as the comparisons their ``__call__`` makes, any other validator called as it is
    (marshmallow ignores what a validator returns; only what it raises counts)."""
    for validator in field.validators:
        if type(validator) is Range:
            if validator.min is not None:
                low = body.const(validator.min, "min")
                op = "<" if validator.min_inclusive else "<="
                body.add(indent, f"if {out} {op} {low}: raise _F")
            if validator.max is not None:
                high = body.const(validator.max, "max")
                op = ">" if validator.max_inclusive else ">="
                body.add(indent, f"if {out} {op} {high}: raise _F")
        elif type(validator) is Length:
            size = body.name("size")
            body.add(indent, f"{size} = len({out})")
            if validator.equal is not None:
                body.add(indent, f"if {size} != {validator.equal!r}: raise _F")
                continue
            if validator.min is not None:
                body.add(indent, f"if {size} < {validator.min!r}: raise _F")
            if validator.max is not None:
                body.add(indent, f"if {size} > {validator.max!r}: raise _F")
        elif type(validator) is OneOf:
            choices = body.const(validator.choices, "choices")
            body.add(indent, f"if {out} not in {choices}: raise _F")
        elif type(validator) is Equal:
            body.add(indent, f"if {out} != {body.const(validator.comparable, 'equal')}: raise _F")
        else:
            body.add(indent, f"{body.const(validator, 'validator')}({out})")


def _string_enum(field: fields.Field[Any]) -> dict[Any, Any] | None:
    """Value → member of a by-value enum field whose values are all strings (the enum's own
    ``_value2member_map_``, which is what ``enum(value)`` looks in first)."""
    if not isinstance(field, fields.Enum) or field.by_value is not True:
        return None
    members: dict[Any, Any] = dict(field.enum._value2member_map_)
    if not members or not all(type(value) is str for value in members):
        return None
    return members


def _strict_boolean(field: fields.Field[Any]) -> bool:
    return (
        isinstance(field, fields.Boolean)
        and bool(field.truthy)
        and True in field.truthy
        and False in field.falsy
        and False not in field.truthy
    )


def _plain_string_keys(field: fields.Mapping[Any]) -> bool:
    keys = field.key_field
    if keys is None:
        return True
    return (
        _behaves_as(keys) is fields.String
        and not keys.validators
        and not keys.pre_load
        and not keys.post_load
    )


def _emit_value(
    body: _Lines,
    field: fields.Field[Any],
    value: str,
    out: str,
    indent: int,
    stack: tuple[type, ...],
    attribute: str,
    not_none: bool = False,
) -> None:
    """Lines that set ``out`` to what ``field.deserialize(value)`` returns for a present value, or
    raise where it would refuse it. ``attribute`` is the field name marshmallow passes along;
    ``not_none``: the caller has already handled a null value."""
    if field.pre_load or field.post_load:  # the field's own hooks: its whole deserialize
        call = body.const(field.deserialize, "deserialize")
        body.add(indent, f"{out} = {call}({value}, {attribute!r}, data)")
        return
    if field.allow_none and not not_none:
        body.add(indent, f"if {value} is None:")
        body.add(indent + 1, f"{out} = None")
        body.add(indent, "else:")
        indent += 1
    base = _behaves_as(field)
    enum = _string_enum(field) if base is fields.Enum else None
    if base is fields.String:
        body.add(indent, f"if type({value}) is not str: raise _F")
        body.add(indent, f"{out} = {value}")
    elif enum is not None:
        body.add(indent, f"if type({value}) is not str: raise _F")
        body.add(indent, f"{out} = {body.const(enum, 'members')}.get({value})")
        body.add(indent, f"if {out} is None: raise _F")
    elif base is fields.Boolean and _strict_boolean(field):
        body.add(indent, f"if {value} is True: {out} = True")
        body.add(indent, f"elif {value} is False: {out} = False")
        body.add(indent, "else: raise _F")
    elif base is fields.Integer and isinstance(field, fields.Integer) and field.strict:
        body.add(indent, f"if type({value}) is not int: raise _F")
        body.add(indent, f"{out} = {value}")
    elif (
        base is fields.Nested
        and isinstance(field, fields.Nested)
        and not field.many
        and field.unknown is None
        and type(field.schema) not in stack
    ):
        nested = _generate(field.schema, stack, body.space)
        body.add(indent, f"{out} = {nested}({value})")
    elif base is fields.List and isinstance(field, fields.List):
        item, loaded = body.name("item"), body.name("loaded")
        body.add(indent, f"if type({value}) is not list: raise _F")
        body.add(indent, f"{out} = []")
        body.add(indent, f"for {item} in {value}:")
        _emit_value(body, field.inner, item, loaded, indent + 1, stack, attribute)
        body.add(indent + 1, f"{out}.append({loaded})")
    elif (
        base is fields.Mapping
        and isinstance(field, fields.Mapping)
        and field.mapping_type is dict
        and field.value_field is not None
        and _plain_string_keys(field)
    ):
        key, item, loaded = body.name("key"), body.name("item"), body.name("loaded")
        body.add(indent, f"if type({value}) is not dict: raise _F")
        body.add(indent, f"{out} = {{}}")
        body.add(indent, f"for {key}, {item} in {value}.items():")
        if field.key_field is not None:
            body.add(indent + 1, f"if type({key}) is not str: raise _F")
        _emit_value(body, field.value_field, item, loaded, indent + 1, stack, attribute)
        body.add(indent + 1, f"{out}[{key}] = {loaded}")
    elif base is fields.Field:  # Raw and the like: the value as it is
        if not field.allow_none:
            body.add(indent, f"if {value} is None: raise _F")
        body.add(indent, f"{out} = {value}")
    else:  # any other field: its own _deserialize (marshmallow's code or ours)
        if not field.allow_none:
            body.add(indent, f"if {value} is None: raise _F")
        call = body.const(field._deserialize, "deserialize")
        body.add(indent, f"{out} = {call}({value}, {attribute!r}, data)")
    _check_validators(body, field, out, indent)


#: Names through which a function could read its keyword arguments without naming them.
_INTROSPECTION = frozenset(
    {"locals", "vars", "eval", "exec", "_getframe", "currentframe", "getframeinfo", "stack"}
)


def _ignores_keywords(method: Any) -> bool:
    """Whether a hook provably ignores the keyword arguments marshmallow passes it (``partial``,
    ``many``, ``unknown``): its source (parsed here) is ``def name(self, data, **kwargs)`` and its
    body never reads ``kwargs`` nor introspects its frame. Then calling it with ``data`` alone
    behaves the same and skips building the keywords dict (about 0.3 us a call). Anything else
    (no source, a wrapper, other parameters) gets marshmallow's keywords."""
    function = getattr(method, "__func__", method)
    if hasattr(function, "__wrapped__"):
        return False
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return False
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.FunctionDef):
        return False
    node = tree.body[0]
    params = node.args
    if (
        node.name != function.__name__
        or params.kwarg is None
        or params.vararg is not None
        or params.kwonlyargs
        or params.posonlyargs
        or len(params.args) != 2
        or params.defaults
    ):
        return False
    names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
    return params.kwarg.arg not in names and not names & _INTROSPECTION


def _check_compilable(schema: Schema) -> None:
    hooks = schema._hooks  # marshmallow's resolved hooks
    name = type(schema).__name__
    if schema.many or any(hooks[tag] for tag in _UNSUPPORTED_HOOKS):
        raise TypeError(f"{name} uses hooks the compiled loader cannot replay")
    for tag in _REPLAYED_HOOKS:
        for _, many, options in hooks[tag]:
            if many or options.get("pass_original"):
                raise TypeError(f"{name}: a {tag} hook it cannot replay")
    if schema.unknown != "raise":
        raise TypeError(f"{name} does not refuse unknown fields")
    if schema.partial:
        raise TypeError(f"{name} loads partially")
    for field_name, field in schema.load_fields.items():
        if "." in (field.attribute or field_name):
            raise TypeError(f"{name}.{field_name}: a dotted attribute")


def _generate(schema: Schema, stack: tuple[type, ...], space: _Namespace) -> str:
    """Generate the loader function of ``schema`` (and of the schemas it nests) into ``space``;
    returns its name. The function takes the JSON value and returns what ``schema.load`` returns,
    or raises (:class:`_Fallback`, ``ValidationError``, anything) where marshmallow must decide."""
    _check_compilable(schema)
    stack = (*stack, type(schema))
    function = space.name(f"load_{type(schema).__name__}_")
    body = _Lines(space)
    keys: set[str] = set()
    entries: list[str] = []
    for field_name, field in schema.load_fields.items():
        key = field.data_key if field.data_key is not None else field_name
        attribute = field.attribute or field_name
        keys.add(key)
        value, loaded = body.name("value"), body.name("loaded")
        entries.append(f"{attribute!r}: {loaded}")
        if field.required:  # absent: KeyError, so marshmallow reports it
            body.add(1, f"{value} = data[{key!r}]")
            _emit_value(body, field, value, loaded, 1, stack, field_name)
            continue
        default = field.load_default
        if default is None and field.allow_none and not (field.pre_load or field.post_load):
            # absent or null: None either way (what deserialize returns for both)
            body.add(1, f"{value} = data.get({key!r})")
            body.add(1, f"if {value} is None:")
            body.add(2, f"{loaded} = None")
            body.add(1, "else:")
            _emit_value(body, field, value, loaded, 2, stack, field_name, not_none=True)
            continue
        body.add(1, f"{value} = data.get({key!r}, _MISSING)")
        body.add(1, f"if {value} is _MISSING:")
        if callable(default):
            body.add(2, f"{loaded} = {body.const(default, 'default')}()")
        elif default is missing:
            body.add(2, f"{loaded} = _MISSING")
        else:
            body.add(2, f"{loaded} = {body.const(default, 'default')}")
        body.add(1, "else:")
        _emit_value(body, field, value, loaded, 2, stack, field_name)
    known = body.const(frozenset(keys), "keys")
    lines = [
        f"def {function}(data):",
        "    if type(data) is not dict: raise _F",
        f"    if not {known}.issuperset(data): raise _F",
        *body.lines,
        f"    result = {{{', '.join(entries)}}}",
    ]
    if any(not f.required and f.load_default is missing for f in schema.load_fields.values()):
        lines.append("    result = {k: v for k, v in result.items() if v is not _MISSING}")
    hooks = schema._hooks
    keywords = f"partial=None, many=False, unknown={schema.unknown!r}"  # what marshmallow passes
    for tag, hint, assign in (
        ("validates_schema", "hook_validates_schema_", ""),
        ("post_load", "hook_post_load_", "result = "),
    ):
        for hook, _, _ in hooks[tag]:
            method = getattr(schema, hook)
            call = body.const(method, hint)
            arguments = "result" if _ignores_keywords(method) else f"result, {keywords}"
            lines.append(f"    {assign}{call}({arguments})")
    lines.append("    return result")
    space.functions.append("\n".join(lines))
    return function


class CompiledLoader:
    """Loads with the generated function, falling back to ``schema.load`` for marshmallow's
    verdict and errors. Build one per schema instance and keep it (generating costs milliseconds).
    ``source`` is the generated Python code."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        space = _Namespace()
        function = _generate(schema, (), space)
        self.source = "\n\n".join(space.functions)
        code = compile(self.source, f"<compiled loader of {type(schema).__name__}>", "exec")
        exec(code, space.names)  # noqa: S102 - our own generated code, from our own schemas
        #: The generated function: the loaded object, or an exception for marshmallow to judge.
        self.fast: Callable[[Any], Any] = space.names[function]

    def load(self, data: object, *, prefix: str = "") -> Any:
        """Like :func:`~fhir_alliance.schemas.common.load_or_raise`: the loaded object, or
        :class:`InputError` with marshmallow's messages and field paths."""
        try:
            return self.fast(data)
        except Exception:  # anything unusual: marshmallow decides
            return load_or_raise(self.schema, data, prefix=prefix)


_LOADERS: dict[int, tuple[Schema, CompiledLoader | None]] = {}
#: Loaders are built one at a time: threads meeting a schema first at once (a service's request
#: threads just after start) build it once, and CPython 3.11's ``ast.parse``, which building
#: calls, is not safe to run in several threads at once ("AST constructor recursion depth
#: mismatch", a SystemError that became a 500).
_BUILDING = threading.Lock()


def compiled_loader(schema: Schema) -> CompiledLoader | None:
    """The loader of a long-lived schema instance (built on first use), or ``None`` for a schema
    the generated loader cannot replay."""
    entry = _LOADERS.get(id(schema))
    if entry is None or entry[0] is not schema:
        with _BUILDING:
            entry = _LOADERS.get(id(schema))
            if entry is None or entry[0] is not schema:
                try:
                    loader: CompiledLoader | None = CompiledLoader(schema)
                except TypeError:
                    loader = None
                entry = _LOADERS[id(schema)] = (schema, loader)
    return entry[1]


def load_or_raise_fast(schema: Schema, data: object, *, prefix: str = "") -> Any:
    """:func:`~fhir_alliance.schemas.common.load_or_raise` through the compiled loader. Only for
    schema instances that live as long as the process (module constants, cached instances)."""
    entry = _LOADERS.get(id(schema))  # compiled_loader, inlined: this runs once per record
    loader = entry[1] if entry is not None and entry[0] is schema else compiled_loader(schema)
    if loader is None:
        return load_or_raise(schema, data, prefix=prefix)
    try:
        return loader.fast(data)
    except Exception:  # anything unusual: marshmallow decides
        return load_or_raise(schema, data, prefix=prefix)
