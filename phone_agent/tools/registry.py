"""Tools the model may call: declared from their signatures, run with validation and a timeout.

    registry = ToolRegistry()

    @registry.tool(timeout_s=3)
    async def lookup_order(
        ctx: CallContext, order_number: str, postcode: str | None = None
    ) -> dict[str, Any]:
        \"\"\"Look up an order's status, items and delivery estimate.

        Args:
            order_number: The order number as the caller said it, e.g. "A-1042".
            postcode: The delivery postcode, if the caller gave it.
        \"\"\"

The docstring's summary and body become the declaration's description and its `Args` (Google, numpy
or reST style) the parameters' descriptions; the type hints become the parameter schema, through a
pydantic model that also validates the model's arguments. A first parameter typed `CallContext` is
injected and never declared. Registration fails at import time on anything that cannot be declared.

Every tool is denied unless the call enables it by name. `invoke` never raises for a tool's failure:
the outcome is a `ToolResult` whose `function_response()` goes back to Gemini as is. It does not
swallow cancellation: cancelling the task (or scope) running `invoke` cancels the tool.
"""

from __future__ import annotations

import inspect
import logging
import re
import time
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import anyio
import docstring_parser
import pydantic
from google.genai import types
from pydantic_core import to_jsonable_python

from phone_agent.capabilities import ModelCapabilities, capabilities_for

log = logging.getLogger(__name__)


class ToolError(Exception):
    """Raised by a tool for a failure the model should hear about (message is shown to it)."""


@dataclass
class CallContext:
    """What a tool may know about the call it serves. The caller's number comes from Twilio, never
    from the model's arguments. `state` is per-call scratch space (e.g. verified postcodes)."""

    call_sid: str
    caller_number: str | None = None
    state: dict[str, Any] = field(default_factory=dict)


Status = Literal["ok", "error", "invalid_arguments", "unknown_tool", "not_enabled", "timeout"]

GENERIC_ERROR = "the tool failed"
"""What the model hears when a tool raises anything but `ToolError` (the exception is logged)."""


@dataclass(frozen=True)
class ToolResult:
    """The outcome of one function call, ready to go back to the model."""

    id: str
    name: str
    status: Status
    response: dict[str, Any]  # {"output": ...} on success, {"error": "..."} otherwise
    latency_ms: float
    non_blocking: bool = False  # the tool was registered non_blocking=True

    def function_response(self, capabilities: ModelCapabilities) -> types.FunctionResponse:
        """The `FunctionResponse` for `session.send_tool_response(function_responses=[...])`.

        `scheduling` is WHEN_IDLE for a non-blocking tool on a model that takes it, else unset.
        """
        scheduling = None
        if (
            self.non_blocking
            and capabilities.non_blocking_tools
            and capabilities.tool_response_scheduling
        ):
            scheduling = types.FunctionResponseScheduling.WHEN_IDLE
        return types.FunctionResponse(
            id=self.id, name=self.name, response=self.response, scheduling=scheduling
        )


ToolFunction = Callable[..., Awaitable[Any]]
F = TypeVar("F", bound=ToolFunction)

# Gemini's rule for function names: a letter or underscore, then up to 63 of [A-Za-z0-9_.:-].
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,63}")
_ARGUMENTS_CONFIG = pydantic.ConfigDict(extra="forbid", coerce_numbers_to_str=True)


@dataclass(frozen=True)
class _Tool:
    name: str
    fn: ToolFunction
    takes_ctx: bool
    arguments: type[pydantic.BaseModel]
    fields: tuple[tuple[str, str], ...]  # (field of `arguments`, parameter of `fn`)
    declaration: types.FunctionDeclaration
    timeout_s: float
    non_blocking: bool

    def bind(self, args: Mapping[str, Any] | None) -> dict[str, Any]:
        """Keyword arguments for `fn`; raises `pydantic.ValidationError`."""
        validated = self.arguments.model_validate(dict(args) if args is not None else {})
        return {param: getattr(validated, name) for name, param in self.fields}


@dataclass(frozen=True)
class _Outcome:
    status: Status
    response: dict[str, Any]
    detail: str | None = None  # for the log: never argument values
    exc: BaseException | None = None


class ToolRegistry:
    """Tools by name: one per application; `enabled` picks, per call, what the model sees."""

    def __init__(self, *, clock: Callable[[], float] = time.perf_counter) -> None:
        self._tools: dict[str, _Tool] = {}
        self._clock = clock

    def tool(
        self,
        *,
        name: str | None = None,
        timeout_s: float = 5.0,
        non_blocking: bool = False,
    ) -> Callable[[F], F]:
        """Register an `async def` as a tool named `name` (default: the function's name).

        `timeout_s` bounds each call. `non_blocking=True` lets the model keep talking while the
        tool runs, on models that support it. Raises `TypeError`/`ValueError` naming the tool and
        parameter when the function cannot be declared; the function itself is returned unchanged.
        """

        def register(fn: F) -> F:
            tool_name = name if name is not None else getattr(fn, "__name__", repr(fn))
            if not _NAME.fullmatch(tool_name):
                raise ValueError(
                    f"tool name {tool_name!r} is not valid for Gemini: a letter or underscore, "
                    "then up to 63 letters, digits, '_', '.', ':' or '-'"
                )
            if tool_name in self._tools:
                raise ValueError(f"tool {tool_name!r} is already registered")
            if not timeout_s > 0:
                raise ValueError(f"tool {tool_name!r}: timeout_s must be positive, got {timeout_s}")
            self._tools[tool_name] = _build(fn, tool_name, timeout_s, non_blocking)
            return fn

        return register

    def names(self) -> list[str]:
        """Registered tool names, in registration order."""
        return list(self._tools)

    def declarations(self, enabled: Iterable[str], model: str) -> list[types.FunctionDeclaration]:
        """Declarations of the `enabled` tools only, in registration order, for `model`.

        Raises `ValueError("unknown tool ...")` if an enabled name is not registered. `behavior` is
        NON_BLOCKING for non-blocking tools when the model supports it; on a model whose default is
        NON_BLOCKING, other tools are declared BLOCKING explicitly; otherwise it is left unset.
        """
        wanted = _name_set(enabled)
        unknown = sorted(wanted - self._tools.keys())
        if unknown:
            raise ValueError(
                f"unknown tool {', '.join(map(repr, unknown))}; registered: "
                f"{', '.join(self._tools) or 'none'}"
            )
        capabilities = capabilities_for(model)
        return [
            tool.declaration.model_copy(
                update={"behavior": _behavior(tool.non_blocking, capabilities)}, deep=True
            )
            for tool in self._tools.values()
            if tool.name in wanted
        ]

    async def invoke(
        self,
        call_id: str,
        name: str,
        args: Mapping[str, Any] | None,
        ctx: CallContext,
        *,
        enabled: Iterable[str],
    ) -> ToolResult:
        """Run one function call. Never raises for a tool's failure; the status says what happened.

        Cancellation is not caught: cancel the scope or task running `invoke` (e.g. on
        `toolCallCancellation`) and the tool is cancelled and no result is returned.
        """
        start = self._clock()
        tool = self._tools.get(name)
        if tool is None:
            outcome = _Outcome("unknown_tool", {"error": f"unknown tool {name!r}"})
        elif name not in _name_set(enabled):
            outcome = _Outcome("not_enabled", {"error": f"tool {name!r} is not available"})
        else:
            log.debug(
                "tool %s called",
                name,
                extra={"event": "tool.args", "tool": name, "call_id": call_id, "arguments": args},
            )
            try:
                outcome = await _run(tool, args, ctx)
            except anyio.get_cancelled_exc_class():
                log.info(
                    "tool %s cancelled",
                    name,
                    extra={
                        "event": "tool.call",
                        "tool": name,
                        "status": "cancelled",
                        "latency_ms": round((self._clock() - start) * 1000, 1),
                        "call_id": call_id,
                        "call_sid": ctx.call_sid,
                    },
                )
                raise
        result = ToolResult(
            id=call_id,
            name=name,
            status=outcome.status,
            response=outcome.response,
            latency_ms=(self._clock() - start) * 1000,
            non_blocking=tool is not None and tool.non_blocking and outcome.status != "not_enabled",
        )
        _log(result, outcome, ctx)
        return result


async def _run(tool: _Tool, args: Mapping[str, Any] | None, ctx: CallContext) -> _Outcome:
    try:
        kwargs = tool.bind(args)
    except pydantic.ValidationError as exc:
        message = _describe(exc)
        return _Outcome("invalid_arguments", {"error": message}, detail=message)
    outcome: _Outcome | None = None
    with anyio.move_on_after(tool.timeout_s) as scope:
        try:
            value = await (tool.fn(ctx, **kwargs) if tool.takes_ctx else tool.fn(**kwargs))
            outcome = _Outcome("ok", {"output": to_jsonable_python(value)})
        except ToolError as exc:
            outcome = _Outcome("error", {"error": str(exc) or GENERIC_ERROR}, type(exc).__name__)
        except Exception as exc:
            outcome = _Outcome("error", {"error": GENERIC_ERROR}, type(exc).__name__, exc)
    if outcome is None or (scope.cancel_called and outcome.status != "ok"):
        message = f"{tool.name} timed out after {tool.timeout_s:g}s"
        return _Outcome("timeout", {"error": message}, message)
    return outcome


def _log(result: ToolResult, outcome: _Outcome, ctx: CallContext) -> None:
    extra = {
        "event": "tool.call",
        "tool": result.name,
        "status": result.status,
        "latency_ms": round(result.latency_ms, 1),
        "call_id": result.id,
        "call_sid": ctx.call_sid,
    }
    if outcome.detail is not None:
        extra["detail"] = outcome.detail
    level = logging.INFO if result.status == "ok" else logging.WARNING
    if outcome.exc is not None:
        level = logging.ERROR
    log.log(
        level,
        "tool %s %s in %.1f ms",
        result.name,
        result.status,
        result.latency_ms,
        exc_info=outcome.exc,
        extra=extra,
    )
    log.debug(
        "tool %s response",
        result.name,
        extra={"event": "tool.response", "call_id": result.id, "response": result.response},
    )


def _describe(exc: pydantic.ValidationError) -> str:
    """A short message naming the bad fields, without their values."""
    problems = []
    for error in exc.errors(include_url=False, include_input=False)[:3]:
        where = ".".join(str(part) for part in error["loc"]) or "arguments"
        if error["type"] == "missing":
            problems.append(f"{where}: required")
        elif error["type"] == "extra_forbidden":
            problems.append(f"{where}: not a parameter of this tool")
        else:
            problems.append(f"{where}: {error['msg']}")
    more = exc.error_count() - len(problems)
    return "invalid arguments: " + "; ".join(problems) + (f" (and {more} more)" if more else "")


def _name_set(enabled: Iterable[str]) -> frozenset[str]:
    if isinstance(enabled, str):
        raise TypeError(f"enabled must be a collection of tool names, not the string {enabled!r}")
    return frozenset(enabled)


def _behavior(non_blocking: bool, capabilities: ModelCapabilities) -> types.Behavior | None:
    if not capabilities.non_blocking_tools:
        return None
    if non_blocking:
        return types.Behavior.NON_BLOCKING
    return types.Behavior.BLOCKING if capabilities.non_blocking_default else None


# --- Declaring a function ----------------------------------------------------------------------


def _build(fn: ToolFunction, name: str, timeout_s: float, non_blocking: bool) -> _Tool:
    if not inspect.iscoroutinefunction(fn):
        raise TypeError(f"tool {name!r}: must be an `async def` function")
    doc = inspect.getdoc(fn)
    parsed = docstring_parser.parse(doc or "")
    description = "\n\n".join(
        part for part in (parsed.short_description, parsed.long_description) if part
    )
    if not description:
        raise ValueError(
            f"tool {name!r}: needs a docstring summary; it tells the model what the tool does"
        )
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise TypeError(f"tool {name!r}: cannot resolve its type hints: {exc}") from exc

    params = list(inspect.signature(fn).parameters.values())
    takes_ctx = bool(params) and hints.get(params[0].name) is CallContext
    ctx_name = params[0].name if takes_ctx else None
    if takes_ctx:
        params = params[1:]
    param_docs: dict[str, str | None] = {p.arg_name: p.description for p in parsed.params}
    stale = sorted(set(param_docs) - {p.name for p in params} - {ctx_name})
    if stale:
        raise ValueError(f"tool {name!r}: docstring documents {stale}, which are not parameters")

    fields: dict[str, Any] = {}
    names: list[tuple[str, str]] = []
    for i, param in enumerate(params):
        where = f"tool {name!r}, parameter {param.name!r}"
        if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            raise TypeError(f"{where}: *args, **kwargs and positional-only are not supported")
        if param.name not in hints:
            raise TypeError(f"{where}: needs a type hint")
        if hints[param.name] is CallContext:
            raise TypeError(f"{where}: a CallContext must be the first parameter")
        default = ... if param.default is param.empty else param.default
        # Fields get neutral names and the parameter's name as alias, so no parameter name can
        # clash with pydantic's own attributes (`json`, `copy`, `model_*`, leading underscores).
        fields[f"p{i}"] = (
            hints[param.name],
            pydantic.Field(default, alias=param.name, description=param_docs.get(param.name)),
        )
        names.append((f"p{i}", param.name))

    arguments, schema = _arguments_model(name, fields, {p.name: hints[p.name] for p in params})
    properties: dict[str, types.Schema] = {}
    for param_name, node in schema.get("properties", {}).items():
        try:
            properties[param_name] = _to_gemini(node, schema.get("$defs", {}), frozenset())
        except _Unsupported as exc:
            raise TypeError(
                f"tool {name!r}, parameter {param_name!r}: type "
                f"{_type_name(hints[param_name])} cannot be declared to Gemini ({exc})"
            ) from None
    parameters = None
    if properties:
        parameters = types.Schema(
            type=types.Type.OBJECT,
            properties=properties,
            required=schema.get("required") or None,
        )
    return _Tool(
        name=name,
        fn=fn,
        takes_ctx=takes_ctx,
        arguments=arguments,
        fields=tuple(names),
        declaration=types.FunctionDeclaration(
            name=name, description=description, parameters=parameters
        ),
        timeout_s=timeout_s,
        non_blocking=non_blocking,
    )


def _arguments_model(
    name: str, fields: dict[str, Any], hints: dict[str, Any]
) -> tuple[type[pydantic.BaseModel], dict[str, Any]]:
    """The pydantic model that validates a tool's arguments, and its JSON schema."""
    try:
        model: type[pydantic.BaseModel] = pydantic.create_model(
            f"{name}_arguments", __config__=_ARGUMENTS_CONFIG, **fields
        )
        return model, model.model_json_schema()
    except (pydantic.PydanticUserError, TypeError) as exc:
        for param_name, hint in hints.items():  # find the parameter to blame
            try:
                pydantic.TypeAdapter(hint).json_schema()
            except (pydantic.PydanticUserError, TypeError):
                raise TypeError(
                    f"tool {name!r}, parameter {param_name!r}: type {_type_name(hint)} "
                    "is not supported"
                ) from exc
        raise TypeError(f"tool {name!r}: cannot build its argument model: {exc}") from exc


class _Unsupported(Exception):
    pass


_TYPES = {
    "string": types.Type.STRING,
    "integer": types.Type.INTEGER,
    "number": types.Type.NUMBER,
    "boolean": types.Type.BOOLEAN,
    "array": types.Type.ARRAY,
    "object": types.Type.OBJECT,
}
_CONSTRAINTS = {
    "minimum": "minimum",
    "maximum": "maximum",
    "minLength": "min_length",
    "maxLength": "max_length",
    "pattern": "pattern",
    "minItems": "min_items",
    "maxItems": "max_items",
}


def _to_gemini(
    node: Mapping[str, Any], defs: Mapping[str, Any], seen: frozenset[str]
) -> types.Schema:
    """A pydantic JSON schema node as a Gemini `Schema`, `$ref`s inlined; `_Unsupported` if not."""
    node = dict(node)
    if "$ref" in node:
        ref = node.pop("$ref").removeprefix("#/$defs/")
        if ref in seen:
            raise _Unsupported(f"{ref} refers to itself")
        return _to_gemini({**defs[ref], **node}, defs, seen | {ref})
    if "allOf" in node and len(node["allOf"]) == 1:
        return _to_gemini({**node.pop("allOf")[0], **node}, defs, seen)
    if "anyOf" in node:
        options = node.pop("anyOf")
        others = [option for option in options if option.get("type") != "null"]
        if len(options) != 2 or len(others) != 1:
            raise _Unsupported("the only union supported is `X | None`")
        inner = _to_gemini({**others[0], **node}, defs, seen)
        return inner.model_copy(update={"nullable": True})
    if "const" in node:
        node["enum"] = [node.pop("const")]
    kind = node.get("type")
    if kind not in _TYPES:
        raise _Unsupported(
            "no JSON type; use str, int, float, bool, Literal, Enum, list or a model"
        )
    out: dict[str, Any] = {"type": _TYPES[kind]}
    if node.get("description"):
        out["description"] = node["description"]
    for key, attribute in _CONSTRAINTS.items():
        if key in node:
            out[attribute] = node[key]
    if "enum" in node:
        if not all(isinstance(value, str) for value in node["enum"]):
            raise _Unsupported("enum and Literal values must be strings")
        out["enum"] = list(node["enum"])
    if kind == "array":
        if "prefixItems" in node or "items" not in node:
            raise _Unsupported("lists need one item type, e.g. list[str]; tuples are not supported")
        out["items"] = _to_gemini(node["items"], defs, seen)
    if kind == "object":
        if not node.get("properties"):
            raise _Unsupported("free-form dicts are not supported; use a pydantic model")
        out["properties"] = {
            key: _to_gemini(value, defs, seen) for key, value in node["properties"].items()
        }
        if node.get("required"):
            out["required"] = list(node["required"])
    return types.Schema(**out)


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else repr(hint).replace("typing.", "")
