"""Merge methods over per-module LoRA updates ΔWᵢ = sᵢ·Bᵢ·Aᵢ, and the registry that lists them.

    registry.py        Param, Method, MethodArgs, Rule, REGISTRY, get_method: a method carries its
                       schema (ranges, search bounds, rules across parameters), paper link, mergekit
                       mapping and implementations; merge.py dispatches on what a method has
    catalogue.py       the registered methods, one line each
    task_arithmetic.py generalized task arithmetic: a sparsifier × a consensus rule (mergekit's GTA)
    sparsify.py        none / magnitude / random (DARE), dense and streamed by rows
    breadcrumbs.py     Model Breadcrumbs' magnitude band (mergekit's magnitude_outliers)
    della.py           DELLA's MAGPRUNE (magnitude-ranked random drop, rescaled) and its rule
    table.py           the methods table and JSON (`mergescope methods`), from the registry
    cut.py             the k largest magnitudes without sorting (TIES' trim)
    consensus.py       TIES' sign election and disjoint mean
    factored.py        the B·A form, and task arithmetic's exact concatenation
    svd.py             SVDs from the factors or of a dense update, truncated or exact
    knots.py           KnOTS (one SVD aligns the updates, merge the aligned blocks)
    tsv.py             TSV-Merge (task singular vectors, decorrelated by orthogonal Procrustes)
    peft_naive.py      PEFT's separate A/B combination

The functions take float32 tensors or factors and return tensors; merge.py streams the modules of
real adapters through them.
"""

from merging.methods import catalogue as _catalogue  # noqa: F401  (fills REGISTRY)
from merging.methods.consensus import DIVIDE_RULES, SIGN_RULES, combine_weighted, disjoint_mean, elect_sign
from merging.methods.cut import MagnitudeCut, apply_cut, magnitude_cut
from merging.methods.factored import Factored, concatenate
from merging.methods.registry import NO_MERGEKIT, REGISTRY, Mergekit, Method, MethodArgs, MethodError, Param, get_method
from merging.methods.sparsify import DENSITY, Sparsifier, keep_random, keep_top_magnitude
from merging.methods.svd import numerical_rank, svd_of_dense, svd_of_factors, truncated_svd
from merging.methods.task_arithmetic import combine, combine_factors, family

__all__ = [
    "DENSITY", "DIVIDE_RULES", "NO_MERGEKIT", "REGISTRY", "SIGN_RULES", "Factored", "MagnitudeCut", "Mergekit", "Method", "MethodArgs",
    "MethodError", "Param", "Sparsifier", "apply_cut", "combine", "combine_factors", "combine_weighted",
    "concatenate", "disjoint_mean", "elect_sign", "family", "get_method", "keep_random", "keep_top_magnitude",
    "magnitude_cut", "numerical_rank", "svd_of_dense", "svd_of_factors", "truncated_svd",
]
