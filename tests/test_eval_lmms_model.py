"""`harness.lmms_model.MageLMM`: batching keeps request order, lmms-eval's generation
settings are honoured, and ``--model mage`` resolves through the entry point."""

from __future__ import annotations

import pytest
import torch
from lmms_eval.api.instance import Instance
from PIL import Image

from harness.lmms_model import MageLMM, truncate_at_stops

torch.set_num_threads(1)


class RecordingModel:
    """Echoes each question (tagged with its image's width); records every batch it gets."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[str], int]] = []

    def generate(self, images, questions, max_new_tokens):
        self.batches.append((list(questions), max_new_tokens))
        return [f"{q}|{im.size[0] if im else None}\n\nrest" for im, q in zip(images, questions)]

    def loglikelihood(self, images, contexts, continuations):
        return [float(len(c)) for c in continuations]


def _docs(n: int) -> list[dict]:
    # SEED-like docs: a list of frames; the width identifies the doc's first frame.
    return [{"image": [Image.new("RGB", (10 + i, 4)), Image.new("RGB", (99, 4))]} for i in range(n)]


def _requests(gen_kwargs_list: list[dict]) -> list[Instance]:
    return [
        Instance(
            request_type="generate_until",
            arguments=("q" * (1 + (7 * i) % 5) + str(i), kw, lambda d: d["image"], i, "t", "test"),
            idx=0,
            metadata={"task": "t", "doc_id": i, "repeats": 1},
        )
        for i, kw in enumerate(gen_kwargs_list)
    ]


def test_generate_until_keeps_order_across_batches_and_budgets():
    model = RecordingModel()
    lmm = MageLMM.wrap(model, batch_size=3, max_new_tokens_cap=100)
    kwargs = [{"until": ["\n\n"], "max_new_tokens": 16}] * 5 + [{"until": ["ASSISTANT:"]}] * 3
    kwargs += [{"max_new_tokens": 1024, "until": "\n\n", "image_aspect_ratio": "original"}] * 2
    requests = _requests(kwargs)
    lmm.task_dict = {"t": {"test": _docs(len(requests))}}

    answers = lmm.generate_until(requests)

    for i, (req, answer) in enumerate(zip(requests, answers)):
        until = req.args[1].get("until")
        stop = "\n\n" in (until if isinstance(until, list) else [until])
        expected = f"{req.args[0]}|{10 + i}" + ("" if stop else "\n\nrest")
        assert answer == expected  # its own answer, its own first frame, truncated at until
    sizes = [len(q) for q, _ in model.batches]
    assert max(sizes) == 3 and sum(sizes) == len(requests) and len(model.batches) == 4
    by_budget: dict[int, list[str]] = {}
    for questions, budget in model.batches:
        by_budget.setdefault(budget, []).extend(questions)
    # the task's budget, the default (SEED gives none), the cap (MMBench asks for 1024)
    assert {budget: len(qs) for budget, qs in by_budget.items()} == {16: 5, 32: 3, 100: 2}
    for questions, _ in model.batches:  # sorted by length within a budget
        assert [len(q) for q in questions] == sorted((len(q) for q in questions), reverse=True)
    assert lmm.timings["generate_n"] == len(requests)


def test_loglikelihood_returns_loss_pairs_and_multi_round_is_refused():
    lmm = MageLMM.wrap(RecordingModel(), batch_size=2)
    lmm.task_dict = {"t": {"test": _docs(3)}}
    requests = [
        Instance(
            "loglikelihood",
            (f"ctx {i}", "abc" * (i + 1), lambda d: d["image"], i, "t", "test"),
            idx=0,
            metadata={"task": "t", "doc_id": i, "repeats": 1},
        )
        for i in range(3)
    ]
    assert lmm.loglikelihood(requests) == [(3.0, False), (6.0, False), (9.0, False)]
    with pytest.raises(NotImplementedError, match="multi-round"):
        lmm.generate_until_multi_round(requests)


def test_constructor_errors_name_the_argument(tmp_path):
    with pytest.raises(TypeError, match="unknown model_args.*'temperature'"):
        MageLMM(checkpoint=str(tmp_path), temperature=0)
    with pytest.raises(ValueError, match="batch_size"):
        MageLMM.wrap(RecordingModel(), batch_size=0)
    with pytest.raises(ValueError, match="exactly one"):
        MageLMM()
    with pytest.raises(FileNotFoundError, match="checkpoint folder not found"):
        MageLMM(checkpoint=str(tmp_path / "missing"))


def test_truncate_at_stops():
    assert truncate_at_stops("Yes\n\nNo", ["\n\n"]) == "Yes"
    assert truncate_at_stops("A ASSISTANT: B", "ASSISTANT:") == "A "
    assert truncate_at_stops("B", None) == "B"


def test_entry_point_resolves_model_name_mage():
    from lmms_eval import models

    assert "mage" in models.list_available_models()
    assert models.get_model("mage") is MageLMM


def test_wrapped_model_survives_clean_and_keeps_its_training_flag():
    class Net(torch.nn.Module):
        def generate(self, images, questions, max_new_tokens):
            assert not self.training and not torch.is_grad_enabled()
            return ["Yes"] * len(questions)

    net = Net().train()
    lmm = MageLMM.wrap(net, batch_size=2)
    lmm.task_dict = {"t": {"test": _docs(2)}}
    lmm.clean()  # lmms-eval calls this after generation; the default drops nn.Modules
    assert lmm.generate_until(_requests([{}, {}])) == ["Yes", "Yes"]
    assert lmm.model is net and net.training
