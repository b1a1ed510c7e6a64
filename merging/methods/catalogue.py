"""The registered methods, in the order the dashboard lists them: one line each.

A sparsifier × consensus variant is one `family(...)` line (with mergekit's name for it, or why it
has none); any other method is a `Method` built in its own file and named here.
"""

from __future__ import annotations

from merging.methods import della
from merging.methods.breadcrumbs import MAGNITUDE_BAND
from merging.methods.knots import KNOTS
from merging.methods.peft_naive import PEFT_NAIVE
from merging.methods.registry import register
from merging.methods.sparsify import MAGNITUDE, NONE, RANDOM
from merging.methods.task_arithmetic import family
from merging.methods.tsv import TSV

register(
    family("task_arithmetic", "Task arithmetic", "Σ λᵢ ΔWᵢ.", NONE, mergekit="task_arithmetic", paper="https://arxiv.org/abs/2212.04089"),
    family("ties", "TIES", "Keep each update's top-density entries by |x|, elect a sign per entry, average the agreeing ones.", MAGNITUDE, consensus=True,
           mergekit="ties", mergekit_normalize=True, paper="https://arxiv.org/abs/2306.01708"),
    family("dare_linear", "DARE (linear)", "Keep each entry with probability density, rescale by 1/density, then Σ λᵢ ΔWᵢ.", RANDOM, mergekit="dare_linear", paper="https://arxiv.org/abs/2311.03099"),
    family("dare_ties", "DARE-TIES", "DARE's random drop and rescale, then TIES' sign election and disjoint mean.", RANDOM, consensus=True,
           mergekit="dare_ties", paper="https://arxiv.org/abs/2311.03099"),
    family("magnitude_prune", "Magnitude prune", "Keep each update's top-density entries by |x|, then Σ λᵢ ΔWᵢ.", MAGNITUDE,
           mergekit_refusal="mergekit has no magnitude pruning without TIES' sign consensus (its 'ties' adds the consensus)", paper="https://arxiv.org/abs/2306.01708"),
    family("breadcrumbs", "Model Breadcrumbs", "Drop each update's largest gamma and smallest entries by |x|, keep the density between, then Σ λᵢ ΔWᵢ.", MAGNITUDE_BAND,
           mergekit="breadcrumbs", paper="https://arxiv.org/abs/2312.06795"),
    family("breadcrumbs_ties", "Breadcrumbs-TIES", "Model Breadcrumbs' band, then TIES' sign election and disjoint mean.", MAGNITUDE_BAND, consensus=True,
           mergekit="breadcrumbs_ties", paper="https://arxiv.org/abs/2312.06795"),
    family("della", "DELLA", "Drop each entry at random, keeping larger |x| more often (density ± epsilon by rank in its row), rescale, then TIES' sign election and disjoint mean.", della.MAGPRUNE, consensus=True, mergekit="della", mergekit_normalize=True, paper=della.PAPER, rules=della.RULES),
    family("della_linear", "DELLA (linear)", "DELLA's magnitude-ranked random drop and rescale, then Σ λᵢ ΔWᵢ.", della.MAGPRUNE, mergekit="della_linear", paper=della.PAPER, rules=della.RULES),
    KNOTS,
    TSV,
    PEFT_NAIVE,
)
