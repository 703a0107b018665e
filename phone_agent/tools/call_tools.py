"""Call-control tools: the model ends the call, or hands it to a person.

Neither acts at once: the tool records the request in the call's state, the model says its goodbye
(or "I'm putting you through"), and the bridge hangs up or transfers once that has been *heard*
(its final mark echoed), through Twilio's REST API. A transfer's `stop` then ends the media stream
but not the phone call.
"""

from __future__ import annotations

from phone_agent.tools.registry import CallContext, ToolError, ToolRegistry

END_CALL_KEY = "phone_agent.end_call"


def register_call_tools(registry: ToolRegistry, *, transfer_number: str | None) -> None:
    """Register `end_call` and `transfer_to_human` (transfers go to `transfer_number`)."""

    @registry.tool(timeout_s=1.0)
    async def end_call(ctx: CallContext) -> dict[str, str]:
        """End the phone call. Use it when the caller says goodbye or asks to hang up, or the
        conversation is clearly over. After calling it, say one short goodbye sentence: the line
        closes when the caller has heard it."""
        ctx.state[END_CALL_KEY] = {}
        return {"status": "ending", "next": "Say one short goodbye sentence now."}

    @registry.tool(timeout_s=1.0)
    async def transfer_to_human(ctx: CallContext, reason: str) -> dict[str, str]:
        """Put the caller through to a member of staff. Use it when the caller asks for a person,
        or needs something you cannot do. After calling it, tell the caller in one sentence that
        you are putting them through.

        Args:
            reason: Why the caller needs a person, in a few words (for the staff member).
        """
        if not transfer_number:
            raise ToolError(
                "No one is available to take the call. Offer to help further, or suggest "
                "calling back during opening hours."
            )
        ctx.state[END_CALL_KEY] = {"transfer_to": transfer_number, "reason": reason[:200]}
        return {"status": "transferring", "next": "Tell the caller you are putting them through."}
