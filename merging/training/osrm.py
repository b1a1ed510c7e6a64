"""OSRM: Orthogonal Subspaces for Robust model Merging (Zhang et al., 2025).

Merging adapters interferes when task s's update ΔW_s = B_s·A_s responds to task t's inputs:
the merged model sees ΔW_s·x for every x of task t. OSRM chooses each task's LoRA A *before* fine-
tuning so that A_s·x ≈ 0 for the other tasks' inputs x: with A fixed (or only lightly trained), the
update ΔW_s = B_s·A_s then barely moves the other tasks' hidden states.

Per target module, with X a stack of rows describing the other tasks' inputs to that module, OSRM
solves

    min_A ‖A·Xᵀ‖_F   subject to   A·Aᵀ = I_r

whose solution is the r right-singular vectors of X with the smallest singular values: the null
space of X when it has one (fewer rows than input dimensions). Three readings of "the other tasks'
inputs" are offered, by name (``VARIANTS``):

- ``osrm`` (the default, the authors' reading): **one row per other task**, the mean over that
  task's samples of each sample's mean input over its tokens. This is what illidanlab/OSRM does
  (`utils.get_pretrained_latent_features` averages each batch over tokens and samples and the
  batches over the task; `utils.peft_analytical_init` stacks one such row per other task and keeps
  `Vt[-rank:]` of its SVD). With 4 other tasks X has 4 rows, so a rank-8 A lies in X's null space
  and A·x̄_t = 0 exactly for every other task's mean input. One difference, on purpose: the
  authors pad every text to the maximum length and their token mean includes the padding
  positions; here the mean is over *non-padding* tokens only, so a task's row does not depend on
  how long the padding happened to be.
- ``osrm-samples``: one row per *sample* of every other task (mergescope's reading before the
  authors' became the default). With 4 × 100 rows > 384 input dimensions there is no null space,
  and A becomes the least-variance directions of all other tasks' features.
- ``osrm-cov``: all tokens instead of per-sample means: minimise trace(A·C·Aᵀ) with
  C = Σ_tokens x·xᵀ, solved by the eigenvectors of C with the r smallest eigenvalues.
- ``osrm-random`` (an ablation, not the authors'): the authors' rows, but A is a *seeded random*
  orthonormal basis of r directions inside X's null space instead of `Vt[-rank:]`. With 4 nearly
  parallel mean rows in 384 dimensions the null space has 380 dimensions and which r of them the
  SVD returns is LAPACK's choice, the same for every task; this variant keeps the constraint
  (A·x̄ = 0 for every other task's mean input) and makes each task's A its own.

Whether A stays frozen during training is a training switch (merging.training.trainer.train_lora's
``freeze_A``), recorded with every adapter; the authors' default trains it.

The post-hoc variant takes an adapter already trained with standard LoRA and re-factors its update
onto the OSRM rows: B' = ΔW·A'⁺ so that B'·A' = ΔW·P, P the projector onto the row space of A'.

Module names are the base model's own (``bert.encoder.layer.0.attention.self.query``), as in
merging.adapters.lora.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from merging.adapters.lora import PEFT_PREFIX, Adapter, LoraModule
from merging.core.progress import Progress

VARIANTS = ("osrm", "osrm-samples", "osrm-cov", "osrm-random")
DEFAULT_VARIANT = "osrm"
ROWS = {
    "osrm": "one mean row per other task (mean over its samples of the mean over non-padding tokens)",
    "osrm-samples": "one row per sample of every other task (mean over its non-padding tokens)",
    "osrm-cov": "second moment of every non-padding token of every other task",
    "osrm-random": "one mean row per other task, as osrm; a seeded random orthonormal basis of their null space",
}


@dataclass
class ModuleFeatures:
    """One module's input statistics over a set of texts, on the CPU in float32 / float64."""

    means: torch.Tensor  # (n_samples, d_in): per sample, the mean input over its non-padding tokens
    second_moment: torch.Tensor | None  # (d_in, d_in) float64: Σ over non-padding tokens of x·xᵀ
    tokens: int  # how many non-padding tokens went into second_moment

    @property
    def covariance(self) -> torch.Tensor | None:
        """The (uncentred) second moment per token, Σ x·xᵀ / tokens."""
        if self.second_moment is None:
            return None
        return self.second_moment / max(self.tokens, 1)


def matches_target(module_name: str, target_modules: Sequence[str]) -> bool:
    """PEFT's rule for a list of target modules: the name equals a target or ends in ``.target``."""
    return any(module_name == t or module_name.endswith("." + t) for t in target_modules)


def target_linear_modules(model: nn.Module, target_modules: Sequence[str]) -> dict[str, nn.Linear]:
    """The model's nn.Linear modules that LoRA would adapt, by their own (unprefixed) names."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and matches_target(name, target_modules):
            found[name[len(PEFT_PREFIX):] if name.startswith(PEFT_PREFIX) else name] = module
    if not found:
        raise ValueError(
            f"no nn.Linear modules named {list(target_modules)} in {type(model).__name__}; "
            "pass the pretrained model (not a PEFT-wrapped one) and its module names"
        )
    return found


def _model_device(model: nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


@torch.no_grad()
def collect_input_features(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    target_modules: Sequence[str] = ("query", "value"),
    max_length: int = 48,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    covariance: bool = False,
    progress: Progress | None = None,
) -> dict[str, ModuleFeatures]:
    """Inputs of the target Linear modules of a *pretrained* model over `texts`, per module.

    Forward hooks capture each target module's input x (batch × tokens × d_in). Per text, the mean of
    x over its non-padding tokens gives one row of `means`; with `covariance`, Σ x·xᵀ over all
    non-padding tokens is accumulated as well (for ``osrm-cov``). The model is left as it was.
    """
    texts = list(texts)
    if not texts:
        raise ValueError("collect_input_features needs at least one text")
    modules = target_linear_modules(model, target_modules)
    if isinstance(device, str):
        from merging.models.devices import resolve_device

        device = resolve_device(device)
    device = torch.device(device) if device is not None else _model_device(model)
    original_device = _model_device(model)
    was_training = model.training

    state: dict[str, torch.Tensor] = {}  # the current batch's attention mask
    means: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
    moments: dict[str, torch.Tensor] = {}
    tokens = 0

    def make_hook(name: str):
        def hook(_module, inputs, _output):
            x = inputs[0]
            mask = state["mask"]
            if x.ndim != 3 or tuple(x.shape[:2]) != tuple(mask.shape):
                raise ValueError(
                    f"{name}: expected an input of shape (batch, tokens, d_in) matching the attention "
                    f"mask {tuple(mask.shape)}, got {tuple(x.shape)}"
                )
            x = x.detach().float()
            weights = mask.to(x.dtype).unsqueeze(-1)
            counts = weights.sum(dim=1).clamp_min(1.0)
            means[name].append(((x * weights).sum(dim=1) / counts).cpu())
            if covariance:
                kept = x[mask.bool()]  # (non-padding tokens, d_in)
                moment = (kept.T @ kept).double().cpu()
                moments[name] = moments[name] + moment if name in moments else moment

        return hook

    handles = [module.register_forward_hook(make_hook(name)) for name, module in modules.items()]
    try:
        model.to(device)
        model.eval()
        total = (len(texts) + batch_size - 1) // batch_size
        for index, start in enumerate(range(0, len(texts), batch_size)):
            batch = tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            batch = {key: value.to(device) for key, value in batch.items()}
            state["mask"] = batch["attention_mask"]
            tokens += int(batch["attention_mask"].sum())
            model(**batch)
            if progress is not None:
                progress(index + 1, total, "collecting input features")
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
        model.to(original_device)

    return {
        name: ModuleFeatures(
            means=torch.cat(means[name], dim=0),
            second_moment=moments.get(name) if covariance else None,
            tokens=tokens,
        )
        for name in modules
    }


# ----------------------------------------------------------------------------------------------
# The initialisations


def _check_rank(rank: int, d_in: int) -> None:
    if not 1 <= rank <= d_in:
        raise ValueError(f"rank must be between 1 and the input dimension {d_in}, got {rank}")


def osrm_init(other_task_features: torch.Tensor, rank: int) -> torch.Tensor:
    """A (rank × d_in) with orthonormal rows minimising ‖A·Xᵀ‖_F for X the other tasks' features.

    The rows are the right-singular vectors of X with the `rank` smallest singular values, counting
    the zero singular values of X's null space when X has fewer rows than columns (then A·Xᵀ = 0 up
    to rounding as long as rank ≤ d_in − rank(X)). The minimum of ‖A·Xᵀ‖²_F is the sum of the `rank`
    smallest squared singular values.
    """
    X = torch.as_tensor(other_task_features).detach()
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"expected other-task features of shape (n ≥ 1, d_in), got {tuple(X.shape)}")
    _check_rank(rank, int(X.shape[1]))
    X = X.to("cpu", torch.float64)
    # full_matrices: Vh is d_in × d_in even when n < d_in, so its last rows span X's null space.
    _, _, Vh = torch.linalg.svd(X, full_matrices=True)
    return Vh[-rank:].to(torch.float32).contiguous()


def osrm_random_init(other_task_features: torch.Tensor, rank: int, seed: int, rtol: float = 1e-6) -> torch.Tensor:
    """A (rank × d_in) with orthonormal rows drawn at random (from `seed`) inside X's null space.

    The null space is spanned by the right-singular vectors whose singular value is at most
    `rtol`·σ_max (and by those beyond X's row count). When it has fewer than `rank` dimensions the
    basis is completed with the next-smallest directions, as :func:`osrm_init` would take them.
    """
    X = torch.as_tensor(other_task_features).detach()
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"expected other-task features of shape (n ≥ 1, d_in), got {tuple(X.shape)}")
    d_in = int(X.shape[1])
    _check_rank(rank, d_in)
    X = X.to("cpu", torch.float64)
    _, S, Vh = torch.linalg.svd(X, full_matrices=True)
    kept = int((S > rtol * S.max()).sum()) if S.numel() and float(S.max()) > 0 else 0
    null_dim = d_in - kept
    if null_dim < rank:
        return Vh[-rank:].to(torch.float32).contiguous()
    null_basis = Vh[kept:].T  # d_in × null_dim
    generator = torch.Generator().manual_seed(int(seed))
    gaussian = torch.randn(null_dim, rank, generator=generator, dtype=torch.float64)
    Q, R = torch.linalg.qr(gaussian)
    Q = Q * torch.sign(torch.diagonal(R)).where(torch.diagonal(R) != 0, torch.ones(rank, dtype=torch.float64))
    return (null_basis @ Q).T.to(torch.float32).contiguous()


def osrm_cov_init(covariance: torch.Tensor, rank: int) -> torch.Tensor:
    """A (rank × d_in) with orthonormal rows minimising trace(A·C·Aᵀ): C's bottom-`rank` eigenvectors."""
    C = torch.as_tensor(covariance).detach().to("cpu", torch.float64)
    if C.ndim != 2 or C.shape[0] != C.shape[1]:
        raise ValueError(f"expected a square covariance matrix, got shape {tuple(C.shape)}")
    _check_rank(rank, int(C.shape[0]))
    _, vectors = torch.linalg.eigh((C + C.T) / 2)  # eigenvalues ascending
    return vectors[:, :rank].T.to(torch.float32).contiguous()


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"unknown OSRM variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return variant


def other_task_rows(per_task: Sequence[ModuleFeatures], variant: str = DEFAULT_VARIANT) -> torch.Tensor:
    """The stack X whose null space OSRM's A lies in, for one module (not for ``osrm-cov``).

    ``osrm``: one row per other task, the mean of that task's per-sample rows (the authors');
    ``osrm-samples``: every per-sample row of every other task.
    """
    check_variant(variant)
    if variant == "osrm-cov":
        raise ValueError("osrm-cov reads second moments, not rows; see osrm_A_for_task")
    if variant in ("osrm", "osrm-random"):
        return torch.stack([f.means.mean(dim=0) for f in per_task])
    return torch.cat([f.means for f in per_task], dim=0)


def rows_used(
    features: Mapping[str, Mapping[str, ModuleFeatures]], task: str, variant: str = DEFAULT_VARIANT
) -> dict:
    """What the A of `task` was computed from, JSON-ready: for the manifest and mergescope.json."""
    check_variant(variant)
    others = [name for name in features if name != task]
    first = next(iter(features[others[0]].values())) if others else None
    samples = {name: int(next(iter(features[name].values())).means.shape[0]) for name in others}
    count = {
        "osrm": len(others),
        "osrm-random": len(others),
        "osrm-samples": sum(samples.values()),
        "osrm-cov": sum(int(next(iter(features[n].values())).tokens) for n in others),
    }[variant]
    return {
        "variant": variant,
        "rows": ROWS[variant],
        "row_count": count,
        "other_tasks": others,
        "samples_per_task": samples,
        "d_in": int(first.means.shape[1]) if first is not None else None,
    }


def osrm_A_for_task(
    features: Mapping[str, Mapping[str, ModuleFeatures]],
    task: str,
    rank: int,
    variant: str = DEFAULT_VARIANT,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Each module's OSRM A for `task`, from the input features of every *other* task.

    `features` maps task name → collect_input_features(...) of that task's texts. ``osrm`` (the
    authors' reading) stacks one mean row per other task, ``osrm-samples`` every other task's
    per-sample rows (both then take the null space, :func:`osrm_init`); ``osrm-cov`` sums their
    token second moments (:func:`osrm_cov_init`, needs features collected with covariance=True).
    ``osrm-random`` draws each module's basis of the null space from `seed` and the module's name
    (:func:`osrm_random_init`); `seed` is unused by the other variants.
    """
    check_variant(variant)
    others = [name for name in features if name != task]
    if not others:
        raise ValueError(f"OSRM for {task!r} needs the input features of at least one other task")
    module_names = list(features[others[0]])
    for name in others[1:]:
        if set(features[name]) != set(module_names):
            raise ValueError(f"tasks {others[0]!r} and {name!r} were collected over different modules")
    result = {}
    for module in module_names:
        per_task = [features[name][module] for name in others]
        if variant == "osrm-cov":
            if any(f.second_moment is None for f in per_task):
                raise ValueError("osrm-cov needs features collected with covariance=True")
            C = sum(f.second_moment for f in per_task) / max(sum(f.tokens for f in per_task), 1)
            result[module] = osrm_cov_init(C, rank)
        elif variant == "osrm-random":
            module_seed = zlib.crc32(f"{int(seed)}\x1f{module}".encode()) & 0x7FFFFFFF
            result[module] = osrm_random_init(other_task_rows(per_task, variant), rank, module_seed)
        else:
            result[module] = osrm_init(other_task_rows(per_task, variant), rank)
    return result


# ----------------------------------------------------------------------------------------------
# Post-hoc: re-factor a trained update onto given rows


def posthoc_projection(module: LoraModule, A_new: torch.Tensor) -> LoraModule:
    """(A_new, B', scale 1) with B'·A_new = ΔW·P, P the orthogonal projector onto A_new's row space.

    B' = ΔW·A_new⁺ = scale·B·(A·A_newᵀ)·(A_new·A_newᵀ)⁺, from the factors: for the orthonormal rows
    that OSRM produces this is scale·B·(A·A_newᵀ) and B'·A_new = ΔW·A_newᵀ·A_new. Nothing of size
    d_out × d_in is formed.
    """
    A_new = torch.as_tensor(A_new).detach().to(torch.float32)
    d_out, d_in = module.shape
    if A_new.ndim != 2 or A_new.shape[1] != d_in:
        raise ValueError(f"A_new must have shape (r, {d_in}), got {tuple(A_new.shape)}")
    A_new = A_new.to(module.A.device)
    A = module.A.to(torch.float32)
    B = module.B.to(torch.float32)
    core = (A @ A_new.T) @ torch.linalg.pinv(A_new @ A_new.T)  # (r, r_new)
    return LoraModule(A_new.clone(), (B * module.scale) @ core, 1.0)


def posthoc_adapter(adapter: Adapter, A_by_module: Mapping[str, torch.Tensor], name: str | None = None) -> Adapter:
    """An adapter whose every module is posthoc_projection'ed onto the given rows; heads are kept."""
    missing = sorted(set(adapter.modules) - set(A_by_module))
    if missing:
        raise ValueError(f"no OSRM rows for modules {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    modules = {m: posthoc_projection(module, A_by_module[m]) for m, module in adapter.modules.items()}
    meta = dict(adapter.meta)
    meta["init"] = "osrm-posthoc"
    return replace(
        adapter,
        name=name or f"{adapter.name}-osrm-posthoc",
        modules=modules,
        saved_modules=dict(adapter.saved_modules),
        path=None,
        meta=meta,
    )
