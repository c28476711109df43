"""Scene descriptions and edit instructions of the synthetic world, in words, both ways.

The world's tool calls carry plain-language arguments: image_generation gets a description
such as ``"a small green triangle at the top right and a large red circle at the bottom
left"``; image_editing gets an instruction such as ``"make the red circle blue"``,
``"remove the green square"``, ``"add a large yellow cross at the bottom left"`` or
``"replace the red circle with a small blue square"``. This module writes the canonical
forms (`describe_scene`, `object_phrase`) and reads them back, leniently (`parse_description`,
`apply_edit`): synonyms (upper/lower), fillers (corner, picture, please) and spaced-out
decoder output are accepted; anything else is a `SceneTextError` naming the word.
"""

from __future__ import annotations

import dataclasses
import re
from types import ModuleType
from typing import Any

from mage.tools.errors import ToolExecutionError

# Words that carry no attribute and may appear in a description or an instruction.
FILLER = frozenset(
    "a an the at in on of to into with corner picture image scene photo is it there please "
    "me this that can you show".split()
)
VERTICAL = {"top": "top", "upper": "top", "bottom": "bottom", "lower": "bottom"}
HORIZONTAL = {"left": "left", "right": "right"}
RECOLOR_VERBS = ("make", "turn", "change", "recolor", "paint")
EXAMPLE = "'a small green triangle at the top right and a large red circle at the bottom left'"


class SceneTextError(ToolExecutionError):
    """A description or edit instruction that does not describe a drawable world scene."""


def world() -> ModuleType:
    """The synthetic world's scene module (imported lazily: tool parsing does not need it)."""
    from mage.world import scene

    return scene


def words(text: str) -> list[str]:
    """Lower-case letter runs: punctuation and spacing from a tokenizer's decode are ignored."""
    return re.findall(r"[a-z]+", text.lower())


def quadrant_words(quadrant: str) -> tuple[str, str]:
    """``'top_right'`` / ``'top right'`` -> ``('top', 'right')``."""
    parts = [p for p in re.split(r"[\s_\-]+", str(quadrant).lower()) if p]
    vertical = [VERTICAL[p] for p in parts if p in VERTICAL]
    horizontal = [p for p in parts if p in HORIZONTAL]
    if len(vertical) != 1 or len(horizontal) != 1:
        raise SceneTextError(
            f"world quadrant {quadrant!r} is not named like 'top_left' / 'bottom right'; "
            "mage.tools.scene_text cannot describe it"
        )
    return vertical[0], horizontal[0]


def quadrant_phrase(quadrant: str) -> str:
    return " ".join(quadrant_words(quadrant))


def _quadrant_by_words() -> dict[tuple[str, str], str]:
    return {quadrant_words(q): q for q in world().QUADRANTS}


def object_phrase(obj: Any, article: str = "a") -> str:
    """``'a small green triangle at the top right'`` (the canonical wording)."""
    return f"{article} {obj.size} {obj.color} {obj.shape} at the {quadrant_phrase(obj.quadrant)}"


def reference_phrase(obj: Any) -> str:
    """How an instruction names an object of a scene: ``'the green triangle'``."""
    return f"the {obj.color} {obj.shape}"


def sort_objects(objects) -> list:
    order = {q: i for i, q in enumerate(world().QUADRANTS)}
    return sorted(objects, key=lambda o: order[o.quadrant])


def describe_scene(scene: Any) -> str:
    """All objects in quadrant order, joined by 'and' (the image_generation prompt)."""
    return " and ".join(object_phrase(o) for o in sort_objects(scene.objects))


def scene_key(scene: Any) -> frozenset[tuple[str, str, str, str]]:
    """A scene as a set of (shape, color, size, quadrant): equal keys = the same picture."""
    return frozenset((o.shape, o.color, o.size, o.quadrant) for o in scene.objects)


# ---- reading ---------------------------------------------------------------------------
def _attributes(chunk: list[str], text: str) -> dict[str, str]:
    """Attribute words of one object mention; unknown words raise SceneTextError."""
    w = world()
    found: dict[str, str] = {}
    vertical = horizontal = None
    for word in chunk:
        for field, vocabulary in (("shape", w.SHAPES), ("color", w.COLORS), ("size", w.SIZES)):
            if word in vocabulary:
                if field in found and found[field] != word:
                    raise SceneTextError(f"two {field}s ({found[field]!r}, {word!r}) in {text!r}")
                found[field] = word
                break
        else:
            if word in VERTICAL:
                vertical = VERTICAL[word]
            elif word in HORIZONTAL:
                horizontal = word
            elif word not in FILLER:
                raise SceneTextError(
                    f"unknown word {word!r} in {text!r}; describe objects like {EXAMPLE} "
                    f"(shapes {list(w.SHAPES)}, colors {list(w.COLORS)}, sizes {list(w.SIZES)})"
                )
    if (vertical is None) != (horizontal is None):
        raise SceneTextError(f"incomplete position in {text!r}: say e.g. 'at the top right'")
    if vertical is not None:
        found["quadrant"] = _quadrant_by_words()[(vertical, horizontal)]
    return found


def _split_and(tokens: list[str]) -> list[list[str]]:
    chunks, current = [], []
    for token in tokens:
        if token == "and":
            chunks.append(current)
            current = []
        else:
            current.append(token)
    chunks.append(current)
    return [c for c in chunks if any(t not in FILLER for t in c)]


def _place(mentions: list[dict[str, str]], existing: list, text: str, default_size: str | None):
    """WorldObjects for new mentions: shape and color required, size/quadrant defaulted."""
    w = world()
    taken = {o.quadrant for o in existing}
    placed = []
    for mention in mentions:
        missing = [f for f in ("shape", "color") if f not in mention]
        if missing:
            raise SceneTextError(f"no {' or '.join(missing)} for an object in {text!r}")
        quadrant = mention.get("quadrant")
        if quadrant is None:
            free = [q for q in w.QUADRANTS if q not in taken]
            if not free:
                raise SceneTextError(f"no free quadrant left for an object in {text!r}")
            quadrant = free[0]
        if quadrant in taken:
            raise SceneTextError(
                f"two objects at the {quadrant_phrase(quadrant)} in {text!r}: "
                "the world holds one object per quadrant"
            )
        taken.add(quadrant)
        size = mention.get("size", default_size or w.SIZES[0])
        placed.append(w.WorldObject(mention["shape"], mention["color"], size, quadrant))
    return placed


def _changed(obj: Any, change: dict[str, str]) -> Any:
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **change)
    fields = {k: getattr(obj, k) for k in ("shape", "color", "size", "quadrant")}
    return world().WorldObject(**{**fields, **change})


def make_scene(objects, jitter_seed: int = 0) -> Any:
    """A world Scene (objects in quadrant order); the world's own checks become SceneTextError."""
    try:
        return world().Scene(tuple(sort_objects(objects)), jitter_seed=jitter_seed)
    except ValueError as err:
        raise SceneTextError(f"not a drawable world scene: {err}") from None


def parse_description(text: str) -> Any:
    """A Scene from a description; missing size -> SIZES[0], missing position -> first free."""
    mentions = [_attributes(chunk, text) for chunk in _split_and(words(text.replace(",", " and ")))]
    if not mentions:
        raise SceneTextError(f"empty description {text!r}; describe objects like {EXAMPLE}")
    return make_scene(_place(mentions, [], text, None))


def _find(scene: Any, reference: dict[str, str], text: str):
    if not reference:
        raise SceneTextError(f"{text!r} does not say which object (e.g. 'the red circle')")
    matches = [o for o in scene.objects if all(getattr(o, k) == v for k, v in reference.items())]
    if len(matches) != 1:
        have = ", ".join(reference_phrase(o) for o in sort_objects(scene.objects)) or "nothing"
        what = "no" if not matches else "more than one"
        ref = " ".join(reference.get(k, "") for k in ("size", "color", "shape")).split()
        raise SceneTextError(f"{what} {' '.join(ref)} in the picture for {text!r} (it has {have})")
    return matches[0]


def apply_edit(instruction: str, scene: Any) -> Any:
    """The Scene after an edit instruction (recolor/resize/reshape, remove, add, replace)."""
    tokens = [t for t in words(instruction) if t not in ("please", "can", "you")]
    if not tokens:
        raise SceneTextError("empty edit instruction; e.g. 'make the red circle blue'")
    verb, rest = tokens[0], tokens[1:]
    objects = list(scene.objects)
    seed = getattr(scene, "jitter_seed", 0)
    if verb == "remove":
        target = _find(scene, _attributes(rest, instruction), instruction)
        return make_scene([o for o in objects if o is not target], seed)
    if verb == "add":
        mentions = [_attributes(c, instruction) for c in _split_and(rest)]
        if not mentions:
            raise SceneTextError(f"nothing to add in {instruction!r}")
        return make_scene(objects + _place(mentions, objects, instruction, None), seed)
    if verb == "replace":
        if "with" not in rest:
            raise SceneTextError(
                f"{instruction!r}: say 'replace the red circle with a blue square'"
            )
        cut = rest.index("with")
        target = _find(scene, _attributes(rest[:cut], instruction), instruction)
        mention = {"quadrant": target.quadrant, **_attributes(rest[cut + 1 :], instruction)}
        others = [o for o in objects if o is not target]
        new = _place([mention], others, instruction, target.size)
        return make_scene(others + new, seed)
    if verb in RECOLOR_VERBS:
        shape_at = [i for i, t in enumerate(rest) if t in world().SHAPES]
        if not shape_at:
            raise SceneTextError(f"{instruction!r} names no shape; e.g. 'make the red circle blue'")
        target = _find(scene, _attributes(rest[: shape_at[0] + 1], instruction), instruction)
        change = _attributes(rest[shape_at[0] + 1 :], instruction)
        if not change:
            raise SceneTextError(f"{instruction!r} says no new color, size or shape")
        edited = _changed(target, change)
        others = [o for o in objects if o is not target]
        if any(o.quadrant == edited.quadrant for o in others):
            raise SceneTextError(f"{instruction!r} moves onto an occupied quadrant")
        return make_scene(others + [edited], seed)
    raise SceneTextError(
        f"unknown edit verb {verb!r} in {instruction!r}; use one of "
        f"{['remove', 'add', 'replace', *RECOLOR_VERBS]}"
    )
