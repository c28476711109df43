"""Tool executors: what turns a parsed tool call into an artefact (a PNG or a WAV).

An executor is any callable ``executor(request: ToolRequest) -> ToolResult``. Built in:

- the synthetic-world executors (``type: world``): image_generation parses a description
  into a Scene and draws it with the world's own `render_scene`; image_editing applies an
  instruction to the input picture's scene (given in ``request.context["scene"]``, or read
  back from the pixels by `scene_from_image`) and draws the result; text_to_speech writes a
  WAV (espeak-ng if installed, else a placeholder tone voice: see `mage.tools.speech`);
- pluggable ones for real tools: a Python callable (``type: callable``), a shell command
  template (``type: shell``) and an HTTP endpoint (``type: http``), built from a config
  mapping by `build_executor`.
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import shlex
import string
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from mage.io import atomic_write
from mage.tools.errors import ToolExecutionError
from mage.tools.scene_pixels import scene_from_image
from mage.tools.scene_text import apply_edit, describe_scene, parse_description, world
from mage.tools.speech import synthesize

SUFFIXES = {"image/png": ".png", "image/jpeg": ".jpg", "audio/wav": ".wav", "audio/x-wav": ".wav"}
EXECUTOR_TYPES = ("world", "callable", "shell", "http")


@dataclass
class ToolRequest:
    """One call to run: the tool, its validated arguments and what it works on."""

    tool: str
    arguments: dict[str, Any]
    media_type: str  # what the tool returns, e.g. "image/png", "audio/wav"
    image: Image.Image | None = None  # the input picture (image_editing)
    context: dict[str, Any] = field(default_factory=dict)  # e.g. {"scene": Scene, "image_size": 64}


@dataclass
class ToolResult:
    """An artefact in memory: bytes of ``media_type`` plus what the executor knows about it."""

    tool: str
    media_type: str
    data: bytes
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def suffix(self) -> str:
        return SUFFIXES.get(self.media_type, ".bin")

    def image(self) -> Image.Image:
        if not self.media_type.startswith("image/"):
            raise ToolExecutionError(f"{self.tool} returned {self.media_type}, not an image")
        return Image.open(io.BytesIO(self.data)).convert("RGB")

    def save(self, out_dir: str | Path, stem: str) -> Path:
        """Write the artefact atomically to ``out_dir/stem<suffix>`` and return the path."""
        path = Path(out_dir) / f"{stem}{self.suffix}"
        atomic_write(path, lambda tmp: tmp.write_bytes(self.data))
        return path


Executor = Callable[[ToolRequest], ToolResult]


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ---- the synthetic world ---------------------------------------------------------------
def _render(request: ToolRequest, scene: Any, **metadata: Any) -> ToolResult:
    image = world().render_scene(scene, image_size=int(request.context.get("image_size", 64)))
    info = {"scene": scene, "description": describe_scene(scene), **metadata}
    return ToolResult(request.tool, "image/png", png_bytes(image), info)


def world_image_generation(request: ToolRequest) -> ToolResult:
    return _render(request, parse_description(request.arguments["prompt"]))


def world_image_editing(request: ToolRequest) -> ToolResult:
    scene, source = request.context.get("scene"), "context"
    if scene is None:
        if request.image is None:
            raise ToolExecutionError("image_editing needs an input image (none was given)")
        scene, source = scene_from_image(request.image), "pixels"
    edited = apply_edit(request.arguments["instruction"], scene)
    return _render(request, edited, input_scene=scene, scene_source=source)


def world_text_to_speech(request: ToolRequest) -> ToolResult:
    text = request.arguments["text"]
    data, voice = synthesize(text, request.context.get("voice", "auto"))
    return ToolResult(request.tool, "audio/wav", data, {"transcript": text, "voice": voice})


WORLD_EXECUTORS: dict[str, Executor] = {
    "image_generation": world_image_generation,
    "image_editing": world_image_editing,
    "text_to_speech": world_text_to_speech,
}


# ---- pluggable executors ---------------------------------------------------------------
def _as_result(request: ToolRequest, value: Any) -> ToolResult:
    if isinstance(value, ToolResult):
        return value
    if isinstance(value, Image.Image):
        return ToolResult(request.tool, "image/png", png_bytes(value))
    if isinstance(value, bytes):
        return ToolResult(request.tool, request.media_type, value)
    if isinstance(value, (str, Path)) and Path(value).is_file():
        return ToolResult(request.tool, request.media_type, Path(value).read_bytes())
    raise ToolExecutionError(
        f"executor for {request.tool} returned {type(value).__name__}; return a ToolResult, a "
        "PIL image, bytes or the path of an existing file"
    )


class CallableExecutor:
    """A Python callable ``f(request) -> ToolResult | PIL.Image | bytes | path``, or its
    import string ``'package.module:function'``."""

    def __init__(self, target: str | Callable[[ToolRequest], Any]):
        self.target = _import(target) if isinstance(target, str) else target

    def __call__(self, request: ToolRequest) -> ToolResult:
        return _as_result(request, self.target(request))


def _import(target: str) -> Callable:
    module_name, _, attr = target.partition(":")
    if not attr:
        raise ToolExecutionError(
            f"callable target {target!r} must look like 'package.module:function'"
        )
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ToolExecutionError(f"cannot import callable target {target!r}: {err}") from err


class ShellExecutor:
    """A command template run without a shell: ``{output}`` (the file it must write),
    ``{input}`` (the input picture as PNG) and the tool's argument names are filled in per
    argument, e.g. ``"espeak-ng -w {output} {text}"``."""

    def __init__(self, command: str, timeout_s: float = 60.0, allowed: tuple[str, ...] = ()):
        self.argv = shlex.split(command)
        if not self.argv:
            raise ToolExecutionError("shell executor: empty command")
        names = {
            name for arg in self.argv for _, name, _, _ in string.Formatter().parse(arg) if name
        }
        unknown = names - {"output", "input", *allowed} if allowed else set()
        if unknown:
            raise ToolExecutionError(
                f"shell executor {command!r}: unknown placeholders {sorted(unknown)}; "
                f"allowed: {sorted({'output', 'input', *allowed})}"
            )
        self.names, self.timeout_s = names, timeout_s

    def __call__(self, request: ToolRequest) -> ToolResult:
        with tempfile.TemporaryDirectory(prefix="mage-tool-") as tmp:
            output = Path(tmp) / f"output{SUFFIXES.get(request.media_type, '.bin')}"
            values = {"output": str(output), **{k: str(v) for k, v in request.arguments.items()}}
            if "input" in self.names:
                if request.image is None:
                    raise ToolExecutionError(
                        f"{request.tool}: the command needs {{input}}, no image given"
                    )
                request.image.save(Path(tmp) / "input.png")
                values["input"] = str(Path(tmp) / "input.png")
            try:
                argv = [arg.format_map(values) for arg in self.argv]
                done = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout_s)
            except KeyError as err:
                raise ToolExecutionError(f"{request.tool}: no value for placeholder {err}") from err
            except (subprocess.TimeoutExpired, OSError) as err:
                raise ToolExecutionError(
                    f"{request.tool}: command {argv[0]!r} failed: {err}"
                ) from err
            if done.returncode != 0:
                raise ToolExecutionError(
                    f"{request.tool}: command exited {done.returncode}: {done.stderr.strip()[-500:]}"
                )
            if not output.is_file():
                raise ToolExecutionError(f"{request.tool}: command wrote nothing to {{output}}")
            return ToolResult(request.tool, request.media_type, output.read_bytes())


class HttpExecutor:
    """POSTs ``{"name", "arguments", "image_png_base64"?}`` as JSON to ``url``; the reply is the
    artefact itself (``Content-Type: image/png`` ...) or JSON ``{"media_type", "data_base64",
    "metadata"?}``."""

    def __init__(self, url: str, timeout_s: float = 60.0, headers: Mapping[str, str] | None = None):
        if not url.startswith(("http://", "https://")):
            raise ToolExecutionError(
                f"http executor url {url!r} must start with http:// or https://"
            )
        self.url, self.timeout_s, self.headers = url, timeout_s, dict(headers or {})

    def __call__(self, request: ToolRequest) -> ToolResult:
        body: dict[str, Any] = {"name": request.tool, "arguments": request.arguments}
        if request.image is not None:
            body["image_png_base64"] = base64.b64encode(png_bytes(request.image)).decode()
        http_request = urllib.request.Request(
            self.url,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json", **self.headers},
        )
        try:
            with urllib.request.urlopen(http_request, timeout=self.timeout_s) as response:
                media_type = response.headers.get_content_type()
                payload = response.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:300].decode(errors="replace")
            raise ToolExecutionError(
                f"{request.tool}: {self.url} answered {err.code}: {detail}"
            ) from err
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            raise ToolExecutionError(f"{request.tool}: cannot reach {self.url}: {err}") from err
        if media_type == "application/json":
            try:
                reply = json.loads(payload)
                data = base64.b64decode(reply["data_base64"])
                media_type = reply.get("media_type", request.media_type)
            except (ValueError, KeyError, TypeError) as err:
                raise ToolExecutionError(
                    f"{request.tool}: {self.url} sent JSON without 'data_base64': {err}"
                ) from err
            return ToolResult(request.tool, media_type, data, dict(reply.get("metadata") or {}))
        if media_type.split("/")[0] != request.media_type.split("/")[0]:
            raise ToolExecutionError(
                f"{request.tool}: {self.url} sent {media_type}, expected {request.media_type}"
            )
        return ToolResult(request.tool, media_type, payload)


def build_executor(config: Mapping[str, Any] | Callable, tool: str, allowed: tuple[str, ...] = ()):
    """An executor from a config mapping ``{"type": "world"|"callable"|"shell"|"http", ...}``."""
    if callable(config):
        return CallableExecutor(config)
    where = f"tools.{tool}.executor"
    if not isinstance(config, Mapping) or config.get("type") not in EXECUTOR_TYPES:
        raise ToolExecutionError(f"{where}: needs 'type', one of {list(EXECUTOR_TYPES)}")
    options = {k: v for k, v in config.items() if k != "type"}
    kind = config["type"]
    expected = {
        "world": set(),
        "callable": {"target"},
        "shell": {"command", "timeout_s"},
        "http": {"url", "timeout_s", "headers"},
    }[kind]
    unknown = set(options) - expected
    if unknown:
        raise ToolExecutionError(
            f"{where}: unknown keys {sorted(unknown)} for type {kind!r}; allowed: {sorted(expected)}"
        )
    try:
        if kind == "world":
            if tool not in WORLD_EXECUTORS:
                raise ToolExecutionError(f"{where}: no world executor for {tool!r}")
            return WORLD_EXECUTORS[tool]
        if kind == "callable":
            return CallableExecutor(options["target"])
        if kind == "shell":
            return ShellExecutor(options["command"], float(options.get("timeout_s", 60)), allowed)
        return HttpExecutor(
            options["url"], float(options.get("timeout_s", 60)), options.get("headers")
        )
    except KeyError as err:
        raise ToolExecutionError(f"{where}: missing key {err} for type {kind!r}") from None
