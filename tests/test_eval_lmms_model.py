"""`harness.lmms_model.MageLMM`: batching keeps request order, lmms-eval's generation
settings are honoured, and ``--model mage`` resolves through the entry point."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lmms_eval.api.instance import Instance
from PIL import Image

from harness.lmms_model import MageLMM, truncate_at_stops

torch.set_num_threads(1)


class RecordingModel:
    """Echoes each question (tagged with its image's width); records every batch it gets."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[str], list[int], list]] = []

    def generate(self, images, questions, max_new_tokens, stop=None):
        self.batches.append((list(questions), list(max_new_tokens), list(stop)))
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


def _task_requests(kwargs_by_task: dict[str, list[dict]]) -> list[Instance]:
    requests, i = [], 0
    for task, kwargs_list in kwargs_by_task.items():
        for kw in kwargs_list:
            context = "q" * (1 + (7 * i) % 5) + str(i)
            args = (context, kw, lambda d: d["image"], i, task, "test")
            meta = {"task": task, "doc_id": i, "repeats": 1}
            requests.append(Instance("generate_until", args, idx=0, metadata=meta))
            i += 1
    return requests


def test_generate_until_keeps_order_across_batches_tasks_and_budgets():
    model = RecordingModel()
    lmm = MageLMM.wrap(model, batch_size=3, max_new_tokens_cap=100, loader_workers=0)
    mme = [{"until": ["\n\n"], "max_new_tokens": 16}] * 5
    seed = [{"until": ["ASSISTANT:"], "image_aspect_ratio": "original"}] * 3
    mmbench = [{"max_new_tokens": 1024, "until": "\n\n"}] * 2
    requests = _task_requests({"mme": mme, "seedbench": seed, "mmbench_en_dev_static": mmbench})
    docs = _docs(len(requests))
    lmm.task_dict = {t: {"test": docs} for t in ("mme", "seedbench", "mmbench_en_dev_static")}

    answers = lmm.generate_until(requests)

    for i, (req, answer) in enumerate(zip(requests, answers)):
        until = req.args[1].get("until")
        stop = "\n\n" in (until if isinstance(until, list) else [until])
        expected = f"{req.args[0]}|{10 + i}" + ("" if stop else "\n\nrest")
        assert answer == expected  # its own answer, its own first frame, truncated at until
    # per task (lmms-eval's Collator grouping), longest prompt first, at most 3 per batch
    assert [len(q) for q, _, _ in model.batches] == [3, 2, 3, 2]
    for questions, _, _ in model.batches:
        assert [len(q) for q in questions] == sorted((len(q) for q in questions), reverse=True)
    budgets = {q: b for qs, bs, _ in model.batches for q, b in zip(qs, bs)}
    stops = {q: s for qs, _, ss in model.batches for q, s in zip(qs, ss)}
    by_task = {req.args[4]: (budgets[req.args[0]], stops[req.args[0]]) for req in requests}
    # harness budgets: MME 16 (the task's own), SEED 16 (the task gives none), MMBench 32
    # (the task asks 1024); stop strings are passed per row
    assert by_task == {
        "mme": (16, ["\n\n"]),
        "seedbench": (16, ["ASSISTANT:"]),
        "mmbench_en_dev_static": (32, ["\n\n"]),
    }
    assert lmm.timings["generate_n"] == len(requests)
    assert {t: v["samples"] for t, v in lmm.timings["tasks"].items()} == {
        "mme": 5,
        "seedbench": 3,
        "mmbench_en_dev_static": 2,
    }


def test_task_budgets_and_the_cap():
    model = RecordingModel()
    lmm = MageLMM.wrap(model, batch_size=8, budgets="task", max_new_tokens_cap=100)
    requests = _task_requests(
        {"mme": [{"max_new_tokens": 16}], "seedbench": [{}], "mage_local_mmbench_en_dev": [{}]}
    )
    requests[-1].args[1]["max_new_tokens"] = 1024
    lmm.task_dict = {
        t: {"test": _docs(3)} for t in ("mme", "seedbench", "mage_local_mmbench_en_dev")
    }
    lmm.generate_until(requests)
    assert sorted(b for _, bs, _ in model.batches for b in bs) == [16, 32, 100]


def test_harness_budgets_go_to_these_tasks_only_not_to_tasks_sharing_a_prefix():
    """lmms-eval's mmerealworld or seedbench_2_plus answer in other formats: they keep their
    own budgets and read their whole answers."""
    from harness.eval_batches import benchmark_of, budget, scored_enough

    for task, bench in (("mme", "mme"), ("mage_local_mmbench_en_dev_static", "mmbench"),
                        ("mmbench_en_dev", "mmbench"), ("mage_local_seedbench", "seedbench")):  # fmt: skip
        assert benchmark_of(task) == bench, task
    for task in ("mmerealworld", "mme_cot_reason", "seedbench_2_plus", "mmbench_cn_dev"):
        assert benchmark_of(task) is None and scored_enough(task, "harness") is None, task
        assert budget(task, {"max_new_tokens": 1024}, "harness", 64, None) == 1024, task


def test_padding_requests_are_answered_but_not_counted_as_samples():
    """lmms-eval gives a rank without documents a copy of doc 0 marked ``__padding_only__``
    (and pads shards to equal length the same way): answered, but not a sample of its cost."""
    model = RecordingModel()
    lmm = MageLMM.wrap(model, batch_size=4, loader_workers=0)
    requests = _task_requests({"mme": [{"max_new_tokens": 4}] * 3})
    requests[2].metadata["__padding_only__"] = True
    lmm.task_dict = {"mme": {"test": _docs(3)}}
    lmm.reset_timings()
    assert len(lmm.generate_until(requests)) == 3
    assert lmm.timings["tasks"]["mme"]["samples"] == 2
    assert lmm.timings["tasks"]["mme"]["rows"] == 3


def test_images_reach_the_model_converted_from_any_mode():
    """RGBA is composited on the background, 16-bit greyscale scaled (the tasks'
    ``doc_to_visual`` would convert("RGB"): transparent -> black, 16-bit -> white)."""

    class Seen(RecordingModel):
        def generate(self, images, questions, max_new_tokens, stop=None):
            self.images = images
            return ["A"] * len(images)

    rgba = Image.new("RGBA", (4, 2), (10, 20, 30, 0))
    grey16 = Image.fromarray(np.full((2, 4), 30000, dtype=np.uint16))
    docs = [{"image": rgba}, {"image": grey16}]
    model = Seen()
    lmm = MageLMM.wrap(model, batch_size=2, background="0,255,0")
    lmm.task_dict = {"t": {"test": docs}}
    to_visual = lambda doc: [doc["image"].convert("RGB")]  # noqa: E731 (as lmms-eval's MME)
    requests = [
        Instance(
            "generate_until",
            ("q", {}, to_visual, i, "t", "test"),
            idx=0,
            metadata={"task": "t", "doc_id": i, "repeats": 1},
        )
        for i in range(2)
    ]
    lmm.generate_until(requests)
    seen = {im.getpixel((0, 0)) for im in model.images}
    assert seen == {(0, 255, 0), (117, 117, 117)}  # 30000 / 257 = 116.7
    assert {im.mode for im in model.images} == {"RGB"}


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
    with pytest.raises(ValueError, match="background must be white, black or R,G,B"):
        MageLMM.wrap(RecordingModel(), background="pink")
    with pytest.raises(ValueError, match="budgets must be 'harness' or 'task'"):
        MageLMM.wrap(RecordingModel(), budgets="long")
    with pytest.raises(ValueError, match="loader_workers"):
        MageLMM.wrap(RecordingModel(), loader_workers=-1)
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
        def generate(self, images, questions, max_new_tokens, stop=None):
            assert not self.training and not torch.is_grad_enabled()
            return ["Yes"] * len(questions)

    net = Net().train()
    lmm = MageLMM.wrap(net, batch_size=2)
    lmm.task_dict = {"t": {"test": _docs(2)}}
    lmm.clean()  # lmms-eval calls this after generation; the default drops nn.Modules
    assert lmm.generate_until(_requests([{}, {}])) == ["Yes", "Yes"]
    assert lmm.model is net and net.training


ANSWERS = [
    "Yes", "No", "yes.", "No.", "Y", "n", "Yes at the top right", "No, there is none",
    "  yes  ", "Ye", "...yes", "y.e.s.", "Nope", "not sure", "I think yes", "A", " B) blue",
    "", " ", "noyes", "Yesno", "The answer is no", "C.", "no\n\nYes", "Yes\u3002more",
    "Yesterday", "no yes", "No, yes", "nobody", "yes no", "n.o", "Y.es", "nyes", "ny",
]  # fmt: skip


@pytest.mark.parametrize("task", ["mme", "seedbench"])
def test_a_reading_window_stops_where_lmms_eval_scoring_stops_reading(task):
    """Any answer cut where its task's window first holds gets the full answer's score."""
    from harness.eval_batches import scored_enough

    if task == "mme":
        from lmms_eval.tasks.mme.utils import parse_pred_ans as label
    else:
        from lmms_eval.tasks.seedbench.utils import seed_process_result

        def label(answer: str) -> str:
            doc = {"answer": "A", "data_type": "x", "question_id": 0}
            return seed_process_result(doc, [answer])["seed_all"]["pred"] if answer.strip() else ""

    enough = scored_enough(task, "harness")
    assert enough is not None and scored_enough(task, "task") is None
    cut_somewhere = 0
    for answer in ANSWERS:
        # generation's view: the decoded answer grows a character at a time, stripped
        cut = next(
            (answer[:i].strip() for i in range(1, len(answer) + 1) if enough(answer[:i].strip())),
            answer.strip(),
        )
        assert label(cut) == label(answer.strip()), (answer, cut)
        cut_somewhere += cut != answer.strip()
    assert cut_somewhere >= 5  # the window does cut most rambling answers
    if task == "mme":  # a yes or no is decided at once: no decode step waits for its EOS
        assert enough("Yes") and enough("no") and not enough("ye") and not enough("n")
    assert scored_enough("mage_local_mmbench_en_dev", "harness") is None  # reads it all


def test_a_loader_worker_hands_each_batch_over_in_one_storage():
    from harness.eval_batches import WHITE, BatchSource, Row, loader

    docs = _docs(5)
    rows = [Row(i, "q", 1, [], lambda d: d["image"], i, "t", "test") for i in range(5)]
    rows[3] = Row(3, "q", 1, [], None, 3, "t", "test")  # a text-only question
    batches = [rows[:3], rows[3:]]
    tensors = lambda image: torch.full((3, 4, 4), float(image.size[0]))  # noqa: E731
    source = BatchSource(batches, {"t": {"test": docs}}, tensors, WHITE)
    got = list(loader(source, workers=1))
    assert [b.index for b in got] == [0, 1]
    first, second = got[0].images, got[1].images
    assert [float(t[0, 0, 0]) for t in first] == [10.0, 11.0, 12.0]  # each row its own image
    assert len({t.untyped_storage().data_ptr() for t in first}) == 1  # one block per batch
    assert second[0] is None and float(second[1][0, 0, 0]) == 14.0


def test_a_mage_model_answers_alike_at_any_batch_size_with_text_only_rows():
    """The real `MageModel` path (prompts tokenized once, images from loader workers, text-only
    rows without placeholders): the same answers at batch 1 and batch 4, with 0 or 1 workers."""
    from mage.model import MageModel
    from mage.presets import get_preset

    torch.manual_seed(0)
    model = MageModel.build(get_preset("tiny-test"))  # random weights: long, prompt-led answers
    docs = [
        {"image": Image.new("RGB", (20 + 7 * i, 16), (40 * i, 200 - 30 * i, 90))} for i in range(6)
    ]
    visual = lambda doc: [doc["image"]]  # noqa: E731
    requests = [
        Instance(
            "generate_until",
            (f"question {'x ' * i}{i}", {"max_new_tokens": 4, "until": []},
             None if i in (2, 5) else visual, i, "t", "test"),
            idx=0,
            metadata={"task": "t", "doc_id": i, "repeats": 1},
        )
        for i in range(6)
    ]  # fmt: skip
    answers = []
    for batch_size, workers in [(1, 0), (4, 0), (4, 1)]:
        lmm = MageLMM.wrap(model, batch_size=batch_size, loader_workers=workers)
        lmm.task_dict = {"t": {"test": docs}}
        answers.append(lmm.generate_until(requests))
    assert answers[0] == answers[1] == answers[2] and len(answers[0]) == 6
    assert len(set(answers[0])) > 1 and all(answers[0])  # rows answer their own prompts


def test_questions_of_one_image_share_a_batch_and_its_encoding(monkeypatch):
    """MME asks two questions of each image (adjacent documents): with prompts of equal length
    they land in one batch, whose loader hands the equal pixels over as one tensor, preprocessed
    and encoded once; the answers are those of batch 1, where every image is encoded on its own."""
    from harness.lmms_model import MageLMM
    from mage.model import MageModel
    from mage.presets import get_preset

    torch.manual_seed(0)
    model = MageModel.build(get_preset("tiny-test"))
    # docs 2k and 2k+1: equal pixels in separate image objects (as a dataset decodes them)
    docs = [{"image": Image.new("RGB", (24, 16), (70 * (i // 2), 90, 200 - 60 * (i // 2)))}
            for i in range(6)]  # fmt: skip
    contexts = [f"Is it {word}?" for word in ("red", "big", "odd", "far", "low", "new")]
    assert len({len(model.tokenizer(c)["input_ids"]) for c in contexts}) == 1
    requests = [
        Instance(
            "generate_until",
            (contexts[i], {"max_new_tokens": 3, "until": []}, lambda d: [d["image"]], i, "t",
             "test"),
            idx=0,
            metadata={"task": "t", "doc_id": i, "repeats": 1},
        )
        for i in range(6)
    ]  # fmt: skip
    encoded: list[int] = []  # images per tower call
    real = model.vision.forward
    monkeypatch.setattr(
        model.vision, "forward", lambda pixels: (encoded.append(len(pixels)), real(pixels))[1]
    )
    preprocessed: list[int] = []  # counted in this process: loader_workers=0 only
    tower_preprocess = model.vision.preprocess
    monkeypatch.setattr(
        model.vision,
        "preprocess",
        lambda images: (preprocessed.append(len(images)), tower_preprocess(images))[1],
    )
    answers = {}
    for batch_size, workers in [(1, 0), (2, 1), (6, 1), (6, 0)]:
        encoded.clear()
        preprocessed.clear()
        lmm = MageLMM.wrap(model, batch_size=batch_size, loader_workers=workers)
        lmm.task_dict = {"t": {"test": docs}}
        answers[batch_size, workers] = lmm.generate_until(requests)
        want = {1: [1] * 6, 2: [1, 1, 1], 6: [3]}[batch_size]
        assert encoded == want, (batch_size, workers, encoded)
        if workers == 0:  # equal pixels are preprocessed once per batch too
            assert len(preprocessed) == sum(want), (batch_size, preprocessed)
    assert len(set(map(tuple, answers.values()))) == 1
