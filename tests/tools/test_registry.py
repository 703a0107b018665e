from __future__ import annotations

import dataclasses
import enum
import itertools
import logging
from typing import Annotated, Any, Literal

import anyio
import pydantic
import pytest
from google.genai import types

from phone_agent.capabilities import capabilities_for
from phone_agent.tools.registry import CallContext, ToolError, ToolRegistry, ToolResult

HALF_CASCADE = "gemini-live-2.5-flash-preview"
SYNC_ONLY = "gemini-3.1-flash-live-preview"
NON_BLOCKING_DEFAULT = "gemini-3.8-live"


class Speed(enum.Enum):
    STANDARD = "standard"
    EXPRESS = "express"


class Item(pydantic.BaseModel):
    """One line of an order."""

    sku: str = pydantic.Field(description="The product code.")
    quantity: int = 1


@dataclasses.dataclass
class Order:
    number: str
    items: list[Item]


def ctx() -> CallContext:
    return CallContext(call_sid="CA123", caller_number="+447700900123")


def order_registry() -> ToolRegistry:
    registry = ToolRegistry()

    @registry.tool(timeout_s=3)
    async def lookup_order(
        ctx: CallContext, order_number: str, postcode: str | None = None
    ) -> dict[str, Any]:
        """Look up an order's status, items and delivery estimate.

        Ask for the postcode only when the caller is not calling from the order's number.

        Args:
            order_number: The order number as the caller said it, e.g. "A-1042".
            postcode: The delivery postcode, if the caller gave it.
        """
        return {"order": order_number, "postcode": postcode, "caller": ctx.caller_number}

    @registry.tool(non_blocking=True)
    async def send_sms(ctx: CallContext, text: str) -> str:
        """Text the caller.

        Args:
            text: What to send.
        """
        return "sent"

    return registry


def only(registry: ToolRegistry, name: str, model: str = HALF_CASCADE) -> types.FunctionDeclaration:
    (declaration,) = registry.declarations([name], model)
    return declaration


def properties(declaration: types.FunctionDeclaration) -> dict[str, types.Schema]:
    assert declaration.parameters is not None
    assert declaration.parameters.properties is not None
    return declaration.parameters.properties


# --- Declarations ------------------------------------------------------------------------------


def test_declaration_from_signature_and_docstring() -> None:
    declaration = only(order_registry(), "lookup_order")
    assert declaration.name == "lookup_order"
    assert declaration.description == (
        "Look up an order's status, items and delivery estimate.\n\n"
        "Ask for the postcode only when the caller is not calling from the order's number."
    )
    assert declaration.parameters == types.Schema(
        type=types.Type.OBJECT,
        properties={
            "order_number": types.Schema(
                type=types.Type.STRING,
                description='The order number as the caller said it, e.g. "A-1042".',
            ),
            "postcode": types.Schema(
                type=types.Type.STRING,
                nullable=True,
                description="The delivery postcode, if the caller gave it.",
            ),
        },
        required=["order_number"],
    )
    assert declaration.behavior is None


def test_schema_types() -> None:
    registry = ToolRegistry()

    @registry.tool()
    async def place_order(
        items: list[Item],
        speed: Speed,
        gift: bool,
        budget: float,
        copies: Annotated[int, pydantic.Field(ge=1, le=5)],
        tone: Literal["warm", "brief"] = "warm",
        notes: list[str] | None = None,
        json: bool = False,
    ) -> None:
        """Place an order."""

    props = properties(only(registry, "place_order"))
    assert props["items"] == types.Schema(
        type=types.Type.ARRAY,
        items=types.Schema(
            type=types.Type.OBJECT,
            description="One line of an order.",
            properties={
                "sku": types.Schema(type=types.Type.STRING, description="The product code."),
                "quantity": types.Schema(type=types.Type.INTEGER),
            },
            required=["sku"],
        ),
    )
    assert props["speed"] == types.Schema(type=types.Type.STRING, enum=["standard", "express"])
    assert props["gift"] == types.Schema(type=types.Type.BOOLEAN)
    assert props["budget"] == types.Schema(type=types.Type.NUMBER)
    assert props["copies"] == types.Schema(type=types.Type.INTEGER, minimum=1, maximum=5)
    assert props["tone"] == types.Schema(type=types.Type.STRING, enum=["warm", "brief"])
    assert props["notes"] == types.Schema(
        type=types.Type.ARRAY, items=types.Schema(type=types.Type.STRING), nullable=True
    )
    assert props["json"] == types.Schema(type=types.Type.BOOLEAN)  # no clash with pydantic
    parameters = only(registry, "place_order").parameters
    assert parameters is not None
    assert parameters.required == ["items", "speed", "gift", "budget", "copies"]


def test_numpy_and_rest_docstrings() -> None:
    registry = ToolRegistry()

    @registry.tool()
    async def numpy_style(city: str) -> None:
        """Say the weather.

        Parameters
        ----------
        city : str
            The caller's city.
        """

    @registry.tool()
    async def rest_style(city: str) -> None:
        """Say the weather.

        :param city: The caller's city.
        """

    for name in ("numpy_style", "rest_style"):
        declaration = only(registry, name)
        assert declaration.description == "Say the weather."
        assert properties(declaration)["city"].description == "The caller's city."


def test_context_only_tool_has_no_parameters_and_a_custom_name() -> None:
    registry = ToolRegistry()

    @registry.tool(name="transfer.to_human")
    async def transfer(ctx: CallContext) -> None:
        """Hand the call to a person."""

    declaration = only(registry, "transfer.to_human")
    assert declaration.parameters is None
    assert registry.names() == ["transfer.to_human"]


# --- Registration errors -----------------------------------------------------------------------


class Opaque:
    pass


async def no_docstring(order_number: str) -> None:
    pass


async def no_hint(order_number) -> None:  # type: ignore[no-untyped-def]
    """Look up."""


async def free_form(filters: dict[str, str]) -> None:
    """Search."""


async def any_type(value: Any) -> None:
    """Store."""


async def union(value: int | str) -> None:
    """Store."""


async def int_literal(value: Literal[1, 2]) -> None:
    """Store."""


async def opaque(value: Opaque) -> None:
    """Store."""


async def tuple_type(value: tuple[int, int]) -> None:
    """Store."""


async def ctx_second(value: str, ctx: CallContext) -> None:
    """Store."""


async def var_kwargs(**values: str) -> None:
    """Store."""


async def stale_docs(order_number: str) -> None:
    """Look up.

    Args:
        order_id: The order.
    """


def not_async(order_number: str) -> None:
    """Look up."""


@pytest.mark.parametrize(
    ("fn", "error", "match"),
    [
        (no_docstring, ValueError, "tool 'no_docstring': needs a docstring"),
        (no_hint, TypeError, "tool 'no_hint', parameter 'order_number': needs a type hint"),
        (free_form, TypeError, "tool 'free_form', parameter 'filters': .*free-form dicts"),
        (any_type, TypeError, "tool 'any_type', parameter 'value': type Any"),
        (union, TypeError, r"tool 'union', parameter 'value': .*`X \| None`"),
        (int_literal, TypeError, "tool 'int_literal', parameter 'value': .*must be strings"),
        (opaque, TypeError, "tool 'opaque', parameter 'value': type Opaque is not supported"),
        (tuple_type, TypeError, "tool 'tuple_type', parameter 'value': .*tuples"),
        (ctx_second, TypeError, "tool 'ctx_second', parameter 'ctx': .*first parameter"),
        (var_kwargs, TypeError, "tool 'var_kwargs', parameter 'values': .*kwargs"),
        (stale_docs, ValueError, r"tool 'stale_docs': docstring documents \['order_id'\]"),
        (not_async, TypeError, "tool 'not_async': must be an `async def`"),
    ],
)
def test_registration_errors_name_the_tool_and_parameter(
    fn: Any, error: type[Exception], match: str
) -> None:
    registry = ToolRegistry()
    with pytest.raises(error, match=match):
        registry.tool()(fn)
    assert registry.names() == []


def test_duplicate_names_bad_names_and_bad_timeouts_are_refused() -> None:
    registry = order_registry()
    with pytest.raises(ValueError, match="tool 'lookup_order' is already registered"):
        registry.tool(name="lookup_order")(stale_docs)
    with pytest.raises(ValueError, match="tool name 'look up' is not valid"):
        registry.tool(name="look up")(no_docstring)
    with pytest.raises(ValueError, match="tool 'x': timeout_s must be positive"):
        registry.tool(name="x", timeout_s=0)(no_docstring)


# --- Deny by default, behaviour per model ------------------------------------------------------


def test_only_enabled_tools_are_declared() -> None:
    registry = order_registry()
    assert registry.declarations([], HALF_CASCADE) == []
    assert [d.name for d in registry.declarations(["send_sms"], HALF_CASCADE)] == ["send_sms"]
    assert [d.name for d in registry.declarations({"send_sms", "lookup_order"}, HALF_CASCADE)] == [
        "lookup_order",
        "send_sms",
    ]


def test_enabling_an_unknown_tool_is_a_config_error() -> None:
    registry = order_registry()
    with pytest.raises(ValueError, match="unknown tool 'refund'"):
        registry.declarations(["lookup_order", "refund"], HALF_CASCADE)
    with pytest.raises(TypeError, match="not the string"):
        registry.declarations("lookup_order", HALF_CASCADE)


@pytest.mark.parametrize(
    ("model", "blocking", "non_blocking"),
    [
        (HALF_CASCADE, None, types.Behavior.NON_BLOCKING),
        (SYNC_ONLY, None, None),
        ("some-future-model", None, None),
        (NON_BLOCKING_DEFAULT, types.Behavior.BLOCKING, types.Behavior.NON_BLOCKING),
    ],
)
def test_behavior_only_where_the_model_supports_it(
    model: str, blocking: types.Behavior | None, non_blocking: types.Behavior | None
) -> None:
    registry = order_registry()
    assert only(registry, "lookup_order", model).behavior == blocking
    assert only(registry, "send_sms", model).behavior == non_blocking


# --- Invoking ----------------------------------------------------------------------------------

ALL = ["lookup_order", "send_sms"]


@pytest.mark.anyio
async def test_success_injects_context_and_wraps_output() -> None:
    result = await order_registry().invoke(
        "fc-1", "lookup_order", {"order_number": 1042}, ctx(), enabled=ALL
    )
    assert result.status == "ok"
    assert (result.id, result.name) == ("fc-1", "lookup_order")
    assert result.response == {
        "output": {"order": "1042", "postcode": None, "caller": "+447700900123"}
    }


@pytest.mark.anyio
async def test_models_and_dataclasses_come_back_as_json() -> None:
    registry = ToolRegistry()

    @registry.tool()
    async def get_order(items: list[Item], speed: Speed) -> list[Any]:
        """Echo."""
        assert isinstance(items[0], Item) and speed is Speed.EXPRESS
        return [Order("A-1", items), speed]

    result = await registry.invoke(
        "fc-1",
        "get_order",
        {"items": [{"sku": "X"}], "speed": "express"},
        ctx(),
        enabled=["get_order"],
    )
    assert result.response == {
        "output": [{"number": "A-1", "items": [{"sku": "X", "quantity": 1}]}, "express"]
    }


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "invalid arguments: order_number: required"),
        ({"order_number": "1", "order_id": "1"}, "order_id: not a parameter of this tool"),
        ({"order_number": ["1"]}, "order_number: Input should be a valid string"),
        (None, "order_number: required"),
    ],
)
async def test_invalid_arguments_name_the_field(args: dict[str, Any] | None, message: str) -> None:
    result = await order_registry().invoke("fc-1", "lookup_order", args, ctx(), enabled=ALL)
    assert result.status == "invalid_arguments"
    assert message in result.response["error"]
    assert set(result.response) == {"error"}


@pytest.mark.anyio
async def test_unknown_and_not_enabled_tools_are_refused_without_running() -> None:
    registry = ToolRegistry()
    ran = []

    @registry.tool()
    async def refund() -> None:
        """Refund."""
        ran.append(True)

    unknown = await registry.invoke("fc-1", "delete_all", {}, ctx(), enabled=["delete_all"])
    assert (unknown.status, unknown.response) == (
        "unknown_tool",
        {"error": "unknown tool 'delete_all'"},
    )
    denied = await registry.invoke("fc-2", "refund", {}, ctx(), enabled=[])
    assert denied.status == "not_enabled"
    assert ran == []


@pytest.mark.anyio
async def test_tool_error_message_reaches_the_model() -> None:
    registry = ToolRegistry()

    @registry.tool()
    async def lookup() -> None:
        """Look up."""
        raise ToolError("no order with that number")

    result = await registry.invoke("fc-1", "lookup", {}, ctx(), enabled=["lookup"])
    assert (result.status, result.response) == ("error", {"error": "no order with that number"})


@pytest.mark.anyio
async def test_unexpected_exception_is_logged_not_shown(caplog: pytest.LogCaptureFixture) -> None:
    registry = ToolRegistry()

    @registry.tool()
    async def lookup() -> None:
        """Look up."""
        raise RuntimeError("db password=hunter2")

    with caplog.at_level(logging.INFO, logger="phone_agent.tools.registry"):
        result = await registry.invoke("fc-9", "lookup", {}, ctx(), enabled=["lookup"])
    assert (result.status, result.response) == ("error", {"error": "the tool failed"})
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "tool.call"]
    assert record.levelno == logging.ERROR
    assert (record.tool, record.call_id, record.status) == ("lookup", "fc-9", "error")  # type: ignore[attr-defined]
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)


@pytest.mark.anyio
async def test_unserialisable_output_is_a_tool_failure() -> None:
    registry = ToolRegistry()

    @registry.tool()
    async def lookup() -> object:
        """Look up."""
        return Opaque()

    result = await registry.invoke("fc-1", "lookup", {}, ctx(), enabled=["lookup"])
    assert (result.status, result.response) == ("error", {"error": "the tool failed"})


@pytest.mark.anyio
async def test_timeout() -> None:
    registry = ToolRegistry()
    cancelled = anyio.Event()

    @registry.tool(timeout_s=0.05)
    async def slow() -> None:
        """Never answers."""
        try:
            await anyio.Event().wait()
        finally:
            cancelled.set()

    result = await registry.invoke("fc-1", "slow", {}, ctx(), enabled=["slow"])
    assert (result.status, result.response) == ("timeout", {"error": "slow timed out after 0.05s"})
    assert cancelled.is_set()


@pytest.mark.anyio
async def test_cancelling_invoke_cancels_the_tool_and_propagates(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = ToolRegistry()
    started = anyio.Event()
    seen: list[str] = []

    @registry.tool(timeout_s=30)
    async def slow() -> None:
        """Never answers."""
        started.set()
        try:
            await anyio.Event().wait()
        except anyio.get_cancelled_exc_class():
            seen.append("tool cancelled")
            raise

    results: list[ToolResult] = []
    scope = anyio.CancelScope()

    async def call() -> None:
        with scope:
            try:
                results.append(await registry.invoke("fc-1", "slow", {}, ctx(), enabled=["slow"]))
            except anyio.get_cancelled_exc_class():
                seen.append("invoke cancelled")
                raise

    with caplog.at_level(logging.INFO, logger="phone_agent.tools.registry"):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            await started.wait()
            scope.cancel()  # what the bridge does on toolCallCancellation
    assert seen == ["tool cancelled", "invoke cancelled"]
    assert results == []
    assert scope.cancelled_caught
    assert [getattr(r, "status", None) for r in caplog.records] == ["cancelled"]


@pytest.mark.anyio
async def test_latency_is_measured_with_the_clock() -> None:
    registry = ToolRegistry(clock=itertools.count(10.0, 0.25).__next__)

    @registry.tool()
    async def ping() -> str:
        """Ping."""
        return "pong"

    result = await registry.invoke("fc-1", "ping", {}, ctx(), enabled=["ping"])
    assert result.latency_ms == 250.0


@pytest.mark.anyio
async def test_outcomes_are_logged_without_argument_values(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = order_registry()
    with caplog.at_level(logging.DEBUG, logger="phone_agent.tools.registry"):
        await registry.invoke(
            "fc-1", "lookup_order", {"order_number": "SECRET-7"}, ctx(), enabled=ALL
        )
    info = [r for r in caplog.records if r.levelno >= logging.INFO]
    (record,) = info
    assert (
        record.__dict__.items()
        >= {
            "event": "tool.call",
            "tool": "lookup_order",
            "status": "ok",
            "call_id": "fc-1",
            "call_sid": "CA123",
        }.items()
    )
    assert isinstance(record.__dict__["latency_ms"], float)
    assert all("SECRET-7" not in repr(r.__dict__) for r in info)
    assert any("SECRET-7" in repr(r.__dict__) for r in caplog.records if r.levelno == logging.DEBUG)


# --- Responses ---------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("tool", "model", "scheduling"),
    [
        ("send_sms", HALF_CASCADE, types.FunctionResponseScheduling.WHEN_IDLE),
        ("send_sms", NON_BLOCKING_DEFAULT, types.FunctionResponseScheduling.WHEN_IDLE),
        ("send_sms", SYNC_ONLY, None),
        ("send_sms", "some-future-model", None),
        ("lookup_order", HALF_CASCADE, None),
        ("lookup_order", NON_BLOCKING_DEFAULT, None),
    ],
)
async def test_function_response_scheduling_per_capabilities(
    tool: str, model: str, scheduling: types.FunctionResponseScheduling | None
) -> None:
    args = {"text": "hi"} if tool == "send_sms" else {"order_number": "1"}
    result = await order_registry().invoke("fc-7", tool, args, ctx(), enabled=ALL)
    response = result.function_response(capabilities_for(model))
    assert (response.id, response.name, response.response) == ("fc-7", tool, result.response)
    assert response.scheduling == scheduling
