"""Fine-tune one LoRA adapter per task: standard PEFT initialisation, or OSRM's A.

The base model is never modified: each run trains a deep copy, so one loaded base model can train
many adapters in turn. Training is seeded and deterministic on a given machine: the LoRA factors,
the head, the batch order and dropout all come from `seed`, and the caller's global random state is
restored.

Independent adapters. Adapters trained by different people do not share an initialisation, so
each adapter gets its own seed, :func:`adapter_seed` (task, init, replicate), and LoRA's A is drawn
from a generator of its own, after the head exists: the head's size (how many labels) cannot shift
the draws, so two tasks with the same number of labels do not start from the same A by accident.
A shared initialisation is still available on purpose: pass the same seed.

The result is a merging.adapters.lora.Adapter built from PEFT's own state dict and config (so names and
scales are exactly PEFT's), carrying the task's classification head as a saved module.
"""

from __future__ import annotations

import copy
import enum
import math
import os
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from merging.adapters.lora import Adapter, adapter_from_state, save_adapter
from merging.core.progress import Progress
from merging.models.base import head_name, init_head, set_num_labels

# Inits that draw A from the seed alone; the others are merging.training.osrm.VARIANTS and need osrm_A.
SEEDED_INITS = ("standard", "gaussian", "standard-scaled")
INITS = (*SEEDED_INITS, "osrm", "osrm-samples", "osrm-cov", "osrm-random")


def adapter_seed(task: str, init: str, replicate: int = 0) -> int:
    """The training seed of one adapter: a stable function of its task, init and replicate.

    CRC32 (not Python's salted hash) so that the same zoo build draws the same numbers on every
    machine and in every process; `replicate` numbers extra training runs of the same adapter.
    """
    return zlib.crc32(f"{task}\x1f{init}\x1f{int(replicate)}".encode()) & 0x7FFFFFFF


def standard_lora_A(shapes: Mapping[str, tuple[int, int]], seed: int) -> dict[str, torch.Tensor]:
    """PEFT's default A (Kaiming-uniform, a = √5), drawn per module in name order from `seed` alone."""
    generator = torch.Generator().manual_seed(int(seed))
    result = {}
    for name in sorted(shapes):
        A = torch.empty(shapes[name])
        nn.init.kaiming_uniform_(A, a=math.sqrt(5), generator=generator)
        result[name] = A
    return result


def gaussian_lora_A(shapes: Mapping[str, tuple[int, int]], seed: int) -> dict[str, torch.Tensor]:
    """PEFT's ``init_lora_weights="gaussian"`` A (normal, std 1/r): the OSRM authors' baseline."""
    generator = torch.Generator().manual_seed(int(seed))
    result = {}
    for name in sorted(shapes):
        rank = shapes[name][0]
        result[name] = torch.randn(shapes[name], generator=generator) / rank
    return result


def scaled_standard_lora_A(shapes: Mapping[str, tuple[int, int]], seed: int) -> dict[str, torch.Tensor]:
    """The scale control: PEFT's default A rescaled so that ‖A‖_F = √r, as OSRM's orthonormal rows.

    Same directions as :func:`standard_lora_A` (one factor per module), OSRM's size: whatever
    differs between this and OSRM is the choice of subspace, not the scale of A.
    """
    result = {}
    for name, A in standard_lora_A(shapes, seed).items():
        result[name] = A * (math.sqrt(A.shape[0]) / float(A.norm()))
    return result


SEEDED_A = {"standard": standard_lora_A, "gaussian": gaussian_lora_A, "standard-scaled": scaled_standard_lora_A}


def chance_verdict(accuracy: float, majority: float, loss: float | None, num_labels: int) -> str | None:
    """Why a run did not learn, in words, or None when it did.

    A run did not learn when its accuracy is within 10 pp of the majority class, or when its
    training loss ends within 2 % of ln C (what predicting the class prior uniformly costs).
    """
    reasons = []
    if accuracy - majority < 0.10:
        reasons.append(f"accuracy {100 * accuracy:.1f} % is within 10 pp of the majority class ({100 * majority:.1f} %)")
    chance_loss = math.log(num_labels)
    if loss is not None and num_labels > 1 and loss >= 0.98 * chance_loss:
        reasons.append(f"training loss {loss:.3f} is within 2 % of ln {num_labels} = {chance_loss:.3f}")
    return "; ".join(reasons) or None


@dataclass
class TrainResult:
    adapter: Adapter
    losses: list[float]  # one per optimisation step
    seconds: float
    initial_A: dict[str, torch.Tensor] = field(default_factory=dict)  # each module's A before step 1
    config: dict = field(default_factory=dict)  # the training settings, JSON-ready
    epoch_losses: list[float] = field(default_factory=list)  # mean training loss of each epoch
    dev_accuracy: list[float] = field(default_factory=list)  # after each epoch, when a dev split was given
    best_epoch: int | None = None  # 1-based: the epoch kept (best dev accuracy); None: the last one


def _json_safe(value):
    """PEFT config values (sets, enums) as plain JSON values."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(_json_safe(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _check_inputs(texts: Sequence[str], labels: Sequence[int], num_labels: int) -> None:
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    if not texts:
        raise ValueError("no training examples")
    bad = sorted({int(y) for y in labels if not 0 <= int(y) < num_labels})
    if bad:
        raise ValueError(f"labels must be integers in [0, {num_labels}); got {bad[:5]}")


def _resolve(device: torch.device | str | None, model: nn.Module) -> torch.device:
    """None: where the model is; "auto": CUDA when present, else the CPU; else that device."""
    if device is None:
        for parameter in model.parameters():
            return parameter.device
        return torch.device("cpu")
    if isinstance(device, str):
        from merging.models.devices import resolve_device

        return resolve_device(device)
    return torch.device(device)


def train_lora(
    model: nn.Module,
    tokenizer,
    train_texts: Sequence[str],
    train_labels: Sequence[int],
    *,
    rank: int = 8,
    alpha: float = 16,
    target_modules: Sequence[str] = ("query", "value"),
    init: str = "standard",
    osrm_A: Mapping[str, torch.Tensor] | None = None,
    freeze_A: bool = False,
    epochs: int = 2,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    warmup_ratio: float = 0.06,
    max_grad_norm: float | None = 1.0,
    dev_texts: Sequence[str] | None = None,
    dev_labels: Sequence[int] | None = None,
    dropout: float = 0.0,
    batch_size: int = 16,
    max_length: int = 48,
    seed: int = 0,
    num_labels: int | None = None,
    device: torch.device | str | None = None,
    base_model: str | None = None,
    name: str = "trained",
    progress: Progress | None = None,
) -> TrainResult:
    """Train a LoRA adapter (plus the classification head) on one task; the base model is untouched.

    ``init`` one of merging.training.osrm.VARIANTS sets each target module's A to ``osrm_A[module]``
    (orthonormal rows from merging.training.osrm) with B = 0; ``standard`` (PEFT's Kaiming default),
    ``gaussian`` (PEFT's std 1/r, the OSRM authors' baseline) and ``standard-scaled`` (Kaiming
    rescaled to OSRM's ‖A‖_F) draw A from `seed` alone (``SEEDED_A``). `freeze_A` keeps A fixed
    so only B and the head train. `num_labels` different from the model's head gives the copy a
    fresh seeded head of that size. ``epochs=0`` returns the adapter at initialisation. AdamW with
    linear warm-up and decay; gradients clipped to `max_grad_norm` (None: not clipped). With a dev
    split (`dev_texts`, `dev_labels`) the adapter returned is the one of the epoch with the best
    dev accuracy (the earliest on a tie), as the HF Trainer's ``load_best_model_at_end``.
    """
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    if init not in SEEDED_INITS and not osrm_A:
        raise ValueError(f"init={init!r} needs osrm_A: one A (rank × d_in) per target module")
    if epochs < 0 or batch_size < 1 or rank < 1:
        raise ValueError("epochs must be ≥ 0, batch_size and rank ≥ 1")
    device = _resolve(device, model)
    num_labels = int(num_labels or model.config.num_labels)
    _check_inputs(train_texts, train_labels, num_labels)
    if (dev_texts is None) != (dev_labels is None):
        raise ValueError("give both dev_texts and dev_labels, or neither")
    if dev_texts is not None:
        _check_inputs(dev_texts, dev_labels, num_labels)
    texts = list(train_texts)
    labels = torch.tensor([int(y) for y in train_labels], dtype=torch.long)
    settings = {
        "rank": rank, "alpha": alpha, "target_modules": list(target_modules), "init": init,
        "freeze_A": freeze_A, "epochs": epochs, "lr": lr, "weight_decay": weight_decay,
        "warmup_ratio": warmup_ratio, "max_grad_norm": max_grad_norm, "dropout": dropout,
        "batch_size": batch_size, "max_length": max_length, "seed": seed, "num_labels": num_labels,
        "examples": len(texts), "dev_examples": len(dev_texts) if dev_texts is not None else 0,
    }  # fmt: skip

    started = time.perf_counter()
    # Seed everything that draws random numbers (LoRA A init, a fresh head, dropout) without
    # disturbing the caller's random state.
    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        work = copy.deepcopy(model)
        if num_labels != work.config.num_labels:
            set_num_labels(work, num_labels, seed)
        else:
            init_head(work, seed)  # the head from this adapter's seed too, not the base model's
        head = head_name(work)
        config = LoraConfig(
            r=rank,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=list(target_modules),
            modules_to_save=[head],
            task_type="SEQ_CLS",
            bias="none",
        )
        peft_model = get_peft_model(work, config)
        lora_A = {key: parameter for key, parameter in peft_model.named_parameters() if ".lora_A." in key}
        if init in SEEDED_INITS:
            # PEFT drew A from the global generator after the head: redraw it from the seed alone
            fresh = SEEDED_A[init]({_module_of(k): tuple(p.shape) for k, p in lora_A.items()}, seed)
            _set_A(lora_A, fresh, rank)
        else:
            _set_A(lora_A, osrm_A, rank)
        if freeze_A:
            for parameter in lora_A.values():
                parameter.requires_grad_(False)
        initial_A = {_module_of(key): p.detach().to("cpu", torch.float32).clone() for key, p in lora_A.items()}

        peft_model.to(device)
        trainable = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=weight_decay)
        steps_per_epoch = math.ceil(len(texts) / batch_size)
        total_steps = steps_per_epoch * epochs
        warmup = int(round(warmup_ratio * total_steps))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_then_decay(warmup, total_steps))
        order_generator = torch.Generator().manual_seed(seed)
        losses: list[float] = []
        epoch_losses: list[float] = []
        dev_accuracy: list[float] = []
        best: tuple[float, int, dict[str, torch.Tensor]] | None = None  # (dev accuracy, epoch, trainable state)
        peft_model.train()
        step = 0
        for epoch in range(epochs):
            epoch_start = len(losses)
            order = torch.randperm(len(texts), generator=order_generator)
            for start in range(0, len(texts), batch_size):
                index = order[start : start + batch_size]
                losses.append(_step(peft_model, tokenizer, [texts[i] for i in index.tolist()], labels[index],
                                    max_length, device, optimizer, scheduler, trainable, max_grad_norm))  # fmt: skip
                step += 1
                if progress is not None:
                    progress(step, total_steps, f"epoch {epoch + 1}/{epochs} · loss {losses[-1]:.3f}")
            epoch_losses.append(sum(losses[epoch_start:]) / max(1, len(losses) - epoch_start))
            if dev_texts is not None:
                accuracy = _accuracy(peft_model, tokenizer, dev_texts, dev_labels, batch_size, max_length, device)
                dev_accuracy.append(accuracy)
                if best is None or accuracy > best[0]:
                    state = {k: p.detach().clone() for k, p in peft_model.named_parameters() if p.requires_grad}
                    best = (accuracy, epoch + 1, state)
                peft_model.train()
        if best is not None:
            parameters = dict(peft_model.named_parameters())
            with torch.no_grad():
                for key, value in best[2].items():
                    parameters[key].copy_(value)
        peft_model.eval()

        state = get_peft_model_state_dict(peft_model, save_embedding_layers=False)
        state = {key: value.detach().to("cpu").clone() for key, value in state.items()}
        peft_config = _json_safe(peft_model.peft_config["default"].to_dict())
        peft_config["modules_to_save"] = [head]
        peft_config["base_model_name_or_path"] = base_model or getattr(model, "name_or_path", None) or None
        del peft_model, work, optimizer

    adapter = adapter_from_state(name, state, peft_config)
    return TrainResult(
        adapter=adapter,
        losses=losses,
        seconds=time.perf_counter() - started,
        initial_A=initial_A,
        config=settings,
        epoch_losses=epoch_losses,
        dev_accuracy=dev_accuracy,
        best_epoch=best[1] if best is not None else None,
    )


def _warmup_then_decay(warmup: int, total_steps: int):
    """The learning-rate factor of a step: linear warm-up over `warmup` steps, then linear decay to 0."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


def _step(model, tokenizer, texts, labels, max_length, device, optimizer, scheduler, trainable, max_grad_norm) -> float:
    """One optimisation step on one batch (cross-entropy, clipped gradients); returns the loss."""
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    logits = model(**{key: value.to(device) for key, value in batch.items()}).logits
    loss = nn.functional.cross_entropy(logits.float(), labels.to(device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
    optimizer.step()
    scheduler.step()
    return float(loss.detach())


@torch.no_grad()
def _accuracy(model: nn.Module, tokenizer, texts, labels, batch_size: int, max_length: int, device) -> float:
    """Accuracy of a sequence classifier on (texts, labels), in eval mode."""
    model.eval()
    correct = 0
    for start in range(0, len(texts), max(batch_size, 32)):
        chunk = list(texts[start : start + max(batch_size, 32)])
        batch = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        logits = model(**{key: value.to(device) for key, value in batch.items()}).logits
        target = torch.tensor([int(y) for y in labels[start : start + len(chunk)]], device=logits.device)
        correct += int((logits.argmax(-1) == target).sum())
    return correct / len(texts)


def _module_of(parameter_name: str) -> str:
    """``base_model.model.X.lora_A.default.weight`` → ``X``."""
    name = parameter_name.split(".lora_A.", 1)[0]
    prefix = "base_model.model."
    return name[len(prefix):] if name.startswith(prefix) else name


def _set_A(lora_A: Mapping[str, nn.Parameter], osrm_A: Mapping[str, torch.Tensor], rank: int) -> None:
    """Copy one given A per module into PEFT's lora_A parameters (shapes checked)."""
    missing = sorted({_module_of(n) for n in lora_A} - set(osrm_A))
    if missing:
        raise ValueError(f"osrm_A has no entry for modules {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    with torch.no_grad():
        for name, parameter in lora_A.items():
            A = torch.as_tensor(osrm_A[_module_of(name)])
            if tuple(A.shape) != tuple(parameter.shape):
                raise ValueError(
                    f"osrm_A[{_module_of(name)!r}] has shape {tuple(A.shape)}, expected {tuple(parameter.shape)} "
                    f"(rank {rank} × d_in)"
                )
            parameter.copy_(A.to(device=parameter.device, dtype=parameter.dtype))


def save_trained(
    result: TrainResult,
    folder: str | os.PathLike,
    task_name: str,
    labels: Sequence[str],
    init: str | None = None,
    extra_meta: Mapping | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the trained adapter as a PEFT folder with mergescope.json (task, labels, init, base model)."""
    meta = {
        "task": task_name,
        "labels": [str(label) for label in labels],
        "init": init or result.config.get("init", "standard"),
        "base_model": result.adapter.base_model,
        "training": dict(result.config),
        "final_loss": result.losses[-1] if result.losses else None,
        "train_seconds": round(result.seconds, 2),
        **dict(extra_meta or {}),
    }
    adapter = replace(result.adapter, name=task_name, meta=meta)
    return save_adapter(adapter, folder, template_config=adapter.config, overwrite=overwrite)


@dataclass
class FullFineTuneResult:
    """What full fine-tuning changed: the dense update of each named module, and how well it learned."""

    deltas: dict[str, torch.Tensor]  # module name → W_finetuned − W_base (d_out × d_in), float32 on the CPU
    model: nn.Module  # the fine-tuned copy (best dev epoch), in eval mode
    epoch_losses: list[float]
    dev_accuracy: list[float]
    best_epoch: int | None
    seconds: float


def full_finetune(
    model: nn.Module,
    tokenizer,
    train_texts: Sequence[str],
    train_labels: Sequence[int],
    *,
    modules: Sequence[str] = ("query", "value"),
    dev_texts: Sequence[str] | None = None,
    dev_labels: Sequence[int] | None = None,
    epochs: int = 3,
    lr: float = 3e-5,
    warmup_ratio: float = 0.06,
    max_grad_norm: float | None = 1.0,
    batch_size: int = 32,
    max_length: int = 32,
    seed: int = 0,
    num_labels: int | None = None,
) -> FullFineTuneResult:
    """Fine-tune every weight of a copy of `model` (the baseline DO-Merging compares LoRA with).

    Returns the dense updates of the Linear modules whose name ends with one of `modules` (what a
    LoRA adapter on those modules would change), from the epoch with the best dev accuracy. The
    base model is left as it was. Same optimiser, schedule, clipping and seeding as :func:`train_lora`.
    """
    num_labels = int(num_labels or model.config.num_labels)
    _check_inputs(train_texts, train_labels, num_labels)
    device = _resolve(None, model)
    texts = list(train_texts)
    labels = torch.tensor([int(y) for y in train_labels], dtype=torch.long)
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        work = copy.deepcopy(model)
        if num_labels != work.config.num_labels:
            set_num_labels(work, num_labels, seed)
        else:
            init_head(work, seed)
        base = {
            name: module.weight.detach().clone()
            for name, module in work.named_modules()
            if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in modules
        }
        trainable = [p for p in work.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=lr)
        total_steps = math.ceil(len(texts) / batch_size) * epochs
        warmup = int(round(warmup_ratio * total_steps))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_then_decay(warmup, total_steps))
        order_generator = torch.Generator().manual_seed(seed)
        epoch_losses, dev_accuracy = [], []
        best: tuple[float, int, dict] | None = None
        for epoch in range(epochs):
            work.train()
            order = torch.randperm(len(texts), generator=order_generator)
            seen = []
            for start in range(0, len(texts), batch_size):
                index = order[start : start + batch_size]
                seen.append(_step(work, tokenizer, [texts[i] for i in index.tolist()], labels[index], max_length,
                                  device, optimizer, scheduler, trainable, max_grad_norm))  # fmt: skip
            epoch_losses.append(sum(seen) / len(seen))
            if dev_texts is not None:
                accuracy = _accuracy(work, tokenizer, dev_texts, dev_labels, batch_size, max_length, device)
                dev_accuracy.append(accuracy)
                if best is None or accuracy > best[0]:
                    best = (accuracy, epoch + 1, {k: v.detach().clone() for k, v in work.state_dict().items()})
        if best is not None:
            work.load_state_dict(best[2])
        work.eval()
        modules_now = dict(work.named_modules())
        deltas = {name: (modules_now[name].weight.detach() - weight).to("cpu", torch.float32) for name, weight in base.items()}
    return FullFineTuneResult(deltas, work, epoch_losses, dev_accuracy, best[1] if best else None, time.perf_counter() - started)
