"""``report.json`` of ``membership``, for both attacks: identities and samples.

The contract: ``summary`` holds ``auc``, ``auc_ci95`` and ``tpr_at_fpr``
(keys ``"0.01"`` and ``"0.001"``), null without ``--members``; ``identities``
(or ``samples`` for the loss attack) lists every query as
``{"identity"|"sample": name, "score": s, "p_value": p or null, "member":
true/false/null}``, highest score first, with extra keys after those.
"""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from typing import Any

import numpy as np

from trainleak.audits.membership_scores import FPRS, IdentityScores, evaluate
from trainleak.audits.sampling import GeneratedSet
from trainleak.config import MembershipConfig
from trainleak.embedding import EmbeddingSet
from trainleak.images import SkipRecord
from trainleak.records import report_header

#: Below this p-value a query is counted in ``n_p_below`` (uncorrected).
ALPHA = 0.05

#: Identities the page shows with their photos and closest generated samples;
#: the audit keeps those samples' images for exactly these.
SHOWN_IDENTITIES = 10
#: Photos and closest generated samples shown per identity.
SHOWN_SAMPLES = 4

SCORE_NOTES = {
    "max": (
        "identity score = highest similarity of a generated sample to any of the person's photos"
    ),
    "topm": (
        "identity score = mean over the {m} generated samples most similar to the person of "
        "their best similarity to the person's photos"
    ),
    "loss": (
        "sample score = mean over timesteps of the reference z-score of -log(denoising loss): "
        "higher = lower loss than reference non-members = more likely a member"
    ),
    "loss-raw": "sample score = -mean over timesteps of log(denoising loss) (no reference given)",
}


def header(command_mode: str, settings: Any, argv: list[str]) -> dict[str, Any]:
    """Return the keys every membership report starts with (``mode``: identity or loss)."""
    plain = (
        asdict(settings) if is_dataclass(settings) and not isinstance(settings, type) else settings
    )
    head = report_header("membership", argv, plain)
    head["mode"] = command_mode
    return head


def summary_block(
    scores: np.ndarray,
    member: list[bool | None],
    p_values: np.ndarray | None,
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """Return the evaluation metrics (null without ground truth) and p-value counts."""
    out: dict[str, Any] = {
        "auc": None,
        "auc_ci95": None,
        "tpr_at_fpr": {k: None for k in FPRS},
        "tpr_at_fpr_ci95": {k: None for k in FPRS},
        "n_members": None,
        "n_nonmembers": None,
        "roc": None,
    }
    if member and all(m is not None for m in member):
        out.update(evaluate(scores, np.array(member, bool), n_boot=n_boot, seed=seed))
    out["n_queries"] = int(len(scores))
    out["n_p_below_0.05"] = None if p_values is None else int(np.sum(p_values < ALPHA))
    return out


def member_flags(names: list[str], members: set[str] | None) -> tuple[list[bool | None], list[str]]:
    """Ground truth per query name, and the member names that match no query."""
    if members is None:
        return [None] * len(names), []
    return [n in members for n in names], sorted(members - set(names))


def build_identity_report(
    config: MembershipConfig,
    scores: IdentityScores,
    p_values: np.ndarray | None,
    members: set[str] | None,
    query_set: EmbeddingSet,
    ref: tuple[dict[str, np.ndarray], EmbeddingSet, list[SkipRecord]] | None,
    bad: list[SkipRecord],
    gen: GeneratedSet,
    generated: str,
    sample_ids: list[str],
    argv: list[str],
) -> dict[str, Any]:
    """Assemble the identity-membership ``report.json``."""
    headline = scores.headline(config.score)
    flags, unmatched = member_flags(scores.names, members)
    summary = summary_block(headline, flags, p_values, config.n_boot, config.seed)
    summary["score"] = config.score
    summary["score_note"] = SCORE_NOTES[config.score].format(m=config.top_m)
    summary["members_unmatched"] = unmatched
    summary["identities_skipped"] = [s.path for s in bad]
    summary["p_value_floor"] = None if ref is None else 1.0 / (len(ref[0]) + 1)
    summary["p_value_note"] = (
        "p = (1 + reference people scoring at least as high) / (1 + reference people); "
        "n reference people cannot give p below 1/(n+1): use 20+ to reach p < 0.05"
    )
    if flags and all(f is not None for f in flags):
        other = scores.topm if config.score == "max" else scores.max
        other_name = "max" if config.score == "topm" else "topm"
        pos = np.array(flags, bool)
        summary[f"auc_{other_name}"] = evaluate(other, pos, n_boot=1, seed=config.seed)["auc"]
    rows: list[dict[str, Any]] = []
    for i, name in enumerate(scores.names):
        nearest = [
            {"sample": sample_ids[int(j)], "similarity": float(s)}
            for j, s in zip(scores.nearest[i], scores.nearest_sim[i], strict=True)
            if j >= 0
        ]
        rows.append(
            {
                "identity": name,
                "score": float(headline[i]),
                "p_value": None if p_values is None else float(p_values[i]),
                "member": flags[i],
                "score_max": float(scores.max[i]),
                "score_topm": float(scores.topm[i]),
                "photos": int(sum(1 for lab in query_set.labels if lab == name)),
                "nearest": nearest,
            }
        )
    rows.sort(key=lambda r: (-r["score"], r["identity"]))
    ref_set = ref[1] if ref is not None else None
    skipped = [s.to_dict() for s in bad + query_set.skipped]
    if ref is not None:
        skipped += [s.to_dict() for s in ref[2] + ref[1].skipped]
    skipped += [s.to_dict() for s in gen.skipped]
    report = header("identity", config, argv)
    report.update(
        {
            "encoder": query_set.info.to_dict(),
            "generator": {
                "source": generated,
                "streamed": gen.fingerprint != "",
                "fingerprint": gen.fingerprint or None,
                "n_samples": int(len(gen.indices) + len(gen.skipped)),
                "embedded": int(len(gen.indices)),
                "skipped": len(gen.skipped),
                "generated_this_run": gen.generated,
                "seed": config.seed,
            },
            "inputs": {
                "identities": {**query_set.counts(), "identities": len(scores.names)},
                "reference": None
                if ref is None or ref_set is None
                else {**ref_set.counts(), "identities": len(ref[0])},
            },
            "summary": summary,
            "identities": rows,
            "skipped": skipped,
        }
    )
    return report
