"""The ASGI application: Twilio's webhook, the media stream socket, health and readiness."""

from __future__ import annotations

import hmac
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import anyio
from google.genai import types
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from phone_agent import db, webhook
from phone_agent.admission import (
    TOKEN_PARAMETER,
    MemoryNonceStore,
    NonceStore,
    RedisNonceStore,
    StreamTokens,
    derive_key,
)
from phone_agent.bridge import CallBridge, CallOptions, CallSummary, EndReason, ToolSet
from phone_agent.call_control import CallControl, TwilioCallControl
from phone_agent.call_report import CallReport
from phone_agent.call_store import CallStore
from phone_agent.capabilities import capabilities_for
from phone_agent.config import ConfigError, Settings
from phone_agent.drain import DrainState
from phone_agent.gemini import GeminiConnector, ModelSession
from phone_agent.limits import (
    CallLimits,
    Counters,
    LimitExceeded,
    MemoryCounters,
    RedisCounters,
)
from phone_agent.live_tokens import LiveTokenIssuer, live_token_routes
from phone_agent.memory import CallerMemory, register_memory_tools
from phone_agent.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from phone_agent.metrics import Metrics
from phone_agent.model_link import ModelConnect
from phone_agent.orders.store import OrderStore
from phone_agent.orders.tools import register_order_tools
from phone_agent.outcomes import MemoryOutcomes, Outcomes, RedisOutcomes
from phone_agent.prewarm import PrewarmPool
from phone_agent.pricing import Budget
from phone_agent.recorder import RecordingPolicy
from phone_agent.softphone import SoftphoneObserver, softphone_feed, softphone_routes
from phone_agent.tools.call_tools import register_call_tools
from phone_agent.tools.registry import ToolRegistry

log = logging.getLogger(__name__)

TWIML = "application/xml"
STREAM_ENDED_PATH = "/twilio/stream-ended"


@dataclass
class AppState:
    settings: Settings
    connect_model: ModelConnect | None = None
    offline: bool = False
    active_calls: int = 0
    calls_total: int = 0
    calls_ended: int = 0
    summaries: list[CallSummary] = field(default_factory=list)
    keep_summaries: int = 0
    tooling: Tooling | None = None
    call_control: CallControl | None = None
    prewarm: PrewarmPool | None = None
    tokens: StreamTokens | None = None
    outcomes: Outcomes = field(default_factory=MemoryOutcomes)
    metrics: Metrics = field(default_factory=Metrics)
    call_store: CallStore | None = None
    reports: list[CallReport] = field(default_factory=list)
    """The last `keep_summaries` calls' reports (tests)."""
    drain: DrainState = field(default_factory=DrainState)
    bridges: set[CallBridge] = field(default_factory=set)
    """The calls in progress (the drain's deadline ends them)."""
    _ended: anyio.Event | None = None

    def call_ended(self, summary: CallSummary, report: CallReport | None = None) -> None:
        self.active_calls -= 1
        self.calls_ended += 1
        if self.keep_summaries:
            self.summaries.append(summary)
            del self.summaries[: -self.keep_summaries]
            if report is not None:
                self.reports.append(report)
                del self.reports[: -self.keep_summaries]
        if self._ended is not None:
            self._ended.set()
            self._ended = None

    def stream_parameters(self, call_sid: str, **extra: str) -> dict[str, str]:
        """The `<Parameter>`s the webhook would give `call_sid`'s stream (tests, replays, tools
        that dial the media socket directly): a fresh stream token, plus `extra`."""
        assert self.tokens is not None
        return {TOKEN_PARAMETER: self.tokens.mint(call_sid), **extra}

    async def wait_calls_ended(self, count: int) -> None:
        """Wait until `count` calls have ended since start (tests, the demo)."""
        while self.calls_ended < count:
            if self._ended is None:
                self._ended = anyio.Event()
            await self._ended.wait()


@dataclass(frozen=True)
class GeminiTarget:
    """Where the model lives when it is not Google's default endpoint (tests, a local emulator)."""

    base_url: str | None
    api_key: str
    ssl_context: ssl.SSLContext | None = None


ORDER_TOOLS = frozenset({"lookup_order", "list_recent_orders"})
MEMORY_TOOL = "remember_for_next_call"


@dataclass
class Tooling:
    """The call tools and, behind the order tools, the database."""

    tools: ToolSet
    declarations: list[types.FunctionDeclaration]
    engine: AsyncEngine
    uses_database: bool
    memory: CallerMemory | None = None


def build_tooling(settings: Settings, registry: ToolRegistry | None = None) -> Tooling:
    """Register the built-in tools beside the business's own (`registry`); declare only the enabled
    ones (deny by default)."""
    registry = registry if registry is not None else ToolRegistry()
    try:
        engine = db.create_engine(db.database_url(settings.database_url))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    register_order_tools(registry, OrderStore(db.sessionmaker(engine)))
    register_call_tools(registry, transfer_number=settings.transfer_number)
    memory = None
    cipher = settings.data_cipher()
    if settings.memory and cipher is not None:  # Settings requires the key with memory on
        memory = CallerMemory(
            db.sessionmaker(engine), cipher=cipher, ttl_days=settings.memory_ttl_days
        )
        register_memory_tools(registry, memory)
    enabled = frozenset(settings.tools) | ({MEMORY_TOOL} if memory else frozenset())
    try:
        declarations = registry.declarations(enabled, settings.model)
    except ValueError as exc:
        raise ConfigError(f"PHONE_AGENT_TOOLS: {exc}; known tools: {registry.names()}") from None
    tools = ToolSet(registry, enabled, capabilities_for(settings.model))
    uses_database = bool(ORDER_TOOLS & enabled) or memory is not None or settings.call_records
    return Tooling(tools, declarations, engine, uses_database=uses_database, memory=memory)


async def _start_model(state: AppState, stack: AsyncExitStack) -> None:
    """Point calls at Gemini, or in offline mode at a built-in emulator started here."""
    settings = state.settings
    declarations = state.tooling.declarations if state.tooling else None
    if settings.offline:
        from phone_agent.emulator import GeminiEmulator

        if settings.emulator_fixture is not None:
            from phone_agent.fixture import CallFixture
            from phone_agent.replay import emulator_script

            script = emulator_script(
                CallFixture.load(settings.emulator_fixture, cipher=settings.data_cipher())
            )
            emulator = GeminiEmulator(script, speed=1.0, clock="audio", record_messages=False)
        else:
            emulator = GeminiEmulator(record_messages=False)
        await emulator.start()
        stack.push_async_callback(emulator.close)
        log.warning(
            "GEMINI_API_KEY is not set: offline mode, the built-in Gemini Live emulator answers "
            "calls at %s",
            emulator.base_url,
            extra={"event": "model.offline", "base_url": emulator.base_url},
        )
        connector = GeminiConnector(
            settings,
            api_key="offline-emulator",
            base_url=emulator.base_url,
            ssl_context=emulator.client_ssl_context(),
            declarations=declarations,
        )
        state.offline = True
    else:
        key = settings.gemini_api_key.get_secret_value() if settings.gemini_api_key else "none"
        connector = GeminiConnector(
            settings, api_key=key, base_url=settings.gemini_base_url, declarations=declarations
        )
    state.connect_model = connector.connect


class CountedConnect:
    """A `ModelConnect` counting the sessions it opens (`phone_agent_model_sessions_total`)."""

    def __init__(self, connect: ModelConnect, metrics: Metrics) -> None:
        self._connect = connect
        self._metrics = metrics

    def __call__(
        self, *, resumption_handle: str | None = None, extra_instruction: str = ""
    ) -> AbstractAsyncContextManager[ModelSession]:
        kind = "resume" if resumption_handle else "new"
        self._metrics.model_sessions.labels(kind).inc()
        return self._connect(
            resumption_handle=resumption_handle, extra_instruction=extra_instruction
        )


RECORD_SAVE_TIMEOUT_S = 5.0


async def _keep(what: str, event: str, call_sid: str, write: Awaitable[None]) -> None:
    """Write what a finished call leaves behind. Shielded: a server shutting down (or a client
    going) must not cut a write in half; bounded, so a stuck store cannot hold the call's task for
    ever; a failure is logged, never the caller's problem."""
    try:
        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + RECORD_SAVE_TIMEOUT_S
            await write
        if scope.cancelled_caught:
            log.error(
                "%s not kept: the store did not answer in time",
                what,
                extra={"event": event, "call_sid": call_sid},
            )
    except Exception:
        log.exception("%s not kept", what, extra={"event": event, "call_sid": call_sid})


async def _keep_outcome(outcomes: Outcomes, summary: CallSummary) -> None:
    """Remember how the stream ended for `/twilio/stream-ended` (which may ask another replica)."""
    if not summary.call_sid or summary.end_reason is None:
        return
    write = outcomes.put(summary.call_sid, summary.end_reason.value)
    await _keep("call outcome", "call.outcome", summary.call_sid, write)


async def _keep_record(store: CallStore | None, report: CallReport) -> None:
    """Save a finished call's record (`call_store`)."""
    if store is not None:
        await _keep("call record", "call.record", report.call_sid, store.save(report))


def create_app(
    settings: Settings,
    *,
    connect_model: ModelConnect | None = None,
    gemini: GeminiTarget | None = None,
    registry: ToolRegistry | None = None,
    keep_summaries: int = 0,
) -> Starlette:
    """Build the app. `gemini` points it at another endpoint (e.g. an emulator); `connect_model`
    replaces the Gemini connector altogether (fakes). `registry` holds your own tools; the built-in
    ones are added to it. Raises `ConfigError` for unusable settings.
    """
    tooling = build_tooling(settings, registry)
    prices = settings.price_table()
    budget = Budget(settings.call_budget_usd or None)
    cipher = settings.data_cipher()
    counters: Counters = (
        RedisCounters(settings.redis_url, prefix=settings.redis_prefix + "limit:")
        if settings.redis_url
        else MemoryCounters()
    )
    limits = CallLimits(
        counters,
        per_number_per_minute=settings.rate_limit_per_number,
        per_address_per_minute=settings.rate_limit_per_address,
        max_concurrent_calls=settings.max_concurrent_calls,
    )
    nonces: NonceStore = (
        RedisNonceStore(settings.redis_url, prefix=settings.redis_prefix + "stream-token:")
        if settings.redis_url
        else MemoryNonceStore()
    )
    outcomes: Outcomes = (
        RedisOutcomes(settings.redis_url, prefix=settings.redis_prefix)
        if settings.redis_url
        else MemoryOutcomes()
    )
    tokens = StreamTokens(
        derive_key(
            settings.stream_secret.get_secret_value() if settings.stream_secret else None,
            settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else None,
        ),
        nonces,
        ttl_s=settings.stream_token_ttl_s,
    )
    state = AppState(
        settings=settings,
        connect_model=connect_model,
        keep_summaries=keep_summaries,
        tooling=tooling,
        tokens=tokens,
        outcomes=outcomes,
    )
    options = CallOptions(
        start_timeout_s=settings.start_timeout_s,
        max_message_bytes=settings.max_message_bytes,
        mark_interval_ms=settings.mark_interval_ms,
        greeting=settings.greeting,
        silence_reprompt_s=settings.silence_reprompt_s,
        silence_hang_up_s=settings.silence_hang_up_s,
        max_call_s=settings.max_call_s,
        max_unheard_s=settings.max_unheard_s,
        memory_recall_timeout_s=settings.memory_recall_timeout_s,
    )
    recording = (
        RecordingPolicy(
            settings.record_dir, cipher, everyone=settings.record == "all", model=settings.model
        )
        if settings.record != "off" and cipher is not None
        else None
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            stack.push_async_callback(tooling.engine.dispose)
            if isinstance(nonces, RedisNonceStore):
                stack.push_async_callback(nonces.aclose)
            if isinstance(counters, RedisCounters):
                stack.push_async_callback(counters.aclose)
            if isinstance(outcomes, RedisOutcomes):
                stack.push_async_callback(outcomes.aclose)
            if settings.twilio_account_sid and settings.twilio_auth_token:
                control = TwilioCallControl(
                    settings.twilio_account_sid,
                    settings.twilio_auth_token.get_secret_value(),
                    api_base_url=settings.twilio_api_base_url,
                )
                stack.push_async_callback(control.aclose)
                state.call_control = control
            if tooling.uses_database:
                await db.prepare(tooling.engine)
                if settings.call_records:
                    state.call_store = CallStore(db.sessionmaker(tooling.engine), cipher)
                if tooling.memory is not None:
                    await tooling.memory.purge_expired()
                log.info(
                    "order database ready",
                    extra={"event": "db.ready", "url": db.redacted(str(tooling.engine.url))},
                )
            if state.connect_model is None and gemini is not None:
                state.connect_model = GeminiConnector(
                    settings,
                    api_key=gemini.api_key,
                    base_url=gemini.base_url,
                    ssl_context=gemini.ssl_context,
                    declarations=tooling.declarations,
                ).connect
            if state.connect_model is None:
                await _start_model(state, stack)
            if state.connect_model is not None:
                state.connect_model = CountedConnect(state.connect_model, state.metrics)
            if settings.prewarm and state.connect_model is not None:
                group = await stack.enter_async_context(anyio.create_task_group())
                stack.callback(group.cancel_scope.cancel)
                state.prewarm = PrewarmPool(
                    state.connect_model, group, greeting=settings.greeting, clock=time.monotonic
                )
            yield

    async def signed_form(request: Request) -> dict[str, str] | None:
        """The webhook's form if Twilio signed it (against the configured public URL), else None."""
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        token = settings.twilio_auth_token
        if token is None or settings.public_url is None:
            webhook.log_webhook(form, "refused: TWILIO_AUTH_TOKEN or PHONE_AGENT_PUBLIC_URL unset")
            state.metrics.webhooks.labels("refused").inc()
            return None
        url = webhook.signed_url(settings.public_url, request.url.path, request.url.query)
        signature = request.headers.get(webhook.SIGNATURE_HEADER)
        if not webhook.signature_is_valid(token.get_secret_value(), url, form, signature):
            webhook.log_webhook(form, "refused: bad signature")
            state.metrics.webhooks.labels("refused").inc()
            return None
        return form

    async def voice(request: Request) -> Response:
        form = await signed_form(request)
        if form is None:
            return PlainTextResponse("Forbidden", status_code=403)
        stream_url = settings.media_stream_url()
        assert stream_url is not None and settings.public_url is not None
        exceeded = await limits.check(
            number=form.get("From"),
            address=request.client.host if request.client else None,
            active_calls=state.active_calls,
        )
        if exceeded is None and state.drain.draining:
            exceeded = LimitExceeded("draining")
        if exceeded is not None:
            webhook.log_webhook(form, f"turned away: {exceeded.reason}")
            state.metrics.webhooks.labels(exceeded.reason).inc()
            twiml = webhook.busy_twiml(settings.busy_message, settings.overflow_number)
            return Response(twiml, media_type=TWIML)
        state.metrics.webhooks.labels("connected").inc()
        webhook.log_webhook(form, "connected")
        if state.prewarm is not None:
            state.prewarm.start(form.get("CallSid", ""))
        parameters = webhook.call_parameters(form)
        parameters[TOKEN_PARAMETER] = tokens.mint(form.get("CallSid", ""))
        state.drain.stream_promised(form.get("CallSid", ""), time.monotonic())
        if request.query_params.get("consent") == "yes":
            parameters[RecordingPolicy.CONSENT_PARAMETER] = "yes"
        action = settings.public_url + STREAM_ENDED_PATH
        twiml = webhook.connect_twiml(stream_url, parameters, action=action)
        return Response(twiml, media_type=TWIML)

    async def stream_ended(request: Request) -> Response:
        """Twilio asks what to do once the media stream has closed (`<Connect action>`)."""
        form = await signed_form(request)
        if form is None:
            return PlainTextResponse("Forbidden", status_code=403)
        reason = await state.outcomes.get(form.get("CallSid", ""))
        if reason == EndReason.MODEL_UNAVAILABLE.value:
            webhook.log_webhook(form, "apologised: model unavailable")
            return Response(webhook.apology_twiml(settings.transfer_number), media_type=TWIML)
        return Response(webhook.hang_up_twiml(), media_type=TWIML)

    async def media(websocket: WebSocket) -> None:
        connect = state.connect_model
        if connect is None:  # pragma: no cover - lifespan always sets it
            await websocket.close(code=1013)
            return
        signature = websocket.headers.get(webhook.SIGNATURE_HEADER)
        token = settings.twilio_auth_token
        stream_url = settings.media_stream_url()
        # Twilio signs the handshake (the wss URL, no parameters) on some accounts: when it does,
        # the signature must hold. The stream token is checked in any case.
        if (
            signature
            and token is not None
            and stream_url is not None
            and not webhook.signature_is_valid(token.get_secret_value(), stream_url, {}, signature)
        ):
            log.warning(
                "media stream refused: bad handshake signature",
                extra={"event": "call.rejected", "reason": "handshake_signature"},
            )
            await websocket.close(code=1008)
            return
        observer = SoftphoneObserver(
            softphone_feed(state),
            state.metrics,
            model=settings.model,
            prices=prices,
            budget=budget,
            cipher=cipher,
        )
        bridge = CallBridge(
            websocket,
            connect,
            options=options,
            recording=recording,
            tools=tooling.tools,
            call_control=state.call_control,
            memory=tooling.memory,
            prewarm=state.prewarm,
            admission=tokens,
            observer=observer,
        )
        observer.follow(bridge.summary)
        state.active_calls += 1
        state.calls_total += 1
        state.bridges.add(bridge)
        summary = bridge.summary
        try:
            summary = await bridge.run()
            # Admitted streams only: a refused stream naming the same CallSid (a replay, a
            # forgery) must change nothing of the real call (its apology, its record).
            if summary.started_at:
                state.drain.stream_arrived(summary.call_sid)
                await _keep_outcome(state.outcomes, summary)
                if bridge.report is not None:
                    await _keep_record(state.call_store, bridge.report)
        finally:
            state.bridges.discard(bridge)
            state.call_ended(summary, bridge.report)

    async def metrics(request: Request) -> Response:
        token = settings.metrics_token
        if token is not None:
            given = request.headers.get("authorization", "")
            expected = "Bearer " + token.get_secret_value()
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return PlainTextResponse("Unauthorized", status_code=401)
        return Response(state.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(request: Request) -> Response:
        ready = state.connect_model is not None and not state.drain.draining
        status = "draining" if state.drain.draining else "ready" if ready else "starting"
        body = {
            "status": status,
            "active_calls": state.active_calls,
            "offline": state.offline,
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    app = Starlette(
        routes=[
            Route("/twilio/voice", voice, methods=["POST"]),
            Route(STREAM_ENDED_PATH, stream_ended, methods=["POST"]),
            WebSocketRoute("/twilio/media", media),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            *softphone_routes(settings, state),
            *live_token_routes(
                settings, LiveTokenIssuer.from_settings(settings, gemini), counters=counters
            ),
        ],
        lifespan=lifespan,
    )
    app.state.phone_agent = state
    return app
