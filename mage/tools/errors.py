"""Typed errors of tool calling.

Parsing a model reply fails with one of the `ToolCallError` subclasses (`NoToolCall`,
`MalformedJSON`, `UnknownTool`, `SchemaViolation`), so callers (metrics, the chat command)
can count or report each failure kind separately. Running a valid call can still fail:
that is a `ToolExecutionError` (a scene that cannot be drawn, an executor that crashed).
"""

from __future__ import annotations

CALL_FORMAT = '<tool_call>{"name": TOOL, "arguments": {...}}</tool_call>'


class ToolCallError(ValueError):
    """A reply's tool call could not be read; the message says what was wrong and what to do."""


class NoToolCall(ToolCallError):
    """The reply contains no ``<tool_call>...</tool_call>`` block."""


class MalformedJSON(ToolCallError):
    """A ``<tool_call>`` block is unclosed, not JSON, or not ``{"name", "arguments"}``."""


class UnknownTool(ToolCallError):
    """The call names a tool that is not in the registry."""


class SchemaViolation(ToolCallError):
    """The call's arguments do not match the tool's JSON schema."""


class ToolExecutionError(RuntimeError):
    """A well-formed call could not be executed (bad request for the tool, executor failure)."""
