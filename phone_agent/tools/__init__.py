"""Functions the model may call: a typed registry (`registry.py`) and the built-in tools."""

from phone_agent.tools.registry import CallContext, ToolError, ToolRegistry, ToolResult

__all__ = ["CallContext", "ToolError", "ToolRegistry", "ToolResult"]
