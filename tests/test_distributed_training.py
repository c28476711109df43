"""Training that does not depend on the number of workers: 2 real gloo processes (FSDP2) against
1 process, loss normalised over the global batch, resume across world sizes, the epoch sampler,
and fp32 master weights under bf16 compute."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pytest
import torch
from dist_helpers import spawn_ranks, stage_then_look, train_and_record, two_worker_runs
from model_fixtures import write_tiny_dataset

from mage.config import DataSource
from mage.model import MageModel
from mage.presets import get_preset
from mage.train import seed_build, train_stage
from mage.train.pipeline import EpochStream, PipelineError, RankMicroBatches, WeightedDraws

# Losses of the same global batches computed with other reduction orders (ranks, micro-batches,
# padding) agree to float32 rounding, not bitwise.
RTOL = 2e-4


def _config(data, **stage2):
    source = [DataSource(path=str(data)).model_dump()]
    settings = {
        "stage1.data": source,
        "stage2.data": source,
        "stage2.epochs": 3,
        "stage2.steps": None,
        "stage2.batch_size": 2,
        "stage2.grad_accum": 2,
        "stage2.lr": 3e-4,
        "stage2.warmup_ratio": 0.0,
        "stage2.group_by": "length",
        "stage2.loader_workers": 0,
        "loss.mse_in_stage2": True,
    }
    settings.update({f"stage2.{k}": v for k, v in stage2.items()})
    return get_preset("tiny-test").with_overrides(settings)


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """One 2-process gloo group: a straight run, and a run stopped after 3 steps and resumed."""
    root = tmp_path_factory.mktemp("dist")
    data = write_tiny_dataset(root / "data", n=10)  # 10 records, global batch 4: uneven epochs
    cfg = _config(data)
    spawn_ranks(two_worker_runs, 2, cfg.to_dict(), str(root))
    return cfg, root


def _losses(path) -> list[float]:
    return json.loads(path.read_text())


def _one_worker(cfg, out) -> list[float]:
    seed_build(cfg.seed)
    model = MageModel.build(cfg)
    losses: list[float] = []
    train_stage(model, cfg, "stage2", out, callback=lambda s, m: losses.append(m["loss"]))
    return losses


def test_two_workers_train_like_one_worker_with_the_whole_batch_or_accumulation(
    two_workers, tmp_path
):
    cfg, root = two_workers
    two = _losses(root / "straight.json")
    assert len(two) == 8  # 3 epochs of 10 records in global batches of 4
    whole = _one_worker(
        cfg.with_overrides({"stage2.batch_size": 4, "stage2.grad_accum": 1}), tmp_path / "a"
    )
    accumulated = _one_worker(cfg.with_overrides({"stage2.loader_workers": 2}), tmp_path / "b")
    assert whole == pytest.approx(two, rel=RTOL)
    assert accumulated == pytest.approx(two, rel=RTOL)
    assert two[-1] < two[0]  # it learns


def test_a_two_worker_run_resumes_on_two_and_on_one_worker(two_workers, tmp_path):
    cfg, root = two_workers
    straight, stopped = _losses(root / "straight.json"), _losses(root / "stopped.json")
    on_two = _losses(root / "continued.json")
    assert stopped == pytest.approx(straight[:3], rel=RTOL)
    assert on_two == pytest.approx(straight[3:], rel=RTOL)
    folder = tmp_path / "run"
    shutil.copytree(root / "for-one-worker", folder)
    on_one = tmp_path / "losses.json"
    train_and_record(0, 1, cfg.to_dict(), folder, on_one)
    assert _losses(on_one) == pytest.approx(straight[3:], rel=RTOL)


@pytest.mark.parametrize("group_by", ["none", "length", "modality_length"])
def test_the_epoch_stream_holds_every_record_once_per_epoch_whatever_the_world_size(group_by):
    sizes, global_batch, epochs = [7, 9], 6, 3
    words = torch.arange(16).numpy() % 5
    images = (torch.arange(16) % 3 > 0).numpy()
    stream = EpochStream(
        sizes, [1.0, 1.0], global_batch, epochs, seed=3, stage="stage2",
        group_by=group_by, num_words=words, has_image=images,
    )  # fmt: skip
    assert stream.total_steps == 8  # ceil(3 * 16 / 6)
    flat = stream.stream(0, stream.total_steps * global_batch)
    for epoch in range(epochs):  # each epoch is a permutation of all 16 records
        assert sorted(flat[epoch * 16 : (epoch + 1) * 16]) == list(range(16))
    for world in (1, 2, 3):
        shares = [list(RankMicroBatches(stream, r, world, batch_size=2)) for r in range(world)]
        per_step = len(shares[0]) // stream.total_steps
        for step in range(stream.total_steps):
            got = [
                i
                for r in range(world)
                for b in shares[r][step * per_step : (step + 1) * per_step]
                for i in b
            ]
            # the same global batch for any N: the stream's next 6 records
            assert Counter(got) == Counter(flat[step * global_batch : (step + 1) * global_batch])
        assert all(len(b) <= 2 for r in shares for b in r)


def test_weights_repeat_a_source_per_epoch_and_batches_must_divide_among_workers():
    stream = EpochStream([4, 6], [2.0, 0.5], 5, 1, seed=0, stage="stage1")
    counts = Counter(i for step in range(stream.total_steps) for i in stream.indices(step)[:])
    assert stream.epoch_length == 4 * 2 + 3
    order = stream.epoch_order(0)
    assert Counter(order.tolist())[0] == 2 and sum(1 for i in order if i >= 4) == 3
    assert counts
    with pytest.raises(PipelineError, match="does not divide among 3 workers"):
        RankMicroBatches(stream, 0, 3, batch_size=5)
    draws = WeightedDraws([4, 6], [1.0, 1.0], 8, steps=2, seed=0, stage="stage1")
    assert draws.indices(1) == draws.indices(1) and len(draws.indices(0)) == 8


def test_grouped_weighted_draws_keep_the_samples_and_pad_less():
    from mage.train.pipeline import GROUP_STEPS

    words = np.random.default_rng(0).integers(2, 80, size=300)
    plain = WeightedDraws([100, 200], [0.3, 0.7], 8, steps=64, seed=1, stage="stage2")
    grouped = WeightedDraws([100, 200], [0.3, 0.7], 8, steps=64, seed=1, stage="stage2",
                            num_words=words)  # fmt: skip
    for block in range(64 // GROUP_STEPS):
        steps = range(block * GROUP_STEPS, (block + 1) * GROUP_STEPS)
        # the same draws, in other batches
        assert Counter(i for s in steps for i in plain.indices(s)) == Counter(
            i for s in steps for i in grouped.indices(s)
        )

    def padded(draws):
        return sum(len(b) * max(words[b]) for b in map(draws.indices, range(64)))

    assert padded(grouped) < 0.7 * padded(plain)
    # a pure function of the step: resuming mid-block gives the same batch
    again = WeightedDraws([100, 200], [0.3, 0.7], 8, steps=64, seed=1, stage="stage2",
                          num_words=words)  # fmt: skip
    assert again.indices(37) == grouped.indices(37) and len(grouped.indices(5)) == 8


def test_an_update_below_bf16_spacing_still_moves_a_weight_trained_in_bf16(tmp_path):
    data = write_tiny_dataset(tmp_path / "data", n=4)
    cfg = _config(data).with_overrides(
        {
            "llm.dtype": "bfloat16",
            "stage1.data": [DataSource(path=str(data)).model_dump()],
            "stage1.steps": 1,
            "stage1.batch_size": 4,
            "stage1.lr": 2e-5,
            "stage1.warmup_ratio": 0.0,
            "stage1.loader_workers": 0,
        }
    )
    seed_build(cfg.seed)
    model = MageModel.build(cfg)
    before = {k: v.detach().clone() for k, v in model.projector.state_dict().items()}
    train_stage(model, cfg, "stage1", tmp_path / "s1")
    after = model.projector.state_dict()
    assert all(v.dtype == torch.float32 for v in after.values())  # fp32 master weights
    assert model.llm.get_input_embeddings().weight.dtype == torch.bfloat16  # frozen: compute dtype
    moved = lost = 0
    for key, old in before.items():
        changed = after[key] != old
        moved += int(changed.sum())
        # in bf16 these updates round away: the weight would not have changed
        lost += int((changed & (after[key].bfloat16() == old.bfloat16())).sum())
    assert moved > 0 and lost > 0.5 * moved


@pytest.mark.parametrize(
    "mse_target, tower",
    [("input_embeddings", "frozen"), ("last_hidden", "frozen"), ("input_embeddings", "trained")],
)
def test_a_rank_whose_micro_batch_has_no_image_trains_with_the_others(tmp_path, mse_target, tower):
    """One record with an image, one text-only, one per rank every step: the text-only rank
    still runs the tower and connector (times 0), so FSDP's collectives match on both ranks
    (without it gloo aborts on a size mismatch), and the losses are those of one worker.
    With the MSE target read from the LLM's last hidden states (a forward of the caption
    through the sharded decoder layers), the rank without a caption runs that forward too.
    A trained tower is an FSDP unit of its own: the text-only rank runs it before the LLM,
    as the other rank does, so both gather its weights in the same order."""
    data = write_tiny_dataset(tmp_path / "data", n=2)
    records = json.loads(data.read_text())
    records[1] = {"id": "text", "conversations": [
        {"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "red"}]}  # fmt: skip
    records[0]["caption"] = "a square in the middle"  # the MSE term of stage 2 on rank 0 only
    data.write_text(json.dumps(records))
    cfg = _config(data, epochs=4, batch_size=2, grad_accum=1, group_by="none")  # 1 per rank
    cfg = cfg.with_overrides({"loss.mse_target": mse_target})
    if tower == "trained":
        cfg = cfg.with_overrides({"stage2.trainable": ["ian", "llm", "vision"]})
    losses_file = tmp_path / "losses.json"
    spawn_ranks(train_and_record, 2, cfg.to_dict(), str(tmp_path / "two"), str(losses_file))
    one = _one_worker(cfg, tmp_path / "one")
    assert _losses(losses_file) == pytest.approx(one, rel=RTOL) and len(one) == 4


def test_every_rank_returns_from_a_stage_after_its_export_is_written(tmp_path):
    """Only rank 0 writes stage 2's export; a worker group that scores the model next
    (``then_eval``) loads it on every rank at once, so no rank may return before it exists."""
    from harness.train_worker import StageJob

    data = write_tiny_dataset(tmp_path / "data", n=4)
    cfg = _config(data, epochs=1, batch_size=2, grad_accum=1)
    job = StageJob(config=cfg.to_dict(), stage="stage2", folder=str(tmp_path / "s2"))
    seen = tmp_path / "seen"
    spawn_ranks(stage_then_look, 2, job.__dict__, str(seen))
    for rank in (0, 1):
        assert json.loads((tmp_path / f"seen.{rank}").read_text()) == {"export": True, "done": True}
