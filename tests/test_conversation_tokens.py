"""A conversation's token ids are LLaVA's: the whole Vicuna-v1 conversation tokenised at once,
labels on the replies and their EOS only, and the inference prompt a prefix of them.

Checked with a real SentencePiece Llama-style tokenizer that the test trains (BPE with byte
fallback, as Llama's) and loads the way a Vicuna checkpoint is loaded (`mage.llm.
load_tokenizer` on a folder with ``tokenizer.model`` and ``tokenizer_config.json``), under both
``legacy`` settings that Llama-family configs carry; with a GPT-2-style byte-level BPE; and with
the synthetic world's word-level tokenizer, whose ids must not change.
"""

from __future__ import annotations

import io
import json
from types import SimpleNamespace

import pytest
import sentencepiece as spm
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from mage.data import IGNORE_INDEX, IMAGE_TOKEN_ID, encode_conversation, encode_text
from mage.generation import prompt_ids
from mage.llm import load_tokenizer
from mage.registry import LLMSpec
from mage.template import get_template
from mage.world.vocab import world_tokenizer

N_IMAGE = 3
VICUNA = get_template("vicuna_v1")
WORLD = get_template("world")

CORPUS = [
    VICUNA.system,
    "USER: What color is the square? ASSISTANT: The square is red.",
    "USER: How many circles are there? ASSISTANT: There are 3 circles in the picture.",
    "USER: Is there a triangle at the top left? ASSISTANT: Yes, a small green triangle.",
    "Describe the image in detail. A large blue circle and a red square on a grey background.",
]

CONVERSATION = [
    {"from": "human", "value": "<image>\nWhat color is the square?"},
    {"from": "gpt", "value": "The square is red."},
    {"from": "human", "value": "How many circles are there?"},
    {"from": "gpt", "value": "There are 3 circles."},
    {"from": "human", "value": "Is there a triangle?"},
    {"from": "gpt", "value": "Yes"},
]
TEXT_ONLY = [{**t, "value": t["value"].replace("<image>\n", "")} for t in CONVERSATION]
REPLIES = [t["value"] for t in CONVERSATION if t["from"] == "gpt"]


def _llama_folder(root, legacy: bool):
    """A trained SentencePiece model saved as a Llama checkpoint's tokenizer files."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20),
        model_writer=model,
        model_type="bpe",
        vocab_size=420,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    folder = root / f"llama-legacy-{legacy}"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": legacy,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def _gpt2_folder(root):
    """A GPT-2-style byte-level BPE (one <|endoftext|> for BOS and EOS), saved and reloaded."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(CORPUS * 20, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    folder = root / "gpt2"
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    found = {
        f"llama-legacy-{legacy}": load_tokenizer(LLMSpec("t", str(_llama_folder(root, legacy))))
        for legacy in (False, True)
    }
    found["gpt2"] = load_tokenizer(LLMSpec("t", str(_gpt2_folder(root))))
    found["world"] = world_tokenizer()
    return found


def _template(name):
    return WORLD if name == "world" else VICUNA


def _whole_text(name, tok, conversation) -> str:
    """The conversation as LLaVA's get_prompt() writes it, built here independently."""
    eos = tok.eos_token
    if name == "world":  # the world template: no system prompt, a space after each EOS
        text, after = "", " "
    else:
        text, after = VICUNA.system + " ", ""
    turns = iter(conversation)
    for human, gpt in zip(turns, turns):
        text += f"USER: {human['value']} ASSISTANT: {gpt['value']}{eos}{after}"
    return text.removesuffix(after) if after else text


def _llava_ids(tok, text) -> list[int]:
    """LLaVA's ids: BOS, then each stretch between image tags tokenised as a text of its own."""
    ids = [tok.bos_token_id]
    for i, chunk in enumerate(text.split("<image>")):
        if i:
            ids += [IMAGE_TOKEN_ID] * N_IMAGE
        ids += tok(chunk, add_special_tokens=False)["input_ids"]
    return ids


NAMES = ["llama-legacy-False", "llama-legacy-True", "gpt2", "world"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("conversation", [CONVERSATION, TEXT_ONLY], ids=["image", "text"])
def test_ids_are_the_whole_conversation_tokenised_at_once(tokenizers, name, conversation):
    tok = tokenizers[name]
    ids, labels = encode_conversation(conversation, tok, _template(name), N_IMAGE, 4096)
    text = _whole_text(name, tok, conversation)
    assert ids == _llava_ids(tok, text)
    if conversation is TEXT_ONLY and name.startswith("llama"):
        assert ids == tok(text)["input_ids"]  # LLaVA's call: the Llama tokenizer adds the BOS
    assert len(labels) == len(ids)


@pytest.mark.parametrize("legacy", [False, True])
def test_llama_ids_are_sentencepiece_s_own(tokenizers, legacy, tmp_path):
    """SentencePiece itself, no transformers: each stretch between EOS tokens encoded by the
    trained model; with ``legacy`` false (Llama's slow tokenizer's rule) the stretches after
    an EOS get no leading "▁", so they are encoded behind a marker that is then dropped."""
    tok = tokenizers[f"llama-legacy-{legacy}"]
    sp = spm.SentencePieceProcessor(
        model_file=str(_llama_folder(tmp_path, legacy) / "tokenizer.model")
    )
    marker = sp.encode("<unk>")
    expected = [sp.bos_id()]
    parts = _whole_text("llama", tok, TEXT_ONLY).split("</s>")
    for i, part in enumerate(parts[:-1]):
        expected += (
            sp.encode(part) if i == 0 or legacy else sp.encode("<unk>" + part)[len(marker) :]
        )
        expected.append(sp.eos_id())
    ids, _ = encode_conversation(TEXT_ONLY, tok, VICUNA, N_IMAGE, 4096)
    assert ids == expected


@pytest.mark.parametrize("name", ["llama-legacy-False", "llama-legacy-True"])
def test_no_stray_space_token_before_replies_or_turns(tokenizers, name):
    """The bug this guards against: a lone "▁" before each reply and each later "USER:"."""
    tok = tokenizers[name]
    ids, _ = encode_conversation(TEXT_ONLY, tok, VICUNA, N_IMAGE, 4096)
    tokens = tok.convert_ids_to_tokens(ids)
    whole = tok.convert_ids_to_tokens(tok(_whole_text(name, tok, TEXT_ONLY))["input_ids"])
    assert tokens.count("▁") == whole.count("▁")
    first_reply = tokens.index(":", tokens.index("▁ASSISTANT")) + 1
    assert tokens[first_reply] != "▁" and tokens[first_reply].startswith("▁")


def _runs(labels):
    """Maximal runs of positions whose label is not ignored."""
    runs, current = [], []
    for i, label in enumerate(labels):
        if label == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(i)
    return runs + ([current] if current else [])


@pytest.mark.parametrize("name", NAMES)
def test_labels_are_each_reply_and_its_eos(tokenizers, name):
    tok = tokenizers[name]
    ids, labels = encode_conversation(CONVERSATION, tok, _template(name), N_IMAGE, 4096)
    runs = _runs(labels)
    assert len(runs) == len(REPLIES)
    for run, reply in zip(runs, REPLIES):
        assert [labels[i] for i in run] == [ids[i] for i in run]
        assert ids[run[-1]] == tok.eos_token_id
        assert tok.decode([ids[i] for i in run]).strip() == reply + tok.eos_token
        before = tok.decode([i for i in ids[: run[0]] if i != IMAGE_TOKEN_ID])
        assert before.endswith("ASSISTANT:")  # the label and everything before is masked
    assert labels[0] == IGNORE_INDEX and ids[0] == tok.bos_token_id


@pytest.mark.parametrize("name", NAMES)
def test_the_inference_prompt_is_the_training_prefix(tokenizers, name):
    tok = tokenizers[name]
    template = _template(name)
    ids, labels = encode_conversation(CONVERSATION, tok, template, N_IMAGE, 4096)
    first_target = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    model = SimpleNamespace(template=template, tokenizer=tok, num_image_tokens=N_IMAGE)
    question = CONVERSATION[0]["value"].removeprefix("<image>\n")
    assert prompt_ids(model, question, has_image=True) == ids[:first_target]


@pytest.mark.parametrize("name", NAMES)
def test_the_python_tokenizer_path_labels_the_same(tokenizers, name, monkeypatch):
    """Without offsets (a Python tokenizer), the labels come out the same."""
    tok = tokenizers[name]
    fast = encode_conversation(CONVERSATION, tok, _template(name), N_IMAGE, 4096)
    monkeypatch.setattr(type(tok), "is_fast", property(lambda self: False))
    assert encode_conversation(CONVERSATION, tok, _template(name), N_IMAGE, 4096) == fast


def _pieces_one_by_one(conversation, tok, template):
    """How ids were built before: each piece tokenised alone, the EOS id appended to replies."""
    ids, labels = [tok.bos_token_id], [IGNORE_INDEX]
    for text, is_target in template.segments(conversation):
        piece = encode_text(text, tok, N_IMAGE) + ([tok.eos_token_id] if is_target else [])
        ids += piece
        labels += piece if is_target else [IGNORE_INDEX] * len(piece)
    return ids, labels


def test_world_ids_and_labels_are_unchanged(test_world):
    """The word-level world tokenizer gives the same ids and labels as before, on every
    record of the test world's stage-1 and stage-2 data."""
    tok = world_tokenizer()
    records = [r for p in (test_world.stage1, test_world.stage2) for r in json.loads(p.read_text())]
    conversations = [r["conversations"] for r in records]
    # the world's records are single-turn: multi-turn ones made of two records check the turns
    conversations += [a + b for a, b in zip(conversations[::2], conversations[1::2])]
    for turns in conversations:
        assert encode_conversation(turns, tok, WORLD, N_IMAGE, 4096) == _pieces_one_by_one(
            turns, tok, WORLD
        )


def test_encode_text_is_unchanged_for_prompts(tokenizers):
    """encode_text (the inference prompt's tokens) splits at image tags, no BOS."""
    tok = tokenizers["llama-legacy-False"]
    text = VICUNA.prompt("<image>\nWhat color is the square?")
    before, after = text.split("<image>")
    expected = tok(before, add_special_tokens=False)["input_ids"] + [IMAGE_TOKEN_ID] * N_IMAGE
    expected += tok(after, add_special_tokens=False)["input_ids"]
    assert encode_text(text, tok, N_IMAGE) == expected


def test_smollm2_conversations_are_what_its_own_chat_template_writes():
    """SmolLM2-Instruct (the shipped GGUF) is trained on ChatML: the `smollm2` template
    gives the text its tokenizer's chat template writes, without a BOS in front (its BOS is
    the <|im_start|> the text opens with), labels on each reply and its <|im_end|>, and the
    inference prompt ends where the chat template's generation prompt does."""
    from mage.presets import get_preset

    cfg = get_preset("smollm2-test")
    assert cfg.llm_spec().template == "smollm2"
    tok = load_tokenizer(cfg.llm_spec())
    template = get_template("smollm2")
    roles = {"human": "user", "gpt": "assistant"}
    messages = [{"role": roles[t["from"]], "content": t["value"]} for t in TEXT_ONLY]
    text = "".join(p for p, _ in template.segments(TEXT_ONLY, eos=tok.eos_token))
    assert text + "\n" == tok.apply_chat_template(messages, tokenize=False)
    ids, labels = encode_conversation(TEXT_ONLY, tok, template, N_IMAGE, 4096)
    assert ids == tok(text, add_special_tokens=False)["input_ids"]  # no BOS added
    target = [i for i, label in zip(ids, labels) if label != IGNORE_INDEX]
    assert tok.decode(target) == "".join(f"{r}<|im_end|>" for r in REPLIES)
    question = TEXT_ONLY[0]["value"]
    prompt = template.prompt(question)
    assert prompt == tok.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    model = SimpleNamespace(template=template, tokenizer=tok, num_image_tokens=N_IMAGE)
    assert (
        prompt_ids(model, question, has_image=False)
        == ids[: len(prompt_ids(model, question, False))]
    )
