"""`mage-harness chat`: ask a trained MAGE one question and run the tool call it answers with.

    mage-harness chat CHECKPOINT [--image PATH] "make the red circle blue" [--out DIR]

Loads the checkpoint with `MageModel.from_pretrained`, generates a reply, prints it, and, if
the reply holds tool calls, executes each one (the synthetic-world executors by default, or
those of ``--tools CONFIG``; see `mage.tools.registry.load_tools`), writes the artefact (PNG or
WAV) under ``--out`` and prints its path. image_editing edits the ``--image`` picture, whose
scene is read back from its pixels. Exit status 1 when a call is malformed or fails.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image


@dataclass
class ChatResult:
    reply: str
    calls: list = field(default_factory=list)  # parsed ToolCalls
    artefacts: list[Path] = field(default_factory=list)
    error: str | None = None  # why a call was not executed


def run_chat(
    model: Any,
    instruction: str,
    image: Image.Image | None = None,
    out_dir: str | Path = "chat_out",
    tools: dict | None = None,
    max_new_tokens: int = 128,
) -> ChatResult:
    """Generate one reply and execute its tool calls; artefacts go to ``out_dir``."""
    from mage.tools.errors import NoToolCall, ToolCallError, ToolExecutionError
    from mage.tools.parser import parse_tool_calls
    from mage.tools.registry import execute

    reply = model.generate([image], [instruction], max_new_tokens=max_new_tokens)[0]
    result = ChatResult(reply)
    try:
        result.calls = parse_tool_calls(reply, tools)
    except NoToolCall:
        return result
    except ToolCallError as err:
        result.error = f"{type(err).__name__}: {err}"
        return result
    for index, call in enumerate(result.calls):
        try:
            artefact = execute(call, tools, image=image)
        except ToolExecutionError as err:
            result.error = f"{call.name} failed: {err}"
            return result
        result.artefacts.append(artefact.save(out_dir, f"{index:02d}_{call.name}"))
    return result


def load_model(checkpoint: Path) -> Any:
    """The MAGE checkpoint in eval mode, checked first (`mage.checkpoint_check`)."""
    from mage.checkpoint_check import load_checkpoint_model

    model = load_checkpoint_model(checkpoint)
    model.eval()
    return model


ARTEFACT_NAME = re.compile(r"\d{2}_[\w.-]+\.\w+")  # what run_chat writes: 00_<tool>.<ext>


def is_chat_dir(path: Path) -> bool:
    """A folder `chat` wrote: it holds only artefacts named like run_chat's."""
    return any(path.iterdir()) and all(ARTEFACT_NAME.fullmatch(p.name) for p in path.iterdir())


def read_image(path: Path) -> Image.Image:
    """``--image`` as RGB; a missing or non-image file is reported as the file's fault."""
    from mage.tools.errors import ToolExecutionError

    if not path.is_file():
        raise ToolExecutionError(f"--image {path}: file not found")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as err:  # PIL raises many types for a damaged or foreign file
        raise ToolExecutionError(f"--image {path}: not a readable image ({err})") from None


def read_tools(path: Path | None) -> dict:
    """``--tools`` through `load_tools`, with unreadable YAML reported as the file's fault."""
    import yaml

    from mage.tools.errors import ToolExecutionError
    from mage.tools.registry import load_tools

    try:
        return load_tools(path)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ToolExecutionError(f"--tools {path}: not valid YAML ({problem})") from None
    except UnicodeDecodeError as err:
        raise ToolExecutionError(f"--tools {path}: not UTF-8 text ({err.reason})") from None
    except IsADirectoryError:
        raise ToolExecutionError(f"--tools {path}: is a folder, not a YAML file") from None


def _run(args: argparse.Namespace) -> int:
    from mage.io import check_output_dir
    from mage.tools.errors import ToolExecutionError

    for flag, value in (("--threads", args.threads), ("--max-new-tokens", args.max_new_tokens)):
        if value < 1:
            raise ToolExecutionError(f"{flag} must be a positive integer, got {value}")
    check_output_dir(args.out, "a chat artefacts folder", is_chat_dir)
    image = read_image(args.image) if args.image is not None else None
    tools = read_tools(args.tools)
    import torch

    torch.set_num_threads(args.threads)
    model = load_model(args.checkpoint)
    result = run_chat(model, args.instruction, image, args.out, tools, args.max_new_tokens)
    print(result.reply)
    for path in result.artefacts:
        print(f"wrote {path}")
    if result.error:
        print(f"tool call not executed: {result.error}", file=sys.stderr)
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "chat",
        help="ask a MAGE checkpoint one question and run the tool call it answers with",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("checkpoint", type=Path, help="folder written by MageModel.save_pretrained")
    parser.add_argument(
        "instruction", help='what to ask, e.g. "draw a small red circle at the top left"'
    )
    parser.add_argument("--image", type=Path, default=None, help="input picture (PNG/JPEG)")
    parser.add_argument("--out", type=Path, default=Path("chat_out"), help="where artefacts go")
    parser.add_argument("--tools", type=Path, default=None, help="tool executor config (YAML)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.set_defaults(func=_run)
