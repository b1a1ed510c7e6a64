"""Sentences and ≤ 15-word headlines about the seed study (merging.analysis.seed_study) and where OSRM's
effect comes from (merging.analysis.osrm_effect), written from the stored measurements alone.

Same rules as merging/analysis/narrative.py: a difference over seeds is *claimed* only when its 95 %
interval excludes 0 (it "survives"); otherwise it is said to be unclear, whatever its sign; a
correlation predicts only when its interval excludes 0 and it points the stated way.
"""

from __future__ import annotations

from collections.abc import Mapping

from merging.analysis.narrative import MINUS, percent
from merging.analysis.narrative import points as _signed_points
from merging.analysis.seed_study import best_predictor

MEASURE_WORDS = {
    "feature_shift": "how far the other adapters move a task's inputs",
    "input_overlap": "input-subspace overlap",
    "abs_cosine": "task-vector cosine",
}
SHORT_MEASURE = {"feature_shift": "input disturbance", "input_overlap": "subspace overlap", "abs_cosine": "task-vector cosine"}
COLUMN_WORDS = {"single": "alone", "ta_1": "task arithmetic λ = 1", "ta_05": "task arithmetic λ = 0.5", "ties": "TIES"}
BASELINE_WORDS = {"standard": "standard LoRA (PEFT's default init)", "gaussian": "gaussian LoRA (the OSRM authors' baseline)"}
MERGE_COLUMNS = ("ta_1", "ta_05", "ties")


def points(change: float) -> str:
    """Percentage points with their sign; a change that rounds to zero reads "0.0 pp", never "−0.0"."""
    return "0.0 pp" if round(100 * change, 1) == 0 else _signed_points(change)


def _number(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}".replace("-", MINUS)


def _interval(low: float | None, high: float | None, as_points: bool = False) -> str:
    if low is None or high is None or low != low or high != high:
        return "no interval (one seed)"
    if as_points:
        return f"95 % interval {points(low)} to {points(high)}"
    return f"95 % interval {_number(low)} to {_number(high)}"


def _verdict(difference: Mapping) -> str:
    if not difference["survives"]:
        return "unclear"
    return "OSRM better" if difference["mean"] > 0 else "OSRM worse"


# ----------------------------------------------------------------------------------------------
# Why: which measure predicts each task's loss


def takeaway_why(summary: Mapping) -> str:
    why = summary.get("why") or {}
    measures = [(m, c) for m, c in why.items() if m != "points" and isinstance(c, Mapping)]
    if not measures:
        return "No seed study was measured, so nothing here says why tasks lose in a merge."
    parts = []
    for measure, c in measures:
        if c.get("r") is None or c["r"] != c["r"]:
            parts.append(f"{MEASURE_WORDS.get(measure, measure)}: no spread, no correlation")
        else:
            parts.append(f"{MEASURE_WORDS.get(measure, measure)}: r = {_number(c['r'])} ({_interval(c['low'], c['high'])})")
    n = measures[0][1].get("n")
    best = best_predictor(summary)
    if best is None:
        return (f"Over {n} task-in-merge points (every seed and kind, task arithmetic λ = 1), no measure predicts "
                "which task loses accuracy — " + "; ".join(parts) + ". Read the interference charts as "
                "descriptions of the adapters, not as the cause of this zoo's losses.")  # fmt: skip
    measure, c = best
    return (f"Over {n} task-in-merge points (every seed and kind, task arithmetic λ = 1), "
            f"{MEASURE_WORDS.get(measure, measure)} predicts the loss best: the more of it, the more accuracy a task "
            f"loses. All measures: " + "; ".join(parts) + ".")  # fmt: skip


def headline_why(summary: Mapping) -> str:
    best = best_predictor(summary)
    if best is None:
        measured = [c["r"] for m, c in (summary.get("why") or {}).items()
                    if m != "points" and isinstance(c, Mapping) and c.get("r") is not None and c["r"] == c["r"]]  # fmt: skip
        strongest = max(measured, key=abs) if measured else None
        if strongest is None:
            return "No measured interference predicts which task loses accuracy"
        return f"No measure predicts which task loses: strongest r = {_number(strongest)}"
    measure, c = best
    return f"More {SHORT_MEASURE.get(measure, measure)}, more loss: r = {_number(c['r'])}"


# ----------------------------------------------------------------------------------------------
# Over training seeds: OSRM against both baselines


def takeaway_seeds(summary: Mapping) -> str:
    differences = summary.get("differences") or {}
    if not differences:
        return "No seed study was measured: OSRM's effect over training seeds is unknown."
    seeds = summary.get("seeds")
    sentences = []
    for baseline in ("standard", "gaussian"):
        parts = []
        for column in ("single", *MERGE_COLUMNS):
            d = differences.get(f"osrm-{baseline}:{column}")
            if d is None:
                continue
            parts.append(f"{COLUMN_WORDS[column]} {points(d['mean'])} ({_interval(d['low'], d['high'], True)}, {_verdict(d)})")
        if parts:
            n = differences.get(f"osrm-{baseline}:ta_1", {}).get("n", seeds)
            sentences.append(f"OSRM minus {BASELINE_WORDS[baseline]}, paired over {n} seeds: " + "; ".join(parts) + ".")
    return " ".join(sentences) + " A difference is claimed only when its interval excludes zero."


def headline_seeds(summary: Mapping) -> str:
    differences = summary.get("differences") or {}
    merges = [d for key, d in differences.items() if key.split(":")[1] in MERGE_COLUMNS]
    if not merges:
        return "No seed study: OSRM's effect over seeds is unknown"
    better = sum(1 for d in merges if d["survives"] and d["mean"] > 0)
    worse = sum(1 for d in merges if d["survives"] and d["mean"] < 0)
    seeds = max(d["n"] for d in merges)
    return f"Over {seeds} seeds, OSRM's merges: {better} better, {worse} worse, {len(merges) - better - worse} unclear"


# ----------------------------------------------------------------------------------------------
# Where OSRM's effect comes from


def takeaway_mechanism(ablations: Mapping) -> str:
    kinds = ablations.get("kinds") or {}
    if "osrm" not in kinds:
        return "No OSRM adapters were measured, so where its effect comes from is not shown."
    random_share = ablations.get("random_reference")
    o = kinds["osrm"]
    text = (f"OSRM's A starts reading {percent(o['energy_share_init'])} of the other tasks' mean input energy "
            f"(a random subspace: {percent(random_share)}) and reads {percent(o['energy_share_trained'])} after training; "
            f"the tasks' OSRM subspaces overlap {percent(o['overlap_init'])} at initialisation and "
            f"{percent(o['overlap_trained'])} after training (random: {percent(random_share)}).")  # fmt: skip
    others = []
    for kind, words in (("standard", "standard LoRA"), ("gaussian", "gaussian LoRA"),
                        ("osrm-random", "OSRM with a random null-space basis"), ("standard-scaled", "the scale control"),
                        ("osrm-frozen", "OSRM with A frozen")):  # fmt: skip
        k = kinds.get(kind)
        if k:
            others.append(f"{words}: reads {percent(k['energy_share_trained'])}, overlap {percent(k['overlap_trained'])} after training")
    if others:
        text += " For comparison — " + "; ".join(others) + "."
    if o["overlap_init"] is not None and random_share and o["overlap_init"] > 10 * random_share:
        text += (" OSRM's tasks share one subspace: their mean inputs are nearly parallel, so the null space "
                 "is the same for every task and the SVD returns the same directions — the random-basis "
                 "ablation separates that from the constraint itself.")  # fmt: skip
    return text


def headline_mechanism(ablations: Mapping) -> str:
    kinds = ablations.get("kinds") or {}
    o = kinds.get("osrm")
    if not o:
        return "No OSRM adapters measured"
    return (f"OSRM's A starts blind to other tasks ({percent(o['energy_share_init'])}); "
            f"after training it reads {percent(o['energy_share_trained'])}")


# ----------------------------------------------------------------------------------------------
# DO-Merging's magnitude-variance claims


def takeaway_magnitude(full_finetune: Mapping | None, claims: Mapping) -> str:
    """Claims (b) LoRA's magnitude variance exceeds full fine-tuning's and (c) it goes with worse merges."""
    parts = []
    if full_finetune:
        lora = full_finetune.get("lora") or {}
        above = [k for k, v in lora.items() if v > full_finetune["full_finetune"]]
        values = ", ".join(f"{k} {v:.2f}" for k, v in lora.items())
        verdict = ("agrees with claim (b)" if len(above) == len(lora) and lora else
                   "disagrees with claim (b)" if not above else "agrees for some kinds only")  # fmt: skip
        parts.append(f"Magnitude variance across tasks: full fine-tuning {full_finetune['full_finetune']:.2f}, "
                     f"LoRA {values} — this zoo {verdict}.")  # fmt: skip
    else:
        parts.append("No full fine-tuning was measured, so claim (b) is not tested here.")
    correlation = claims.get("correlation")
    if correlation and correlation.get("r") == correlation.get("r") and correlation.get("r") is not None:
        r = correlation["r"]
        verdict = ("agrees with claim (c)" if correlation["survives"] and r < 0 else
                   "contradicts claim (c)" if correlation["survives"] else "is no evidence for or against claim (c)")  # fmt: skip
        seeds = len({p.get("seed") for p in claims.get("points") or []}) or 1
        parts.append(f"Over {correlation['n']} adapter pairs ({seeds} training seed{'s' if seeds != 1 else ''}, "
                     "each pair merged alone by task arithmetic λ = 1), magnitude variance against merged accuracy: "
                     f"r = {_number(r)} ({_interval(correlation['low'], correlation['high'])}) — {verdict}.")  # fmt: skip
    return " ".join(parts)
