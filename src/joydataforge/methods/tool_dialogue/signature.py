"""A Python function's tool schema from its signature and docstring, read from the source without running it.

The tools module is user code that runs only in the sandbox: its schema is read here with :mod:`ast` (the
type hints and defaults as written, the docstring), so deriving a schema never executes the module in the
pipeline's own process. Supported hints: ``str``, ``int``, ``float``, ``bool``, ``None``, ``Any``,
``list[X]``/``List[X]``/``Sequence[X]``, ``tuple[X, ...]``, ``tuple[X, Y]``, ``dict[str, X]``/``Dict``,
``Literal[...]``, ``Optional[X]``, ``Union[...]`` and ``X | Y``, quoted or not, bare or as ``typing.X``.
Anything else (a class of the module, a TypedDict) is an error naming the function and parameter: write
that tool's schema in ``tools`` instead. Docstrings in Google (``Args:``), NumPy (``Parameters``) and
reST (``:param x:``) styles give the parameter descriptions; the text before them the tool's description.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any

SCALARS: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "None": {"type": "null"},
    "NoneType": {"type": "null"},
    "Any": {},
    "object": {},
    "list": {"type": "array"},
    "List": {"type": "array"},
    "Sequence": {"type": "array"},
    "tuple": {"type": "array"},
    "Tuple": {"type": "array"},
    "dict": {"type": "object"},
    "Dict": {"type": "object"},
    "Mapping": {"type": "object"},
}
ARRAYS = {"list", "List", "Sequence", "Iterable", "set", "Set", "frozenset"}
TUPLES = {"tuple", "Tuple"}
MAPPINGS = {"dict", "Dict", "Mapping"}
SECTION = re.compile(r"^\s*(Args|Arguments|Parameters|Params|Returns|Return|Raises|Yields|Examples?|Notes?)\s*:?\s*$")
REST_PARAM = re.compile(r"^\s*:param\s+(?:[^:]*\s)?(\w+)\s*:\s*(.*)$")


class SignatureError(ValueError):
    """A function whose schema cannot be derived; the message names the function and what to do."""


@dataclass(frozen=True)
class FunctionTool:
    """One function of the tools module: its OpenAI tool definition (``{"type": "function", ...}``)."""

    name: str
    definition: dict[str, Any]
    is_async: bool


def functions_in(
    source: str, filename: str, names: list[str] | None = None, known: dict[str, dict[str, Any]] | None = None
) -> list[FunctionTool]:
    """The tools a module offers: ``names`` in that order, or every public top-level function in file order.

    ``known`` maps function names to definitions given elsewhere (the step's ``tools``): those are used as
    they are, so a function whose hints cannot be read still runs when its schema is written out.
    """
    known = known or {}
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as exc:
        raise SignatureError(f"{filename}:{exc.lineno}: not valid Python ({exc.msg})") from None
    found = {
        node.name: node
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_")
    }
    if names is None:
        chosen = list(found.values())
        if not chosen:
            raise SignatureError(f"{filename}: defines no public function to offer as a tool")
    else:
        missing = [name for name in names if name not in found]
        if missing:
            raise SignatureError(
                f"{filename}: no public function named {', '.join(missing)} (found: {', '.join(found) or 'none'})"
            )
        chosen = [found[name] for name in names]
    return [
        FunctionTool(node.name, known[node.name], isinstance(node, ast.AsyncFunctionDef))
        if node.name in known
        else _tool(node, filename)
        for node in chosen
    ]


def _tool(node: ast.FunctionDef | ast.AsyncFunctionDef, filename: str) -> FunctionTool:
    where = f"{filename}:{node.lineno} {node.name}()"
    args = node.args
    if args.vararg is not None or args.kwarg is not None:
        raise SignatureError(f"{where}: *args and **kwargs cannot be described to a model; name every parameter")
    summary, described = parse_docstring(ast.get_docstring(node) or "")
    positional = args.posonlyargs + args.args
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    params = list(zip(positional, defaults)) + list(zip(args.kwonlyargs, args.kw_defaults))
    properties: dict[str, Any] = {}
    required: list[str] = []
    for arg, default in params:
        schema = annotation_schema(arg.annotation, f"{where} parameter '{arg.arg}'") if arg.annotation else {}
        if arg.arg in described:
            schema = {**schema, "description": described[arg.arg]}
        if default is None:
            required.append(arg.arg)
        else:
            try:
                schema = {**schema, "default": ast.literal_eval(default)}
            except ValueError:
                pass  # a default that is not a literal (a call, a name): optional, default not shown
        properties[arg.arg] = schema
    parameters: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        parameters["required"] = required
    function: dict[str, Any] = {"name": node.name, "description": summary or node.name.replace("_", " ")}
    function["parameters"] = parameters
    return FunctionTool(node.name, {"type": "function", "function": function}, isinstance(node, ast.AsyncFunctionDef))


def annotation_schema(node: ast.expr, where: str) -> dict[str, Any]:
    """JSON Schema of one type hint as written (see the module docstring for what is understood)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a quoted hint: "list[str]"
        try:
            node = ast.parse(node.value, mode="eval").body
        except SyntaxError:
            raise SignatureError(f"{where}: the type hint {node.value!r} is not valid Python") from None
    if isinstance(node, ast.Constant) and node.value is None:
        return {"type": "null"}
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union([node.left, node.right], where)
    name = _name(node)
    if name is not None and name in SCALARS:
        return dict(SCALARS[name])
    if isinstance(node, ast.Subscript):
        base = _name(node.value)
        items = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        if base == "Optional":
            return _union([items[0], ast.Constant(None)], where)
        if base == "Union":
            return _union(items, where)
        if base == "Literal":
            values = [_literal(item, where) for item in items]
            types = {type(v) for v in values}
            schema: dict[str, Any] = {"enum": values}
            if len(types) == 1:
                schema["type"] = {str: "string", int: "integer", float: "number", bool: "boolean"}.get(
                    types.pop(), None
                )
                if schema["type"] is None:
                    del schema["type"]
            return schema
        if base in ARRAYS:
            return {"type": "array", "items": annotation_schema(items[0], where)}
        if base in TUPLES:
            if len(items) == 2 and isinstance(items[1], ast.Constant) and items[1].value is Ellipsis:
                return {"type": "array", "items": annotation_schema(items[0], where)}
            shapes = [annotation_schema(item, where) for item in items]
            return {"type": "array", "prefixItems": shapes, "minItems": len(shapes), "maxItems": len(shapes)}
        if base in MAPPINGS:
            if len(items) == 2 and _name(items[0]) != "str":
                raise SignatureError(f"{where}: JSON object keys are strings; use dict[str, ...]")
            value = annotation_schema(items[-1], where)
            return {"type": "object", "additionalProperties": value} if value else {"type": "object"}
        if base == "Annotated":
            return annotation_schema(items[0], where)
    shown = ast.unparse(node)
    raise SignatureError(
        f"{where}: the type hint '{shown}' has no JSON Schema here (use str, int, float, bool, list[...], "
        "dict[str, ...], Literal[...], Optional[...]), or give this tool's schema in `tools`"
    )


def _union(nodes: list[ast.expr], where: str) -> dict[str, Any]:
    branches: list[dict[str, Any]] = []
    for node in nodes:
        schema = annotation_schema(node, where)
        for branch in schema["anyOf"] if set(schema) == {"anyOf"} else [schema]:
            if branch not in branches:
                branches.append(branch)
    if any(branch == {} for branch in branches):
        return {}
    simple = [b.get("type") for b in branches]
    if all(set(b) == {"type"} and isinstance(b["type"], str) for b in branches):
        return {"type": simple}  # ["string", "null"]: the form every validator and grammar reads
    return {"anyOf": branches}


def _name(node: ast.expr) -> str | None:
    """``str`` and ``typing.List`` alike: the last part of a dotted name."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _literal(node: ast.expr, where: str) -> Any:
    try:
        value = ast.literal_eval(node)
    except ValueError:
        raise SignatureError(f"{where}: Literal[...] takes constants only, not '{ast.unparse(node)}'") from None
    if not isinstance(value, (str, int, float, bool)) and value is not None:
        raise SignatureError(f"{where}: Literal[...] takes strings, numbers, booleans or None")
    return value


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(the description before any section, {parameter: description}) from Google, NumPy or reST docstrings."""
    lines = doc.expandtabs().splitlines()
    summary: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    indent = 0
    numpy = False  # NumPy style: "name : type" then the description indented below
    for k, line in enumerate(lines):
        stripped = line.strip()
        rest = REST_PARAM.match(line)
        if rest:
            section, current = "rest", rest.group(1)
            params[current] = rest.group(2).strip()
            continue
        if stripped.startswith(":") and section == "rest":
            current = None  # :returns:, :raises: end a parameter's text
            continue
        heading = SECTION.match(line)
        underline = k + 1 < len(lines) and set(lines[k + 1].strip()) == {"-"}
        if heading and (stripped.endswith(":") or underline):
            section = "params" if heading.group(1) in ("Args", "Arguments", "Parameters", "Params") else "other"
            current, numpy = None, underline
            continue
        if set(stripped) == {"-"}:
            continue
        if section is None:
            summary.append(stripped)
        elif section == "params" and stripped:
            here = len(line) - len(line.lstrip())
            entry = re.match(r"^(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$", stripped)
            if entry and (current is None or here <= indent):
                current, indent = entry.group(1).lstrip("*"), here
                params[current] = "" if numpy else entry.group(3).strip()
            elif current is not None:
                params[current] = (params[current] + " " + stripped).strip()
        elif section == "rest" and current is not None and stripped:
            params[current] = (params[current] + " " + stripped).strip()
    text = " ".join(" ".join(summary).split())
    return text, {name: " ".join(value.split()) for name, value in params.items() if value}
