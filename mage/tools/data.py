"""Tool-calling training and evaluation data, in LLaVA's conversation format.

`generate_world_tool_data` writes ``tools_train.json`` and ``tools_eval.json`` for the
synthetic world: the user asks, in varied words, to draw a scene, edit the attached picture,
describe the picture aloud or say a phrase; the assistant's reply is one canonical call,
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``. Pictures to edit or describe
are rendered under ``WORLD_ROOT/tools_images/``. Eval records also carry ``tool_target``
(the expected call, the input scene, the scene the call should produce, and whether the
request is phrased as in training, ``phrasing: seen``, or in a held-out way, ``unseen``:
see `PHRASINGS`) for `mage.tools.metrics`. Every sample is drawn from its own seeded stream
(``numpy.random.default_rng([seed, split, index, 7])``), so a sample never depends on how
many others were made. Human turns use only the world's words plus the tool-call vocabulary.

`convert_captions_to_tool_samples` turns a captioned LLaVA dataset (e.g. LCS-558K) into
generation and describe-aloud calls for training on real data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mage.io import atomic_path, atomic_write_json
from mage.tools.parser import format_tool_call
from mage.tools.scene_text import (
    describe_scene,
    make_scene,
    object_phrase,
    quadrant_words,
    reference_phrase,
    world,
)

SPLITS = {"train": 0, "eval": 1}
KINDS = ("generation", "edit", "describe_aloud", "say")
KIND_WEIGHTS = (0.35, 0.35, 0.15, 0.15)
IMAGES_DIR = "tools_images"

# How users ask, per request. ``seen`` phrasings are trained on and evaluated; ``unseen`` ones
# are held out of training and only evaluated, so the tool score says whether a model
# generalises beyond its training templates: the "can you ..." frame, the verbs "paint",
# "show" and "speak", and the object-first word order ("X, draw it") never appear in training.
PHRASINGS = {
    "generate": {
        "seen": [
            "draw {d}",
            "please draw {d}",
            "generate an image of {d}",
            "create a picture with {d}",
            "render a scene with {d}",
            "make a picture of {d}",
        ],
        "unseen": [
            "can you draw {d}",
            "paint {d}",
            "show me a picture of {d}",
            "{d}, draw it",
        ],
    },
    "recolor": {
        "seen": [
            "make {r} {v}",
            "turn {r} {v}",
            "change {r} to {v}",
            "recolor {r} {v}",
            "please turn {r} into {v}",
        ],
        "unseen": ["can you make {r} {v}", "paint {r} {v}", "{r}, make it {v}"],
    },
    "remove": {
        "seen": ["remove {r}", "please remove {r}", "remove {r} in the image"],
        "unseen": ["can you remove {r} in this picture", "{r}, remove it"],
    },
    "add": {
        "seen": ["add {d}", "please add {d}", "add {d} to the image"],
        "unseen": ["can you add {d} to this picture", "{d}, add it to the image"],
    },
    "replace": {
        "seen": ["replace {r} with {d}", "please replace {r} with {d}"],
        "unseen": ["can you replace {r} with {d}", "{r}, replace it with {d}"],
    },
    "describe": {
        "seen": [
            "describe this picture out loud",
            "describe the picture aloud",
            "tell me what is in this image out loud",
            "read out loud what is in the picture",
            "say what is in this picture",
        ],
        "unseen": [
            "can you describe this scene aloud",
            "speak what is in this photo",
            "this picture, describe it out loud",
        ],
    },
    "say": {
        "seen": ["say {p}", "say {p} out loud", "please say {p} aloud", "read {p} out loud"],
        "unseen": ["can you say {p}", "speak {p}", "{p}, say it out loud"],
    },
}
PHRASING_SPLITS = ("seen", "unseen")
EVAL_UNSEEN_SHARE = 0.5  # eval samples asked in a held-out phrasing
CAPTION_GENERATE = [
    "generate an image of {c}",
    "draw {c}",
    "create a picture of {c}",
    "please paint {c}",
    "render {c}",
]


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _new_object(rng, pairs, quadrant):
    w = world()
    free = [(c, s) for c in w.COLORS for s in w.SHAPES if (c, s) not in pairs]
    color, shape = free[int(rng.integers(len(free)))]
    return w.WorldObject(shape, color, _pick(rng, w.SIZES), quadrant)


def human_object(obj: Any, rng: np.random.Generator) -> str:
    """An object in the user's words: position said as 'at the top right', 'in the upper
    right corner', ..."""
    vertical, horizontal = quadrant_words(obj.quadrant)
    if rng.random() < 0.3:
        vertical = {"top": "upper", "bottom": "lower"}[vertical]
    place = _pick(rng, ["at the {v} {h}", "in the {v} {h} corner", "at the {v} {h} corner"])
    return f"a {obj.size} {obj.color} {obj.shape} " + place.format(v=vertical, h=horizontal)


def human_scene(scene: Any, rng: np.random.Generator) -> str:
    return " and ".join(human_object(o, rng) for o in scene.objects)


def scene_records(scene: Any) -> dict[str, Any]:
    """A scene as JSON (the world's own ``Scene.to_dict``: objects and jitter seed)."""
    return scene.to_dict()


def scene_from_records(data: dict[str, Any]) -> Any:
    return world().Scene.from_dict(data)


def _edit(rng: np.random.Generator, scene: Any, phrasing: str) -> tuple[str, str, Any]:
    """(user request, canonical instruction, scene after) for one random edit of ``scene``,
    asked in a ``phrasing`` ("seen" or "unseen") template."""
    ask = _asker(rng, phrasing)
    w = world()
    objects, seed = list(scene.objects), scene.jitter_seed
    pairs = {(o.color, o.shape) for o in objects}
    ops = ["recolor", "resize", "replace"] + ["remove"] * (len(objects) > 1)
    ops += ["add"] * (len(objects) < len(w.QUADRANTS))
    op = _pick(rng, ops)
    target = objects[int(rng.integers(len(objects)))]
    others = [o for o in objects if o is not target]
    ref = reference_phrase(target)
    if op == "recolor":
        colors = [c for c in w.COLORS if (c, target.shape) not in pairs]
        new = _pick(rng, colors)
        after = w.WorldObject(target.shape, new, target.size, target.quadrant)
        return (
            ask("recolor").format(r=ref, v=new),
            f"make {ref} {new}",
            make_scene(others + [after], seed),
        )
    if op == "resize":
        new = _pick(rng, [s for s in w.SIZES if s != target.size])
        after = w.WorldObject(target.shape, target.color, new, target.quadrant)
        return (
            ask("recolor").format(r=ref, v=new),
            f"make {ref} {new}",
            make_scene(others + [after], seed),
        )
    if op == "remove":
        return ask("remove").format(r=ref), f"remove {ref}", make_scene(others, seed)
    if op == "add":
        free = [q for q in w.QUADRANTS if q not in {o.quadrant for o in objects}]
        new_obj = _new_object(rng, pairs, _pick(rng, free))
        request = ask("add").format(d=human_object(new_obj, rng))
        return request, f"add {object_phrase(new_obj)}", make_scene(objects + [new_obj], seed)
    new_obj = _new_object(rng, pairs, target.quadrant)
    described = f"a {new_obj.size} {new_obj.color} {new_obj.shape}"
    request = ask("replace").format(r=ref, d=described)
    return request, f"replace {ref} with {described}", make_scene(others + [new_obj], seed)


def _asker(rng: np.random.Generator, phrasing: str):
    """``ask(request)``: a template of that request in the given phrasing split."""
    if phrasing not in PHRASING_SPLITS:
        raise ValueError(f"phrasing must be one of {PHRASING_SPLITS}, got {phrasing!r}")
    return lambda request: _pick(rng, PHRASINGS[request][phrasing])


def make_sample(
    rng: np.random.Generator, sample_id: str, phrasing: str = "seen"
) -> tuple[dict[str, Any], Any]:
    """(record, picture scene or None): one tool-calling sample with its ``tool_target``,
    the user's request in a ``phrasing`` ("seen": training templates; "unseen": held out)."""
    ask = _asker(rng, phrasing)
    kind = KINDS[int(rng.choice(len(KINDS), p=KIND_WEIGHTS))]
    scene = world().sample_scene(rng)
    target: dict[str, Any] = {"kind": kind, "phrasing": phrasing}
    picture = None
    if kind == "generation":
        request, name, arguments = (
            ask("generate").format(d=human_scene(scene, rng)),
            "image_generation",
            {"prompt": describe_scene(scene)},
        )
        target["scene"] = scene_records(scene)
    elif kind == "edit":
        picture = scene
        request, instruction, after = _edit(rng, scene, phrasing)
        name, arguments = "image_editing", {"instruction": instruction}
        target.update(input_scene=scene_records(scene), scene=scene_records(after))
    elif kind == "describe_aloud":
        picture = scene
        request, name, arguments = (
            ask("describe"),
            "text_to_speech",
            {"text": describe_scene(scene)},
        )
        target.update(input_scene=scene_records(scene), text=arguments["text"])
    else:
        obj = scene.objects[0]
        phrase = _pick(
            rng,
            [
                object_phrase(obj),
                f"there is a {obj.color} {obj.shape}",
                f"the {obj.size} {obj.color} {obj.shape}",
                describe_scene(scene),
            ],
        )
        request, name, arguments = (
            ask("say").format(p=phrase),
            "text_to_speech",
            {"text": phrase},
        )
        target["text"] = phrase
    target.update(name=name, arguments=arguments)
    human = f"<image>\n{request}" if picture is not None else request
    record = {
        "id": sample_id,
        "conversations": [
            {"from": "human", "value": human},
            {"from": "gpt", "value": format_tool_call(name, arguments)},
        ],
        "tool_target": target,
    }
    return record, picture


def generate_world_tool_data(
    world_root: Path, seed: int, n_train: int, n_eval: int
) -> dict[str, Path]:
    """Write tools_train.json, tools_eval.json and tools_images/ under ``world_root``.

    Returns ``{"train": ..., "eval": ..., "images": ...}``. Only eval records keep
    ``tool_target``; image paths are relative to ``world_root``."""
    if n_train < 0 or n_eval < 0:
        raise ValueError(f"n_train and n_eval must be >= 0 (got {n_train}, {n_eval})")
    world_root = Path(world_root)
    render = world().render_scene
    out = {
        "train": world_root / "tools_train.json",
        "eval": world_root / "tools_eval.json",
        "images": world_root / IMAGES_DIR,
    }
    splits: dict[str, list[dict[str, Any]]] = {}
    with atomic_path(out["images"]) as images_tmp:
        images_tmp.mkdir()
        for split, count in (("train", n_train), ("eval", n_eval)):
            records = []
            for i in range(count):
                rng = np.random.default_rng([seed, SPLITS[split], i, 7])
                # training never sees a held-out phrasing; eval asks half of its samples in one
                unseen = split == "eval" and rng.random() < EVAL_UNSEEN_SHARE
                phrasing = "unseen" if unseen else "seen"
                record, picture = make_sample(rng, f"tools_{split}_{i:06d}", phrasing)
                if picture is not None:
                    name = f"{split}_{i:06d}.png"
                    render(picture, image_size=64).save(images_tmp / name)
                    record = {
                        "id": record["id"],
                        "image": f"{IMAGES_DIR}/{name}",
                        **{k: v for k, v in record.items() if k != "id"},
                    }
                if split == "train":
                    record.pop("tool_target")
                records.append(record)
            splits[split] = records
    for split in ("train", "eval"):
        atomic_write_json(out[split], splits[split])
    return out


def convert_captions_to_tool_samples(llava_json_in: Path, out_path: Path, seed: int) -> Path:
    """Captioned LLaVA records -> image_generation (caption as prompt) and text_to_speech
    (describe the picture aloud) samples, one per record, template drawn from
    ``default_rng([seed, index, 7])``."""
    llava_json_in, out_path = Path(llava_json_in), Path(out_path)
    try:
        records = json.loads(llava_json_in.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{llava_json_in}: cannot read a LLaVA JSON list: {err}") from None
    if not isinstance(records, list):
        raise ValueError(f"{llava_json_in}: expected a JSON list of LLaVA records")
    samples = []
    for i, record in enumerate(records):
        turns = record.get("conversations") if isinstance(record, dict) else None
        replies = [t.get("value", "") for t in turns or [] if t.get("from") in ("gpt", "assistant")]
        if not replies or not str(replies[0]).strip():
            raise ValueError(
                f"{llava_json_in}: record {i} (id {record.get('id') if isinstance(record, dict) else None!r}) "
                "has no assistant caption in 'conversations'"
            )
        caption = " ".join(str(replies[0]).split())
        rng = np.random.default_rng([seed, i, 7])
        sample_id = f"{record.get('id', i)}_tool"
        if record.get("image") and rng.random() < 0.5:
            human = f"<image>\n{_pick(rng, PHRASINGS['describe']['seen'])}"
            call = format_tool_call("text_to_speech", {"text": caption})
            samples.append(
                {"id": sample_id, "image": record["image"], "conversations": _turns(human, call)}
            )
        else:
            human = _pick(rng, CAPTION_GENERATE).format(
                c=caption[:1].lower() + caption[1:].rstrip(".")
            )
            call = format_tool_call("image_generation", {"prompt": caption})
            samples.append({"id": sample_id, "conversations": _turns(human, call)})
    atomic_write_json(out_path, samples)
    return out_path


def _turns(human: str, gpt: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]
