"""Executors: the synthetic world draws what a call asks (checked from pixels), the placeholder
voice writes a real WAV, and callable / shell / HTTP executors plug in from a config."""

from __future__ import annotations

import io
import json
import shlex
import sys
import threading
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from mage.tools.errors import ToolExecutionError
from mage.tools.executors import ToolResult, png_bytes
from mage.tools.parser import parse_tool_calls
from mage.tools.registry import TOOLS, execute, load_tools
from mage.tools.scene_pixels import scene_from_image
from mage.tools.scene_text import SceneTextError, parse_description, scene_key
from mage.world.scene import BACKGROUND, COLORS, Scene, WorldObject, render_scene

CENTRES = {
    "top left": (16, 16),
    "top right": (48, 16),
    "bottom left": (16, 48),
    "bottom right": (48, 48),
}


def colour_at(image: Image.Image, quadrant: str) -> str:
    """Name of the palette colour (or 'background') nearest the quadrant's centre region."""
    x, y = CENTRES[quadrant]
    patch = np.asarray(image.convert("RGB"), dtype=float)[y - 1 : y + 2, x - 1 : x + 2]
    rgb = np.median(patch.reshape(-1, 3), axis=0)
    palette = {"background": BACKGROUND, **dict(COLORS)}
    return min(palette, key=lambda name: float(np.abs(rgb - np.array(palette[name])).sum()))


def run(reply: str, **kwargs) -> ToolResult:
    (call,) = parse_tool_calls(reply)
    return execute(call, **kwargs)


def call(name: str, **arguments) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def test_generation_draws_the_requested_objects():
    prompt = "a large red circle at the top left and a small blue square in the lower right corner"
    result = run(call("image_generation", prompt=prompt))
    assert result.media_type == "image/png" and result.suffix == ".png"
    image = result.image()
    assert image.size == (64, 64)
    assert colour_at(image, "top left") == "red"
    assert colour_at(image, "bottom right") == "blue"
    assert colour_at(image, "top right") == colour_at(image, "bottom left") == "background"
    pixels = np.asarray(image, dtype=int)
    red = (np.abs(pixels - np.array(COLORS["red"])).sum(-1) < 40).sum()
    blue = (np.abs(pixels - np.array(COLORS["blue"])).sum(-1) < 40).sum()
    assert red > 2 * blue  # large vs small
    assert result.metadata["description"] == (
        "a large red circle at the top left and a small blue square at the bottom right"
    )


SCENE = Scene(
    (
        WorldObject("circle", "red", "large", "top left"),
        WorldObject("square", "green", "large", "bottom right"),
    )
)


@pytest.mark.parametrize("from_pixels", [False, True])
@pytest.mark.parametrize(
    "instruction, expected",
    [
        ("make the red circle blue", {"top left": "blue", "bottom right": "green"}),
        ("remove the green square", {"top left": "red", "bottom right": "background"}),
        (
            "add a large yellow cross at the bottom left",
            {"bottom left": "yellow", "top left": "red"},
        ),
        ("replace the green square with a large purple circle", {"bottom right": "purple"}),
    ],
)
def test_editing_changes_the_input_picture(instruction, expected, from_pixels):
    picture = render_scene(SCENE)
    context = {} if from_pixels else {"scene": SCENE}
    result = run(call("image_editing", instruction=instruction), image=picture, context=context)
    assert result.metadata["scene_source"] == ("pixels" if from_pixels else "context")
    image = result.image()
    for quadrant, colour in expected.items():
        assert colour_at(image, quadrant) == colour


def test_pixels_read_back_the_scene_of_random_renders():
    from mage.world.scene import sample_scene

    for i in range(60):
        scene = sample_scene(np.random.default_rng([5, i]))
        assert scene_key(scene_from_image(render_scene(scene))) == scene_key(scene)


@pytest.mark.parametrize(
    "reply, words",
    [
        (call("image_generation", prompt="a huge red circle"), "'huge'"),
        (
            call(
                "image_generation",
                prompt="a red circle at the top left and a blue cross at the upper left",
            ),
            "one object per quadrant",
        ),
        (call("image_generation", prompt="a large circle"), "no color"),
        (call("image_editing", instruction="remove the purple triangle"), "no purple triangle"),
        (
            call("image_editing", instruction="explode the red circle"),
            "unknown edit verb 'explode'",
        ),
        (call("image_editing", instruction="make the red circle"), "no new color"),
    ],
)
def test_impossible_requests_fail_clearly(reply, words):
    with pytest.raises(SceneTextError, match=words):
        run(reply, context={"scene": SCENE})


def test_editing_without_a_picture_is_refused():
    with pytest.raises(ToolExecutionError, match="needs an input image"):
        run(call("image_editing", instruction="remove the red circle"))


def test_placeholder_voice_writes_a_deterministic_wav():
    reply = call("text_to_speech", text="a small red circle")
    first = run(reply, context={"voice": "placeholder"})
    second = run(reply, context={"voice": "placeholder"})
    assert first.data == second.data and first.suffix == ".wav"
    assert first.metadata == {"transcript": "a small red circle", "voice": "placeholder"}
    with wave.open(io.BytesIO(first.data)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16000)
        frames = wav.getnframes()
        samples = np.frombuffer(wav.readframes(frames), dtype="<i2")
    assert frames == int(16000 * 0.06) * 5 + int(16000 * 0.18) * 4  # 4 words, 5 gaps
    assert np.abs(samples).max() > 1000
    other = run(
        call("text_to_speech", text="a small blue circle"), context={"voice": "placeholder"}
    )
    assert other.data != first.data


def test_callable_executors_from_config():
    seen = []

    def fake_speech(request):
        seen.append(request.arguments["text"])
        return b"RIFF-not-really"

    tools = load_tools(
        {
            "tools": {
                "text_to_speech": {"executor": fake_speech},
                "image_generation": {
                    "executor": {
                        "type": "callable",
                        "target": "mage.tools.executors:world_image_generation",
                    }
                },
            }
        }
    )
    result = execute(parse_tool_calls(call("text_to_speech", text="hello"))[0], tools)
    assert (result.data, result.media_type, seen) == (b"RIFF-not-really", "audio/wav", ["hello"])
    image = execute(
        parse_tool_calls(call("image_generation", prompt="a small red cross"))[0], tools
    )
    assert scene_key(image.metadata["scene"]) == scene_key(parse_description("a small red cross"))
    assert TOOLS["text_to_speech"].executor is not fake_speech  # the default registry is untouched


def test_shell_executor_fills_placeholders_per_argument(tmp_path):
    script = "import sys; open(sys.argv[1], 'wb').write(sys.argv[2].encode())"
    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(script)} {{output}} {{text}}"
    config = tmp_path / "tools.yaml"
    config.write_text(
        json.dumps(
            {
                "tools": {
                    "text_to_speech": {
                        "executor": {"type": "shell", "command": command, "timeout_s": 30}
                    }
                }
            }
        )
    )
    tools = load_tools(config)
    text = "it is a red circle; rm -rf $HOME"  # one argument, never seen by a shell
    result = execute(parse_tool_calls(call("text_to_speech", text=text))[0], tools)
    assert result.data == text.encode()
    saved = result.save(tmp_path / "out", "speech")
    assert saved.name == "speech.wav" and saved.read_bytes() == text.encode()

    failing = (
        f"{shlex.quote(sys.executable)} -c {shlex.quote('import sys; sys.exit(3)')} {{output}}"
    )
    tools = load_tools(
        {"tools": {"text_to_speech": {"executor": {"type": "shell", "command": failing}}}}
    )
    with pytest.raises(ToolExecutionError, match="exited 3"):
        execute(parse_tool_calls(call("text_to_speech", text="x"))[0], tools)


@pytest.mark.parametrize(
    "config, words",
    [
        (
            {
                "tools": {
                    "text_to_speech": {"executor": {"type": "shell", "command": "say {voice}"}}
                }
            },
            "unknown placeholders ['voice']",
        ),
        ({"tools": {"text_to_speech": {"executor": {"type": "ftp"}}}}, "needs 'type'"),
        (
            {"tools": {"text_to_speech": {"executor": {"type": "http", "url": "ftp://x"}}}},
            "must start with http",
        ),
        (
            {"tools": {"text_to_speech": {"executor": {"type": "http", "uri": "http://x"}}}},
            "unknown keys ['uri']",
        ),
        ({"tools": {"image_captioning": {"description": "d"}}}, "needs ['parameters', 'executor']"),
        ({"tools": {"text_to_speech": {"colour": 1}}}, "unknown settings ['colour']"),
        ({"tool": {}}, "one key 'tools'"),
    ],
)
def test_bad_tool_configs_name_the_field(config, words):
    with pytest.raises(ToolExecutionError) as info:
        load_tools(config)
    assert words in str(info.value)


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/fail":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"model not loaded")
            return
        if self.path == "/json":
            payload = json.dumps(
                {"media_type": "image/png", "data_base64": "iVBORw==", "metadata": {"seen": body}}
            ).encode()
            content_type = "application/json"
        else:
            has_image = "image_png_base64" in body
            colour = (0, 0, 255) if has_image else (255, 0, 0)
            payload, content_type = png_bytes(Image.new("RGB", (8, 8), colour)), "image/png"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_http_executor_against_a_local_server(server):
    def tools_for(path, tool="image_generation"):
        return load_tools(
            {"tools": {tool: {"executor": {"type": "http", "url": server + path, "timeout_s": 5}}}}
        )

    generated = run(call("image_generation", prompt="a red circle"), tools=tools_for("/generate"))
    assert generated.image().getpixel((0, 0)) == (255, 0, 0)
    edited = run(
        call("image_editing", instruction="make it blue"),
        tools=tools_for("/edit", "image_editing"),
        image=render_scene(SCENE),
    )
    assert edited.image().getpixel((0, 0)) == (0, 0, 255)  # the server got the input picture
    via_json = run(call("image_generation", prompt="a red circle"), tools=tools_for("/json"))
    assert via_json.metadata["seen"] == {
        "name": "image_generation",
        "arguments": {"prompt": "a red circle"},
    }
    with pytest.raises(ToolExecutionError, match="answered 500: model not loaded"):
        run(call("image_generation", prompt="a red circle"), tools=tools_for("/fail"))
    with pytest.raises(ToolExecutionError, match="sent image/png, expected audio/wav"):
        run(call("text_to_speech", text="hi"), tools=tools_for("/generate", "text_to_speech"))


def test_http_executor_reports_an_unreachable_endpoint():
    with ThreadingHTTPServer(("127.0.0.1", 0), _Handler) as probe:
        port = probe.server_address[1]  # bound, then closed: nothing listens there
    tools = load_tools(
        {
            "tools": {
                "image_generation": {
                    "executor": {"type": "http", "url": f"http://127.0.0.1:{port}/", "timeout_s": 2}
                }
            }
        }
    )
    with pytest.raises(ToolExecutionError, match="cannot reach"):
        run(call("image_generation", prompt="a red circle"), tools=tools)
