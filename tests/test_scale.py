"""Scale: gradient accumulation and two processes train the same model as one; precision; skipped
non-finite steps; checkpoint cadence."""

from __future__ import annotations

import copy
import csv
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, TINY_S2S
from safetensors.torch import load_file

from textgen import train
from textgen.checkpoint import load_trainer_state
from textgen.config import ModelSpec, TrainConfig
from textgen.data.batches import ShuffledWindows
from textgen.data.pairs import PAD_TARGET, pad_batch
from textgen.errors import ConfigError, TrainingError
from textgen.models.lm import RecurrentLM
from textgen.models.seq2seq import Seq2Seq
from textgen.training import run as run_module
from textgen.training.distributed import World, world_from_env
from textgen.training.tasks import LanguageModelTask, TranslationTask
from textgen.training.trainer import Trainer


def weights(run: Path, which: str = "latest") -> dict[str, torch.Tensor]:
    return load_file(str(run / which / "model.safetensors"))


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# Summing in another order changes gradients by rounding only (1e-8 with SGD), but Adam divides each
# gradient by its running size, which magnifies rounding in gradients near zero: the seq2seq model's
# weights agree to 1e-4 after ten Adam steps, while its losses agree to 1e-5.
ADAM_WEIGHTS = 1e-4


def train_losses(run: Path) -> list[float]:
    with open(run / "metrics.csv", encoding="utf-8") as f:
        return [float(r["train_loss"]) for r in csv.DictReader(f) if r["train_loss"]]


def pairs_file(path: Path, n: int = 146) -> Path:
    """Distinct short words paired with their reverse (n not a multiple of the batch: a short last batch)."""
    rng = np.random.default_rng(0)
    lines: dict[str, str] = {}
    while len(lines) < n:
        w = "".join(rng.choice(list("abcdef"), size=int(rng.integers(2, 8))))
        lines[w] = w[::-1]
    path.write_text("".join(f"{a}\t{b}\n" for a, b in lines.items()), encoding="utf-8")
    return path


# -- gradient accumulation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        dict(mode="stateful"),
        dict(mode="shuffled"),
        dict(mode="shuffled", loss="last", layers=2),
    ],
    ids=["stateful", "shuffled", "shuffled-loss-last"],
)
def test_two_micro_batches_train_the_same_model_as_one_batch(tmp_path, poem_file, settings):
    kw = dict(max_steps=6, log_every=2, **{**TINY, **settings})
    train(str(poem_file), tmp_path / "one", **kw)
    train(str(poem_file), tmp_path / "two", accumulate=2, **kw)
    assert max_difference(weights(tmp_path / "one"), weights(tmp_path / "two")) < 1e-5
    assert np.allclose(train_losses(tmp_path / "one"), train_losses(tmp_path / "two"), atol=1e-5, rtol=0)


@pytest.mark.parametrize("accumulate", [2, 4])
def test_accumulation_for_translation_with_a_short_last_batch(tmp_path, accumulate):
    # 131 training pairs: the 9th batch has 3, so shares of 2 and 1, or (4) one share with no row at all.
    pairs = pairs_file(tmp_path / "p.tsv")
    kw = dict(max_steps=10, log_every=5, **TINY_S2S)
    train(pairs=str(pairs), out=tmp_path / "one", **kw)
    train(pairs=str(pairs), out=tmp_path / "split", accumulate=accumulate, **kw)
    assert max_difference(weights(tmp_path / "one"), weights(tmp_path / "split")) < ADAM_WEIGHTS
    assert np.allclose(train_losses(tmp_path / "one"), train_losses(tmp_path / "split"), atol=1e-5, rtol=0)


def test_a_batch_size_that_does_not_divide_is_refused(tmp_path, poem_file):
    with pytest.raises(ConfigError, match="batch_size 8 must be a multiple of accumulate 3"):
        train(str(poem_file), tmp_path / "run", accumulate=3, **TINY)


def test_pair_batch_shares_cover_the_rows_and_an_empty_share_adds_nothing():
    src = [np.array([1, 2, 3]), np.array([4]), np.array([5, 6])]
    tgt = [np.array([7]), np.array([8, 9, 10]), np.array([11, 12])]
    batch = pad_batch(src, tgt, start_id=20, end_id=21)
    shares = [batch.share(i, 4) for i in range(4)]
    assert [len(s.src) for s in shares] == [1, 1, 1, 1]
    assert shares[0].src.tolist() == [[1, 2, 3]] and shares[0].tgt_out.tolist() == [[7, 21]]  # trimmed to its own
    assert shares[1].tgt_in.tolist() == [[20, 8, 9, 10]]
    assert (shares[3].tgt_out == PAD_TARGET).all()  # the fourth share has no row of its own
    assert sum(s.target_tokens for s in shares) == batch.target_tokens


# -- plain SGD: an update that shows the gradient's scale ----------------------------------------
# Adam divides each gradient by its running size, so a gradient off by a constant factor (a share's
# mean where the batch's is due, a sum over processes where their mean is) trains the same model.
# SGD's update is lr x gradient: any such factor shows in the weights.

SGD = dict(optimizer="sgd", clip=0, lr=0.5)  # no momentum, no clipping: w - lr * grad, nothing else
SGD_WEIGHTS = 1e-6


class OneBatch:
    """One fixed batch per epoch."""

    stateful, steps_per_epoch = False, 1

    def __init__(self, batch: object) -> None:
        self.fixed = batch

    def batch(self, epoch: int, step: int) -> object:
        return self.fixed


def language_model_case() -> tuple[torch.nn.Module, LanguageModelTask, Callable[[torch.nn.Module], torch.Tensor]]:
    """A tiny language model, a task of one batch of 4 windows, and that batch's mean loss computed directly."""
    model = RecurrentLM(ModelSpec(vocab_size=9, hidden_size=8, embedding_dim=4))
    x, y = ShuffledWindows(np.random.default_rng(0).integers(0, 9, 500), 4, 8, seed=0).batch(0, 0)

    def mean_loss(m: torch.nn.Module) -> torch.Tensor:
        logits, _ = m(torch.as_tensor(x))  # (4, 8, 9)
        return F.cross_entropy(logits.reshape(-1, 9), torch.as_tensor(y).reshape(-1))

    return model, LanguageModelTask(OneBatch((x, y)), seq_len=8), mean_loss


def translation_case() -> tuple[torch.nn.Module, TranslationTask, Callable[[torch.nn.Module], torch.Tensor]]:
    """A tiny translation model, one batch of 4 pairs whose targets have 7, 2, 5 and 1 tokens (so shares of
    it hold unequal numbers of targets), and that batch's mean loss over its real targets, computed directly."""
    model = Seq2Seq(ModelSpec(task="translate", vocab_size=11, source_vocab_size=9, hidden_size=12, embedding_dim=6))
    rng = np.random.default_rng(0)
    src = [rng.integers(0, 9, n) for n in (6, 5, 3, 2)]  # longest first, as the batches are
    tgt = [rng.integers(0, 11, n) for n in (6, 1, 4, 0)]  # (+ the end token each)
    batch = pad_batch(src, tgt, model.start_id, model.end_id)

    def mean_loss(m: torch.nn.Module) -> torch.Tensor:
        s, s_len, t_in, t_out = batch.tensors(torch.device("cpu"))
        logits = m(s, s_len, t_in)  # (4, 7, 13)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), t_out.reshape(-1), ignore_index=PAD_TARGET)

    return model, TranslationTask(OneBatch(batch)), mean_loss


@pytest.mark.parametrize("case", [language_model_case, translation_case], ids=["lm", "translation"])
@pytest.mark.parametrize("accumulate", [1, 2, 4])
def test_one_sgd_step_is_w_minus_lr_times_the_gradient_of_the_whole_batch_mean_loss(case, accumulate):
    torch.manual_seed(0)
    model, task, mean_loss = case()
    reference = copy.deepcopy(model)
    grads = torch.autograd.grad(mean_loss(reference), list(reference.parameters()))
    expected = [(p - SGD["lr"] * g).detach() for p, g in zip(reference.parameters(), grads)]
    cfg = TrainConfig(batch_size=4, seq_len=8, accumulate=accumulate, **SGD)
    shares: list[object] = []
    task.loss = lambda m, share, device, part=0, loss=task.loss: shares.append(share) or loss(m, share, device, part)
    Trainer(model, task, cfg, device=torch.device("cpu"))._step()
    assert len(shares) == accumulate  # the batch really was split
    assert max(float((p.detach() - e).abs().max()) for p, e in zip(model.parameters(), expected)) < SGD_WEIGHTS
    moved = max(float((p.detach() - e).abs().max()) for p, e in zip(reference.parameters(), expected))
    assert moved > 1e-2  # a gradient off by a factor would miss by far more than the tolerance


@pytest.mark.parametrize("mode", ["stateful", "shuffled"])
def test_sgd_with_two_and_four_micro_batches_trains_the_same_language_model_as_one(tmp_path, poem_file, mode):
    kw = dict(max_steps=6, log_every=2, mode=mode, **{**TINY, **SGD})
    train(str(poem_file), tmp_path / "one", **kw)
    for accumulate in (2, 4):
        train(str(poem_file), tmp_path / f"split{accumulate}", accumulate=accumulate, **kw)
        assert max_difference(weights(tmp_path / "one"), weights(tmp_path / f"split{accumulate}")) < SGD_WEIGHTS


def test_sgd_with_two_and_four_micro_batches_trains_the_same_translation_model_as_one(tmp_path):
    pairs = pairs_file(tmp_path / "p.tsv")  # a short last batch: shares of unequal size, or none at all
    kw = dict(max_steps=10, log_every=5, **{**TINY_S2S, **SGD})
    train(pairs=str(pairs), out=tmp_path / "one", **kw)
    for accumulate in (2, 4):
        train(pairs=str(pairs), out=tmp_path / f"split{accumulate}", accumulate=accumulate, **kw)
        assert max_difference(weights(tmp_path / "one"), weights(tmp_path / f"split{accumulate}")) < SGD_WEIGHTS


# -- two processes (torchrun, gloo) ---------------------------------------------------------------


def torchrun(*args: str, processes: int = 2) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc-per-node N -m textgen ARGS`` on the CPU (gloo), free port chosen by torchrun."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    return subprocess.run([*cmd, "-m", "textgen", *args], capture_output=True, text=True, env=env, timeout=300)


def flags(settings: dict[str, object]) -> list[str]:
    out = []
    for key, value in settings.items():
        out += [f"--{key.replace('_', '-')}", str(value)]
    return out


def test_two_processes_train_the_same_model_as_one_and_resume(tmp_path, poem_file):
    # Stateful streams: each process carries the hidden state of its own rows, saved from both on rank 0.
    kw = dict(mode="stateful", log_every=2, eval_every=4, **TINY)
    one = train(str(poem_file), tmp_path / "one", max_steps=8, **kw)
    out = ["--corpus", str(poem_file), "--out", str(tmp_path / "two")]
    first = torchrun("train", *out, *flags({**kw, "max_steps": 4}))
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("done: 4 steps") == 1  # only rank 0 reports
    state = load_trainer_state(tmp_path / "two" / "latest")
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    assert state["ranks"][1]["hidden"][0].shape == (1, 4, 32)  # rank 1's four stream rows (of eight)
    second = torchrun("train", "--out", str(tmp_path / "two"), "--resume", "--max-steps", "8")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stdout and one.step == 8
    assert max_difference(weights(tmp_path / "one"), weights(tmp_path / "two")) < 1e-5
    assert np.allclose(train_losses(tmp_path / "one"), train_losses(tmp_path / "two"), atol=1e-5, rtol=0)


def test_two_processes_train_a_translation_model_as_one(tmp_path):
    pairs = pairs_file(tmp_path / "p.tsv")
    kw = dict(max_steps=10, log_every=5, **TINY_S2S)
    train(pairs=str(pairs), out=tmp_path / "one", **kw)
    settings = {k: v for k, v in kw.items() if k != "tensorboard"}
    out = ["--pairs", str(pairs), "--out", str(tmp_path / "two"), "--no-tensorboard"]
    done = torchrun("train", *out, *flags(settings))
    assert done.returncode == 0, done.stderr[-3000:]
    assert max_difference(weights(tmp_path / "one"), weights(tmp_path / "two")) < ADAM_WEIGHTS
    assert np.allclose(train_losses(tmp_path / "one"), train_losses(tmp_path / "two"), atol=1e-5, rtol=0)


def test_two_processes_with_sgd_train_the_same_translation_model_as_one(tmp_path):
    # Two processes of two micro-batches each: four shares of every batch, of unequal sizes (none in the last).
    pairs = pairs_file(tmp_path / "p.tsv")
    kw = dict(max_steps=10, log_every=5, **{**TINY_S2S, **SGD})
    train(pairs=str(pairs), out=tmp_path / "one", **kw)
    settings = {k: v for k, v in kw.items() if k != "tensorboard"}
    out = ["--pairs", str(pairs), "--out", str(tmp_path / "two"), "--no-tensorboard", "--accumulate", "2"]
    done = torchrun("train", *out, *flags(settings))
    assert done.returncode == 0, done.stderr[-3000:]
    assert max_difference(weights(tmp_path / "one"), weights(tmp_path / "two")) < SGD_WEIGHTS
    assert np.allclose(train_losses(tmp_path / "one"), train_losses(tmp_path / "two"), atol=1e-6, rtol=0)


def test_resume_with_another_number_of_processes_is_refused(tmp_path, poem_file):
    train(str(poem_file), tmp_path / "run", max_steps=2, **TINY)
    state = load_trainer_state(tmp_path / "run" / "latest")
    state["world_size"] = 2
    torch.save(state, tmp_path / "run" / "latest" / "trainer_state.pt")
    with pytest.raises(ConfigError, match="trained by 2 process\\(es\\), this is 1; resume it with the same number"):
        train(str(poem_file), tmp_path / "run", max_steps=3, resume=True, **TINY)


def test_the_torchrun_environment_is_read_and_checked():
    assert world_from_env({}) == World()
    assert world_from_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}) == World(3, 1, 4)
    with pytest.raises(ConfigError, match="launch with torchrun"):
        world_from_env({"WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="inconsistent torchrun environment"):
        world_from_env({"RANK": "2", "LOCAL_RANK": "0", "WORLD_SIZE": "2"})


# -- precision ------------------------------------------------------------------------------------


def test_bf16_on_the_cpu_trains(tmp_path, poem_file):
    result = train(str(poem_file), tmp_path / "run", precision="bf16", max_steps=30, eval_every=30, **TINY)
    assert result.val_loss < math.log(36) - 0.5  # from ln(vocabulary) towards the text
    assert all(v.dtype == torch.float32 for v in weights(tmp_path / "run").values())  # fp32 weights, bf16 arithmetic


def test_fp16_needs_cuda(tmp_path, poem_file):
    with pytest.raises(ConfigError, match="--precision fp16 needs a CUDA device"):
        train(str(poem_file), tmp_path / "run", precision="fp16", device="cpu", **TINY)


# -- non-finite steps -----------------------------------------------------------------------------


class PoisonedTask(LanguageModelTask):
    """A language model task whose loss is NaN on the optimizer steps listed in ``poisoned``."""

    def __init__(self, *args: object, poisoned: set[int], **kw: object) -> None:
        super().__init__(*args, **kw)
        self.poisoned, self.calls = poisoned, 0

    def loss(self, model, share, device, part=0):  # noqa: ANN001, ANN201
        loss = super().loss(model, share, device, part)
        self.calls += 1
        return loss * math.nan if self.calls - 1 in self.poisoned else loss


def tiny_trainer(poisoned: set[int], device: str = "cpu", **settings: object) -> Trainer:
    torch.manual_seed(0)
    ids = np.random.default_rng(0).integers(0, 9, 2000)
    task = PoisonedTask(ShuffledWindows(ids, 4, 8, seed=0), poisoned=poisoned)
    model = RecurrentLM(ModelSpec(vocab_size=9, hidden_size=8, embedding_dim=4)).to(device)
    cfg = TrainConfig(batch_size=4, seq_len=8, lr=0.01, **settings)
    fused = settings.get("optimizer", "adam") == "adam"  # exercise the fused (CUDA) path on the CPU too
    return Trainer(model, task, cfg, device=torch.device(device), fused=fused)


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])  # the fused kernel's found_inf; a read on the host
def test_a_non_finite_step_is_skipped_leaving_weights_and_optimizer_state_unchanged(optimizer):
    trainer = tiny_trainer({2}, optimizer=optimizer)
    trainer._step()
    trainer._step()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    state = {id(p): {k: v.clone() for k, v in s.items()} for p, s in trainer.optimizer.state.items()}
    loss, applied = trainer._step()  # the poisoned one
    assert math.isnan(float(loss)) and float(applied) == 0.0
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    for p, s in trainer.optimizer.state.items():
        assert all(torch.equal(state[id(p)][k], v) for k, v in s.items())
    assert trainer._read_skips() == 1 and trainer.pos.skipped == 1 and trainer.pos.step == 3
    trainer._step()  # the next good step applies and ends the streak
    assert not torch.equal(before["head.weight"], trainer.model.head.weight)
    assert trainer._read_skips() == 0 and trainer.pos.skipped == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_on_cuda_steps_never_wait_for_the_device_and_a_non_finite_one_is_skipped_there(precision):
    trainer = tiny_trainer({2}, device="cuda", precision=precision)
    assert trainer.fused
    trainer._step()  # the first step creates the optimizer state and cuDNN's buffers
    torch.cuda.set_sync_debug_mode("error")  # any wait for the device inside a step raises
    try:
        trainer._step()
        before = trainer.model.head.weight.detach().clone()
        trainer._step()  # the poisoned one
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(before, trainer.model.head.weight)
    assert trainer._read_skips() == 1


def test_the_fp16_gradient_scaler_skips_a_non_finite_step_and_is_saved():
    trainer = tiny_trainer({1}, precision="fp16")
    trainer.amp_dtype = None  # the CPU has no fp16 LSTM: fp32 arithmetic, but the scaler's path
    assert trainer.scaler is not None
    trainer._step()
    before = trainer.model.head.weight.detach().clone()
    scale = trainer.scaler.get_scale()
    trainer._step()
    assert torch.equal(before, trainer.model.head.weight) and trainer.scaler.get_scale() == scale / 2
    assert trainer._read_skips() == 1
    assert trainer.state_dict()["scaler"]["scale"] == scale / 2


def test_a_run_of_non_finite_steps_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, poem_file, monkeypatch):
    calls = []
    original = LanguageModelTask.loss

    def poisoned(self, model, share, device, part=0):  # noqa: ANN001, ANN202
        calls.append(1)
        loss = original(self, model, share, device, part)
        return loss * math.nan if len(calls) > 7 else loss  # steps 8 onwards

    monkeypatch.setattr(LanguageModelTask, "loss", poisoned)
    with pytest.raises(TrainingError, match=r"stopped at step 12: 5 steps in a row had a non-finite .* \(step 6\)"):
        train(str(poem_file), tmp_path / "run", max_steps=40, save_every=3, max_bad_steps=5, **TINY)
    state = load_trainer_state(tmp_path / "run" / "latest")
    assert state["position"]["step"] == 6  # saving at step 9 was refused: the streak had begun
    assert all(torch.isfinite(w).all() for w in weights(tmp_path / "run").values())


# -- checkpoint cadence ---------------------------------------------------------------------------


def test_latest_is_saved_every_n_steps_and_after_some_minutes(tmp_path, poem_file, monkeypatch):
    saved: list[tuple[str, int]] = []
    real = run_module.save_checkpoint

    def record(path, model, cfg, spec, tokenizer, info, state=None, source=None):  # noqa: ANN001, ANN202
        saved.append((path.name, info["step"]))
        real(path, model, cfg, spec, tokenizer, info, state, source)

    monkeypatch.setattr(run_module, "save_checkpoint", record)
    train(str(poem_file), tmp_path / "a", max_steps=7, save_every=3, save_minutes=0, **TINY)
    assert [s for name, s in saved if name == "latest"] == [3, 6, 7]
    saved.clear()
    train(str(poem_file), tmp_path / "b", max_steps=3, save_minutes=1e-9, **TINY)  # due at every check
    assert [s for name, s in saved if name == "latest"] == [1, 2, 3]


def test_sigterm_saves_and_stops_like_ctrl_c(tmp_path, poem_file, monkeypatch):
    # A scheduler's notice before preemption (SIGTERM, also what torchrun passes on) saves latest.
    import signal

    calls = []
    original = LanguageModelTask.loss

    def notice(self, model, share, device, part=0):  # noqa: ANN001, ANN202
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, model, share, device, part)

    monkeypatch.setattr(LanguageModelTask, "loss", notice)
    result = train(str(poem_file), tmp_path / "run", max_steps=20, **TINY)
    assert result.reason == "interrupted" and result.step == 3
    assert load_trainer_state(tmp_path / "run" / "latest")["position"]["step"] == 3


def test_stdin_is_refused_under_torchrun(tmp_path, monkeypatch):
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match="stdin .* does not work under torchrun"):
        train("-", tmp_path / "run", **TINY)


def test_a_batch_that_the_processes_cannot_share_equally_is_refused_before_they_meet(tmp_path, poem_file, monkeypatch):
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "3"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match="batch_size 8 must be a multiple of 6 \\(3 processes x accumulate 2\\)"):
        train(str(poem_file), tmp_path / "run", accumulate=2, **TINY)
