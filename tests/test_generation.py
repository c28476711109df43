"""`mage.generation`: per-row budgets and stop strings, finished rows leaving the batch, and
answers that do not depend on the batch (or on where the image was preprocessed)."""

from __future__ import annotations

import pytest
import torch
from model_fixtures import write_tiny_dataset
from PIL import Image

from mage import generation, prefill
from mage.config import DataSource
from mage.model import MageModel
from mage.presets import get_preset
from mage.train import build_dataset, train_stage

torch.set_num_threads(1)

QUESTIONS = [
    "What color is the square?",
    "What color is the square? Answer with one word.",
    "What",
    "color",
    "Is the square red?",
    "What color is the square?",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    data = write_tiny_dataset(root / "data")
    cfg = get_preset("tiny-test").with_overrides(
        {
            "stage1.data": [DataSource(path=str(data)).model_dump()],
            "stage2.data": [DataSource(path=str(data)).model_dump()],
            "stage2.steps": 20,
            "stage2.lr": 3e-3,
        }
    )
    torch.manual_seed(0)
    model = MageModel.build(cfg)
    train_stage(model, cfg, "stage2", root / "s2")
    ds = build_dataset(cfg, "stage2")
    images = [ds.load_image(ds.record(i)) for i in range(5)] + [None]
    torch.manual_seed(1)
    untrained = MageModel.build(cfg).eval()  # rambles: never says EOS within a few tokens
    return model.eval(), untrained, images


class BatchSizes:
    """Records the batch size of every LLM forward call."""

    def __init__(self, model):
        self.sizes: list[int] = []
        self.handle = model.llm.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.sizes.append(int(kwargs["inputs_embeds"].shape[0]))

    def close(self):
        self.handle.remove()


def test_rows_with_their_own_budgets_leave_the_batch_when_done(trained):
    _, model, images = trained
    budgets = [1, 2, 8, 8, 3, 5]
    sizes = BatchSizes(model)
    batched = model.generate(images, QUESTIONS, max_new_tokens=budgets)
    sizes.close()
    single = [
        model.generate([im], [q], max_new_tokens=b)[0]
        for im, q, b in zip(images, QUESTIONS, budgets)
    ]
    assert batched == single
    # prefill with all 6 rows, then one step per token; rows leave after their budget
    # (or EOS): never more decode work than rows still running
    assert sizes.sizes[0] == 6 and len(sizes.sizes) == max(budgets)
    assert sizes.sizes[1:] == [sum(b > step for b in budgets) for step in range(1, 8)]


def test_a_stop_string_ends_its_row_and_cuts_the_answer(trained):
    _, model, images = trained
    full = model.generate(images[:2], QUESTIONS[:2], max_new_tokens=8)
    words = [a.split() for a in full]
    assert all(len(w) >= 3 for w in words), full  # the tiny model rambles: room to stop
    stops = [[words[0][1]], None]  # row 0 stops at its second word; row 1 has no stop
    sizes = BatchSizes(model)
    cut = model.generate(images[:2], QUESTIONS[:2], max_new_tokens=8, stop=stops)
    sizes.close()
    assert cut[0] == full[0][: full[0].find(words[0][1])] and cut[1] == full[1]
    assert sizes.sizes.count(2) < len(sizes.sizes)  # row 0 left before the end
    alone = model.generate(images[:1], QUESTIONS[:1], max_new_tokens=8, stop=words[0][1])
    assert alone == cut[:1]


def test_preprocessed_images_give_the_answers_of_pil_images(trained):
    model, _, images = trained
    tensors = [generation.preprocess_image(model, im) for im in images]
    assert isinstance(tensors[0], torch.Tensor) and tensors[-1] is None
    assert model.generate(tensors, QUESTIONS, 6) == model.generate(images, QUESTIONS, 6)


def test_any_image_mode_reaches_the_tower(trained):
    model, _, images = trained
    rgba = images[0].convert("RGBA")
    grey16 = Image.fromarray((torch.arange(32 * 32).reshape(32, 32) * 60).numpy().astype("uint16"))
    answers = model.generate([rgba, grey16, images[0].convert("P")], QUESTIONS[:3], 4)
    assert len(answers) == 3 and model.generate([rgba], QUESTIONS[:1], 4)[0] == answers[0]


def test_bad_arguments_are_refused(trained):
    model, _, images = trained
    with pytest.raises(ValueError, match="one image"):
        model.generate(images[:2], QUESTIONS[:1])
    with pytest.raises(ValueError, match="max_new_tokens has 1 entries for 2"):
        model.generate(images[:2], QUESTIONS[:2], max_new_tokens=[3])
    assert model.generate([], []) == []


def test_a_row_ends_once_its_answer_is_enough_and_keeps_that_prefix(trained):
    _, model, images = trained
    full = model.generate(images[:2], QUESTIONS[:2], max_new_tokens=8)
    assert all(len(a) >= 6 for a in full), full  # rambling answers: room to stop early
    enough = [lambda text: len(text) >= 3, None]  # row 0 reads 3 characters; row 1 all
    sizes = BatchSizes(model)
    short = model.generate(images[:2], QUESTIONS[:2], max_new_tokens=8, enough=enough)
    sizes.close()
    assert full[0].startswith(short[0]) and 3 <= len(short[0]) < len(full[0])
    assert short[1] == full[1]
    assert sizes.sizes.count(2) < len(sizes.sizes)  # row 0 left the batch early
    alone = model.generate(images[:1], QUESTIONS[:1], max_new_tokens=8, enough=enough[0])
    assert alone == short[:1]


def test_the_prefill_computes_logits_at_the_last_position_only(trained):
    model, _, images = trained
    shapes = []
    handle = model.llm.register_forward_hook(lambda m, a, out: shapes.append(out.logits.shape))
    try:
        model.generate(images, QUESTIONS, max_new_tokens=2)
    finally:
        handle.remove()
    assert prefill.keeps_last_logits(model.llm) == {"logits_to_keep": 1}
    assert shapes[0][:2] == (len(QUESTIONS), 1), shapes  # not [rows, prompt length]


def test_prompt_ids_given_by_the_caller_are_what_the_rows_answer(trained):
    _, model, images = trained  # the untrained model: its rambling follows every prompt token
    others = QUESTIONS[::-1]  # each row gets another question's ids, with its own image's slots
    ids = [generation.prompt_ids(model, q, im is not None) for q, im in zip(others, images)]
    asked = model.generate(images, QUESTIONS, 5, prompts=ids)
    assert asked == model.generate(images, others, 5)
    assert asked != model.generate(images, QUESTIONS, 5)  # the prompts, not the questions
    with pytest.raises(ValueError, match="prompts has 1 entries for 6"):
        model.generate(images, QUESTIONS, 5, prompts=ids[:1])
    swapped = [ids[-1], *ids[1:-1], ids[0]]  # row 0 has an image but no placeholders
    with pytest.raises(ValueError, match=r"prompts\[0\] has 0 image placeholder ids"):
        model.generate(images, QUESTIONS, 5, prompts=swapped)


def test_rows_of_one_image_share_their_prefix_and_answer_as_alone(trained, monkeypatch):
    """MME asks two questions of an image, MMBench one question with its options rotated: the
    tokens such rows share go through the LLM once, and every answer stays batch 1's."""
    _, model, images = trained  # the untrained model rambles: every logit of a row counts
    asked = [
        (images[0], "What color is the square in this picture?"),
        (images[1], "Is the square in this picture red? Answer yes or no."),
        (images[0], "What color is the circle in this picture?"),  # shares "What color is the"
        (images[1], "Is the square in this picture blue? Answer yes or no."),
        (None, "What color is the square?"),  # text-only rows form a group too
        (None, "What color?"),
    ]
    pictures, questions = [im for im, _ in asked], [q for _, q in asked]
    seqs = [generation.prompt_ids(model, q, im is not None) for im, q in asked]
    shared = prefill.shared_prefixes(seqs, pictures)
    assert shared[0] == shared[2] > model.num_image_tokens + 3 and shared[1] == shared[3]
    assert shared[4] == shared[5] > 0 and prefill.worth_sharing(seqs, pictures, shared)
    calls = []
    handle = model.llm.register_forward_pre_hook(
        lambda m, a, kw: calls.append(tuple(kw["inputs_embeds"].shape[:2])), with_kwargs=True
    )
    try:
        batched = model.generate(pictures, questions, max_new_tokens=6)
    finally:
        handle.remove()
    # first pass: one row per shared prefix (3 groups), as wide as the longest shared prefix;
    # second pass: every row, only its own tokens
    longest = max(len(s) for s in seqs)
    assert calls[0] == (3, max(shared)) and calls[1][0] == 6 and calls[1][1] < longest
    single = [model.generate([im], [q], max_new_tokens=6)[0] for im, q in asked]
    assert batched == single
    # the first logits equal a one-pass prefill's to float rounding
    tokens = generation.image_tokens(model, pictures)
    shared_start = prefill.prefill(model, seqs, pictures, tokens)
    monkeypatch.setattr(prefill, "MIN_SHARED_FRACTION", 2.0)  # sharing never pays
    one_pass = prefill.prefill(model, seqs, pictures, tokens)
    assert one_pass.mask.shape[1] == longest
    torch.testing.assert_close(shared_start.logits, one_pass.logits, rtol=1e-4, atol=1e-4)
    assert shared_start.positions.tolist() == [[len(s) - 1] for s in seqs]


def test_a_batch_shares_only_when_it_saves_a_tenth_of_the_padded_work(trained):
    _, model, images = trained
    pair = [list(range(1, 21)) for _ in range(2)]
    one = [images[0], images[0]]
    assert prefill.shared_prefixes(pair, one) == [19, 19]  # each row keeps a token of its own
    assert prefill.worth_sharing(pair, one, [19, 19])  # 21 slots instead of 40
    assert prefill.shared_prefixes(pair, [images[0], images[1]]) == [0, 0]
    # a lone row makes the second pass as wide as its whole prompt: one pass is cheaper
    seqs, pictures = [*pair, [9] * 24], [*one, images[1]]
    shared = prefill.shared_prefixes(seqs, pictures)
    assert shared == [19, 19, 0] and not prefill.worth_sharing(seqs, pictures, shared)


def test_sliding_window_llms_prefill_in_one_pass(trained):
    """A sliding window counts columns: the pads between a shared prefix and the rest of a row
    would move it, and answers would change (seen with a 6-token window)."""
    from types import SimpleNamespace

    from transformers import Gemma3TextConfig, MistralConfig, MistralForCausalLM, Qwen2Config

    model = trained[1]
    assert prefill.full_attention_only(model.llm)
    assert prefill.full_attention_only(SimpleNamespace(config=Qwen2Config()))  # window unused
    assert not prefill.full_attention_only(SimpleNamespace(config=Gemma3TextConfig()))
    llm = model.llm
    config = MistralConfig(
        vocab_size=llm.get_input_embeddings().num_embeddings,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        sliding_window=6,
        initializer_range=0.08,
    )
    torch.manual_seed(0)
    model.llm = MistralForCausalLM(config).eval()
    try:
        assert not prefill.full_attention_only(model.llm)
        image = trained[2][0]
        asked = ["what color is the square", "what color is the circle now please"]
        batched = model.generate([image, image], asked, max_new_tokens=6)
        assert batched == [model.generate([image], [q], max_new_tokens=6)[0] for q in asked]
    finally:
        model.llm = llm
