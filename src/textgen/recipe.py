"""The recipe: when a language model's shape is left unset, choose it for the corpus and the budget.

``textgen train --corpus mine.txt --max-minutes 10`` then trains the model that the sweeps behind
``docs/recipe.md`` found best for that much text and time on this device, not a fixed LSTM of 256:

1. the budget: ``--max-minutes``, else ``--max-steps`` or ``--epochs`` as tokens, else ``DEFAULT_MINUTES``;
2. the corpus: its training tokens and vocabulary (encoded once, as training then reuses them), at
   the word level when the text is already tokenized (``kinds/lm.py``), else the level asked for;
3. the device's speed: a probe of a few seconds times training steps of a small and a large model
   (fp32 and bf16), and the cost per token is taken as linear in the parameter count between them;
4. the width: the widest whose parameters (the embedding table aside) the budget's tokens cover
   the level's ``tokens_per_parameter`` times, and at most ``PARAMETERS_PER_TOKEN`` times the corpus's tokens (a
   small corpus cannot feed a big model); dropout from the epochs the budget will make, by level;
   bf16 where the probe finds it faster;
5. the schedule: warm-up, then cosine decay to a tenth by the budget's end (by the clock under
   ``--max-minutes``), and no epoch limit, so the budget decides when training ends.

Anything the user sets (a flag, a settings file, a preset) wins; setting any of the model's shape
(cell, layers, hidden size, embedding) or ``--recipe off`` keeps the plain defaults instead. It
prints what it chose and why in three lines.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from textgen.config import RunConfig

SHAPE = ("cell", "layers", "hidden_size", "embedding_dim", "tie_weights")  # setting any of these turns the recipe off
DEFAULT_MINUTES = {"cpu": 10.0, "cuda": 10.0}  # the budget when none is given
WIDTHS = (64, 96, 128, 160, 192, 256, 320, 384, 448, 512, 640, 768, 1024, 1280, 1536, 2048)
PROBE_WIDTHS = (128, 512)  # the probe times these two; the cost per token is taken as linear in the parameters
PROBE_STEPS = 25  # time steps per probe window: the batch's rows as in training (what sets the matrix sizes), short
PARAMETERS_PER_TOKEN = 4.0  # at most this many parameters per training token of the corpus
BF16_GAIN = 1.15  # bf16 autocast on the CPU when the probe finds it at least this much faster
SMALL_BUDGET_TOKENS = 200_000  # below: too little training for a useful model (a message, the smallest width)
SMALL_CORPUS_TOKENS = 5_000  # below: too little text for any model worth its name (a message, the smallest width)


@dataclass(frozen=True)
class Level:
    """What the recipe fixes per tokenizer level: the window, the batch and how it runs, the optimizer, its rate
    and clipping, whether the embedding is tied, the tokens per parameter of the width rule, and the dropout."""

    seq_len: int
    batch_size: int
    mode: str  # stateful: the state runs on along each of batch_size streams of the text, as at evaluation
    optimizer: str
    lr: float
    clip: float
    tie: bool  # word level: the embedding is the output matrix (a large vocabulary's softmax is the model's bulk)
    tokens_per_parameter: float  # the budget's tokens per (counted) parameter of the best model (docs/recipe.md)
    dropouts: tuple[tuple[float, float], ...]  # (epochs below, dropout): the more epochs, the more dropout

    def dropout(self, epochs: float) -> float:
        """The dropout for a run of ``epochs`` epochs: the first step whose bound is above it."""
        return next((d for bound, d in self.dropouts if epochs < bound), self.dropouts[-1][1])


# an LSTM of 320 on Tiny Shakespeare still improved without dropout after 16 epochs (docs/recipe.md)
FEW_DROPOUT = ((15, 0.0), (40, 0.1), (100, 0.2), (1e9, 0.3))
# a word recurs far less often than a character: a word model overfits within a few epochs (docs/recipe.md)
WORD_DROPOUT = ((3, 0.2), (10, 0.3), (30, 0.4), (1e9, 0.5))
# 8 tokens per parameter: the optimum of the width sweep on Tiny Shakespeare's characters; Adam at 4e-3, not the
# tutorials' 2e-3: 4.7% lower held-out loss on War and Peace in 5 minutes, where width gained little; batch 32, not
# 64: as many tokens a second on this CPU and twice the updates, 4.4% lower on recipes.txt in 5 (docs/recipe.md)
CHAR = Level(
    seq_len=100,
    batch_size=32,
    mode="shuffled",
    optimizer="adam",
    lr=4e-3,
    clip=5.0,
    tie=False,
    tokens_per_parameter=8,
    dropouts=FEW_DROPOUT,
)
LEVELS = {
    "char": CHAR,
    "bpe": dataclasses.replace(CHAR, seq_len=64, tie=True),  # the characters' rules (checked once, docs/recipe.md)
    # Words: the state carried along streams, plain SGD at 20 with clipping at 0.25 (Zaremba et al., pytorch/examples:
    # Adam 2e-3 with shuffled windows ended 5% behind, docs/recipe.md); 2 tokens per parameter: a word carries
    # several characters' information, and the example's 2x200 wins at 1.4.
    "word": Level(
        seq_len=35,
        batch_size=20,
        mode="stateful",
        optimizer="sgd",
        lr=20.0,
        clip=0.25,
        tie=True,
        tokens_per_parameter=2,
        dropouts=WORD_DROPOUT,
    ),
}


@dataclass(frozen=True)
class Budget:
    seconds: float | None  # wall-clock seconds, or None when the budget is counted in tokens
    tokens: int | None  # training tokens, or None when counted in seconds
    said: str  # how the user gave it, for the message


@dataclass(frozen=True)
class Speed:
    """Training tokens per second as a function of the parameter count: seconds per token = a + b * params."""

    a: float
    b: float
    precision: str
    bf16_gain: float  # bf16's speed over fp32 at the large probe width (1 when not measured)

    def tokens_per_s(self, params: int) -> float:
        return 1.0 / max(self.a + self.b * params, 1e-12)


@dataclass(frozen=True)
class Choice:
    settings: dict[str, Any]  # what the recipe sets (the user's settings are not in it)
    lines: list[str]  # what it says


def applies(cfg: RunConfig, explicit: Iterable[str]) -> bool:
    """Whether the recipe chooses: asked for (the default), and no part of the model's shape given."""
    return cfg.train.recipe == "auto" and not set(SHAPE) & set(explicit)


def budget_of(cfg: RunConfig, explicit: set[str], device: torch.device, corpus_tokens: int) -> Budget:
    """The budget the user gave (minutes, steps or epochs), or the device's default minutes."""
    t = cfg.train
    if t.max_minutes:
        return Budget(t.max_minutes * 60, None, f"{t.max_minutes:g} minutes")
    if "max_steps" in explicit and t.max_steps:
        return Budget(None, t.max_steps * t.batch_size * t.seq_len, f"{t.max_steps:,} steps")
    if "epochs" in explicit:
        return Budget(None, t.epochs * corpus_tokens, f"{t.epochs} epochs")
    minutes = DEFAULT_MINUTES.get(device.type, 10.0)
    return Budget(minutes * 60, None, f"{minutes:g} minutes (the default budget; set --max-minutes)")


@dataclass(frozen=True)
class Size:
    """The recipe's model at one width: all its parameters (what a step costs), and those the rules count:
    all but the embedding table, of which a token trains only its own row (at the word level the table
    is most of the model)."""

    total: int
    counted: int


def size_at(cfg: RunConfig, vocab_size: int, width: int, level: Level) -> Size:
    from textgen.kinds import parameter_count

    shape = shape_at(width, level, 0.0)
    total = parameter_count(cfg.updated(shape), vocab_size)
    return Size(total, total - vocab_size * shape["embedding_dim"])


def shape_at(width: int, level: Level, dropout: float) -> dict[str, Any]:
    """The recipe's model at ``width``: one LSTM layer, its embedding as wide as the layer up to 256
    (the word and BPE levels tie the embedding to the output layer, so it is the layer's width)."""
    embedding = width if level.tie else min(width, 256)
    return dict(
        cell="lstm", layers=1, hidden_size=width, embedding_dim=embedding, tie_weights=level.tie, dropout=dropout
    )


def probe(cfg: RunConfig, vocab_size: int, level: Level, device: torch.device, precisions: tuple[str, ...]) -> Speed:
    """Time a few training steps (forward, backward, Adam) of the probe widths in each of ``precisions``."""
    from textgen.kinds import model_for

    batch, seq = cfg.train.batch_size, min(cfg.train.seq_len, PROBE_STEPS)
    ids = torch.randint(0, vocab_size, (batch, seq + 1), device=device)
    timed: dict[tuple[int, str], float] = {}
    sizes: dict[int, int] = {}
    for width in PROBE_WIDTHS:
        model = model_for(cfg.updated(shape_at(width, level, 0.0)), vocab_size, device)
        sizes[width] = sum(p.numel() for p in model.parameters())
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        for precision in precisions:
            timed[width, precision] = _seconds_per_step(model, optimizer, ids, precision, device) / (batch * seq)
    small, large = PROBE_WIDTHS
    fastest, gain = precisions[0], 1.0
    if set(precisions) == {"fp32", "bf16"}:
        gain = timed[large, "fp32"] / timed[large, "bf16"]
        fastest = "bf16" if gain >= BF16_GAIN else "fp32"  # bf16 only when it is worth its rounding
    return fit_speed(sizes[small], timed[small, fastest], sizes[large], timed[large, fastest], fastest, gain)


def fit_speed(n0: int, t0: float, n1: int, t1: float, precision: str, gain: float) -> Speed:
    """Seconds per token a + b * params through two timed sizes; never cheaper than the larger one's per
    parameter (a probe dominated by overheads would otherwise rate huge models as nearly free)."""
    b = max((t1 - t0) / max(n1 - n0, 1), t1 / max(n1, 1) / 2)
    a = max(t0 - b * n0, 0.0)
    return Speed(a=a, b=b, precision=precision, bf16_gain=gain)


def _seconds_per_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, ids: torch.Tensor, precision: str, device: torch.device
) -> float:
    """The fastest of a few timed training steps, after one to warm up."""
    dtype = torch.bfloat16 if precision == "bf16" else None
    best = math.inf
    for i in range(3):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits, _ = model(ids[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            best = min(best, time.perf_counter() - start)
    return best


def choose(
    cfg: RunConfig,
    explicit: set[str],
    corpus_tokens: int,
    vocab_size: int,
    budget: Budget,
    speed: Speed | None,
) -> Choice:
    """The settings for a corpus of ``corpus_tokens`` training tokens and ``budget`` at ``speed`` (None for a
    budget in tokens), and the lines that say why. The user's settings (``explicit``) are left alone."""
    level = LEVELS[cfg.data.level]

    sizes = {w: size_at(cfg, vocab_size, w, level) for w in WIDTHS}

    def tokens_of(width: int) -> float:
        if speed is not None and budget.seconds is not None:
            return speed.tokens_per_s(sizes[width].total) * budget.seconds
        return float(budget.tokens or 0)

    fed = [w for w in WIDTHS if tokens_of(w) >= level.tokens_per_parameter * sizes[w].counted]  # the budget feeds it
    fits = [w for w in fed if sizes[w].counted <= PARAMETERS_PER_TOKEN * corpus_tokens]  # and the corpus does
    width = fits[-1] if fits else WIDTHS[0]
    tokens = tokens_of(width)
    epochs = tokens / max(corpus_tokens, 1)
    dropout = level.dropout(epochs)
    window = window_for(level, corpus_tokens, cfg.train.accumulate)
    settings: dict[str, Any] = {**shape_at(width, level, dropout), **window}
    # the level's optimizer, rate and clipping go together: a rate given alone keeps the default optimizer
    if cfg.train.optimizer == level.optimizer or not {"optimizer", "lr"} & explicit:
        settings.update(optimizer=level.optimizer, lr=level.lr, clip=level.clip)
    lr = cfg.train.lr if "lr" in explicit else settings.get("lr", cfg.train.lr)
    settings.update(lr=lr, schedule="cosine", min_lr=lr / 10, warmup_steps=100)
    if budget.seconds is not None:
        settings["max_minutes"] = budget.seconds / 60
        settings["eval_minutes"] = max(budget.seconds / 60 / 5, 0.5)  # five validations: a curve, and best/ kept
    if budget.tokens is None or "max_steps" in explicit:
        settings["epochs"] = 1_000_000  # the minutes or the steps end training, not a count of epochs
    if speed is not None:
        settings["precision"] = speed.precision
    chosen = {k: v for k, v in settings.items() if k not in explicit}
    final = cfg.updated(chosen)
    m, t = final.model, final.train
    steps = tokens / (t.batch_size * t.seq_len)
    lines = [
        f"recipe: {m.cell.upper()} {m.hidden_size} ({sizes[width].total:,} parameters, dropout {m.dropout:g}) for "
        f"{budget.said}: about {tokens / 1e6:.1f}M tokens ({steps:,.0f} steps, {epochs:.1f} epochs of "
        f"{corpus_tokens:,} tokens)",
        "recipe: " + _why(width, fed, fits, sizes, tokens_of, speed, level.tokens_per_parameter),
        f"recipe: batch {t.batch_size} x {t.seq_len}, {t.optimizer} {t.lr:g}, {t.schedule} schedule"
        + (f" to {t.min_lr:g} at the budget's end" if t.schedule == "cosine" else "")
        + f", {t.precision}"
        + (f" (bf16 measured {speed.bf16_gain:.2f}x fp32's speed)" if speed and speed.bf16_gain != 1.0 else "")
        + "; what you set wins (--recipe off: the plain defaults)",
    ]
    if tokens < SMALL_BUDGET_TOKENS:
        lines.append(
            f"recipe: {budget.said} buys only {tokens:,.0f} training tokens, too few for a useful model: "
            f"training the smallest (LSTM {WIDTHS[0]}); give more minutes for a better one"
        )
    if corpus_tokens < SMALL_CORPUS_TOKENS:
        lines.append(
            f"recipe: {corpus_tokens:,} training tokens are too few for any model worth its name: training the "
            f"smallest (LSTM {WIDTHS[0]}), which will mostly memorise them; give it more text"
        )
    return Choice(chosen, lines)


def _why(
    width: int,
    fed: list[int],
    fits: list[int],
    sizes: dict[int, Size],
    tokens_of: Callable[[int], float],
    speed: Speed | None,
    per_parameter: float,
) -> str:
    """Which rule stopped the width where it is."""
    rate = f" (about {speed.tokens_per_s(sizes[width].total):,.0f} tokens/s here, from the probe)" if speed else ""
    if not fits:
        need = f"{per_parameter:g} tokens per parameter"
        return f"no width gets {need} from this budget and corpus: the smallest{rate}"
    if width == WIDTHS[-1]:
        return f"the widest textgen's recipe builds{rate}"
    wider = WIDTHS[WIDTHS.index(width) + 1]
    if wider not in fed:
        return (
            f"the widest the budget feeds {per_parameter:g} tokens per parameter{rate}; an LSTM of {wider} "
            f"would see {tokens_of(wider) / sizes[wider].counted:.1f}"
        )
    return f"the widest with at most {PARAMETERS_PER_TOKEN:g} parameters per corpus token (a small corpus){rate}"


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` is a CPU with bfloat16 instructions (AVX512-BF16 or AMX), where bf16 autocast trains
    faster; elsewhere bf16 is emulated and slower. The language-model recipe measures instead (``probe``)."""
    if device.type != "cpu":
        return False
    cpu = torch.cpu
    return any(getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def window_for(level: Level, corpus_tokens: int, accumulate: int = 1) -> dict[str, Any]:
    """The level's batch of windows and how they run, smaller for a small corpus: at least 40 windows, 4
    batches an epoch; the batch a whole number of ``accumulate`` micro-batches."""
    seq = min(level.seq_len, max(8, corpus_tokens // 40))
    batch = min(level.batch_size, max(1, corpus_tokens // ((seq + 1) * 4)))
    batch = max(accumulate, batch // accumulate * accumulate)
    return {"batch_size": batch, "seq_len": seq, "mode": level.mode}


def apply(
    cfg: RunConfig,
    explicit: set[str],
    corpus_tokens: int,
    vocab_size: int,
    device: torch.device,
    log: Callable[[str], None],
    measure: Callable[..., Speed] = probe,
) -> RunConfig:
    """``cfg`` with the recipe's choices for the settings the user did not give, said in ``log``."""
    level = LEVELS[cfg.data.level]
    window = window_for(level, corpus_tokens, cfg.train.accumulate)
    shaped = cfg.updated({k: v for k, v in window.items() if k not in explicit})  # the probe times these
    budget = budget_of(shaped, explicit, device, corpus_tokens)
    speed = None
    tiny = budget.tokens is not None and budget.tokens < SMALL_BUDGET_TOKENS  # the smallest model whatever the speed
    if not tiny and (budget.seconds is not None or "precision" not in explicit):
        precisions = (cfg.train.precision,) if "precision" in explicit or device.type != "cpu" else ("fp32", "bf16")
        speed = measure(shaped, vocab_size, level, device, precisions)
    choice = choose(shaped, explicit, corpus_tokens, vocab_size, budget, speed)
    for line in choice.lines:
        log(line)
    return cfg.updated(choice.settings)
