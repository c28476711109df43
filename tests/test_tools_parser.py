"""parse_tool_calls: valid calls (with text around, spaced-out decodes) and each kind of bad input."""

from __future__ import annotations

import pytest

from mage.tools.parser import (
    MalformedJSON,
    NoToolCall,
    SchemaViolation,
    ToolCallError,
    UnknownTool,
    format_tool_call,
    parse_tool_calls,
)

GEN = '<tool_call>{"name": "image_generation", "arguments": {"prompt": "a small green triangle at the top right"}}</tool_call>'


def test_single_call_with_text_around():
    calls = parse_tool_calls(f"Sure, drawing it now. {GEN} Done.")
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "image_generation"
    assert call.arguments == {"prompt": "a small green triangle at the top right"}
    assert call.before == "Sure, drawing it now. "
    assert f"Sure, drawing it now. {GEN} Done."[call.start : call.end] == GEN


def test_several_calls_in_order():
    speech = format_tool_call("text_to_speech", {"text": "hello there"})
    calls = parse_tool_calls(f"{GEN} and then {speech}")
    assert [c.name for c in calls] == ["image_generation", "text_to_speech"]
    assert calls[1].before == " and then "


def test_format_round_trips():
    text = format_tool_call("image_editing", {"instruction": "make the red circle blue"})
    assert text.startswith("<tool_call>{") and text.endswith("}</tool_call>")
    (call,) = parse_tool_calls(text)
    assert (call.name, call.arguments) == (
        "image_editing",
        {"instruction": "make the red circle blue"},
    )


def test_spaced_out_decode_is_accepted():
    spaced = (
        '< tool_call > { " name " : " image _ editing " , " arguments " : '
        '{ " instruction " : "  make the red   circle blue " } } < / tool_call >'
    )
    (call,) = parse_tool_calls(spaced)
    assert call.name == "image_editing"
    assert call.arguments == {"instruction": "make the red circle blue"}


@pytest.mark.parametrize(
    "reply, error, words",
    [
        ("a red circle, no call here", NoToolCall, "no tool call"),
        ("", NoToolCall, "no tool call"),
        (
            '<tool_call>{"name": "image_generation", "arguments": {"prompt": "x"}',
            MalformedJSON,
            "never closed",
        ),
        (
            '<tool_call>{"name": "image_generation", "arguments": {"prompt": x}}</tool_call>',
            MalformedJSON,
            "invalid JSON",
        ),
        ('<tool_call>["image_generation"]</tool_call>', MalformedJSON, "JSON object"),
        (
            '<tool_call>{"name": "image_generation"}</tool_call>',
            MalformedJSON,
            "missing ['arguments']",
        ),
        ('<tool_call>{"name": "", "arguments": {}}</tool_call>', MalformedJSON, "non-empty string"),
        ("done </tool_call>", MalformedJSON, "without an opening"),
        (f"<tool_call>{GEN}", MalformedJSON, "opened twice"),
        (
            '<tool_call>{"name": "video_generation", "arguments": {"prompt": "a"}}</tool_call>',
            UnknownTool,
            "video_generation",
        ),
        (
            '<tool_call>{"name": "image_generation", "arguments": {}}</tool_call>',
            SchemaViolation,
            "'prompt' is a required property",
        ),
        (
            '<tool_call>{"name": "image_generation", "arguments": {"prompt": 3}}</tool_call>',
            SchemaViolation,
            "arguments.prompt",
        ),
        (
            '<tool_call>{"name": "text_to_speech", "arguments": {"text": "hi", "voice": "x"}}</tool_call>',
            SchemaViolation,
            "voice",
        ),
        (
            '<tool_call>{"name": "image_editing", "arguments": "make it blue"}</tool_call>',
            SchemaViolation,
            "must be a JSON object",
        ),
    ],
)
def test_bad_replies_raise_typed_errors(reply, error, words):
    with pytest.raises(error) as info:
        parse_tool_calls(reply)
    assert isinstance(info.value, ToolCallError)
    assert words in str(info.value)


def test_a_bad_second_call_is_not_swallowed():
    bad = '<tool_call>{"name": "nope", "arguments": {}}</tool_call>'
    with pytest.raises(UnknownTool):
        parse_tool_calls(GEN + bad)


def test_validate_false_reads_unknown_tools_and_bad_arguments():
    (call,) = parse_tool_calls(
        '<tool_call>{"name": "nope", "arguments": {"x": 1}}</tool_call>', validate=False
    )
    assert (call.name, call.arguments) == ("nope", {"x": 1})


def test_validate_false_reads_the_name_of_a_call_whose_arguments_are_not_an_object():
    reply = '<tool_call>{"name": "image_generation", "arguments": "hello"}</tool_call>'
    with pytest.raises(SchemaViolation):
        parse_tool_calls(reply)
    (call,) = parse_tool_calls(reply, validate=False)
    assert (call.name, call.arguments) == ("image_generation", {})


def test_first_reads_the_first_call_whatever_follows():
    reply = GEN + '<tool_call>{"name": oops}</tool_call>'
    with pytest.raises(MalformedJSON):
        parse_tool_calls(reply)
    (call,) = parse_tool_calls(reply, first=True)
    assert call.name == "image_generation"


@pytest.mark.parametrize(
    "body",
    [
        '{"name": "text_to_speech", "name": "image_generation", "arguments": {}}',
        '{"name": "image_generation", "arguments": {"prompt": "x", " prompt ": "y"}}',
    ],
)
def test_a_repeated_key_is_malformed_not_the_last_one_read(body):
    """json keeps the last of a repeated key: the call would silently be another one."""
    with pytest.raises(MalformedJSON, match="appears twice"):
        parse_tool_calls(f"<tool_call>{body}</tool_call>", validate=False)


def test_a_closing_tag_inside_a_json_string_does_not_end_the_call():
    text = "read the tag </tool_call> aloud"
    reply = format_tool_call("text_to_speech", {"text": text})
    (call,) = parse_tool_calls(reply)
    assert call.arguments == {"text": text} and call.end == len(reply)
