"""``extract``: training images a generator regurgitates (Carlini et al. 2023).

Generate-and-filter: for each prompt (group), many generations; a memorised
training image comes back again and again, so its generations form a clique
of near-identical images under the tiled l2 distance. Each clique's
representative is then compared with the training set.

From the paper: 500 generations per prompt, cliques of at least 10, delta =
0.15 on [0, 1] pixels with the tiled l2 distance, and for small images the
relative criterion ``d(x, nearest) / mean(d(x, 50 nearest)) < alpha = 0.5``.
Ours: cliques are found greedily (:func:`~trainleak.audits.graph.greedy_cliques`;
each reported set is a true clique), the representative is the clique's
medoid (highest mean similarity to the other members), and a clique is
extracted when the representative is within delta of a training image (or
passes the relative test with ``relative``); ``train_match`` is then its
nearest training image, else null (``nearest_train`` always names it). The
tiled distance is the paper's: raw pixels, no smoothing, not mirror-blind
(``PAPER_TILED``; the ``tiled`` encoder's own defaults differ, see
:mod:`trainleak.encoders.pixel`). Distances are read back from scores
(:func:`~trainleak.block_search.score_to_distance`): for ``tiled`` the tiled
l2 itself (its score is ``1 / (1 + d)``), for cosine encoders ``1 - cos``.

With ``--encoder copy`` (verified local-feature matches, robust to crops,
rotations and recolouring) the distance is ``1 - score``, the score
``inliers / (inliers + 10)`` (``score_scale`` 10): the paper's delta 0.15
then asks for at least 57 verified inliers between two generations
(regurgitations of one photo as JPEG q30, recoloured, grey, an 80% crop,
mirrored or captioned share 107 to 234 in our tests; a blurred or 0.3x
version only 30 to 60, not near-identical at this delta); a looser
``--delta``, up to 1 minus the encoder's default operating point, asks only
for a copy. Its near-identity
graph verifies only the pairs its descriptor votes put forward
(:meth:`~trainleak.local_search.LocalSimilarity.near_graph`); confirmation
against training is its verified search.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainleak.audits.graph import greedy_cliques, medoid
from trainleak.audits.inputs import embed_nonempty, make_embedder
from trainleak.block_search import score_at_distance, score_to_distance
from trainleak.config import PAPER_TILED as PAPER_TILED  # re-exported: it lived here
from trainleak.config import ExtractConfig as ExtractConfig  # re-exported: it lived here
from trainleak.embedding import EmbeddingSet
from trainleak.images import list_records
from trainleak.records import report_header
from trainleak.result import Result
from trainleak.similarity import Similarity


@dataclass
class Candidate:
    """One clique of near-identical generations and its training match."""

    group: str
    clique_size: int
    representative: str
    members: list[str]
    train_match: str | None
    nearest_train: str
    distance: float
    relative_distance: float | None
    extracted: bool


#: Rows of the similarity matrix scored at a time by :func:`near_graph`.
GRAPH_BLOCK = 1024


def near_graph(vectors: np.ndarray, min_score: float, similarity: Similarity) -> np.ndarray:
    """Boolean ``(n, n)`` graph of pairs scoring above ``min_score``.

    Scores are computed ``GRAPH_BLOCK`` rows at a time, so memory is the
    ``n^2`` booleans plus one ``GRAPH_BLOCK x n`` float block, never the full
    float matrix. The ``copy`` encoder's rule verifies only the pairs that
    share descriptors (:meth:`trainleak.local_search.LocalSimilarity.near_graph`),
    not all ``n^2`` at milliseconds each.

    Example:
        >>> near_graph(np.eye(3, dtype=np.float32), 0.5, Similarity("cosine")).sum()
        np.int64(3)

    """
    return similarity.near_graph(vectors, min_score, GRAPH_BLOCK)


def distance_name(metric: str) -> str:
    """Name the distance that ``delta`` bounds under an encoder's metric (for the report).

    Example:
        >>> distance_name("tiled_l2"), distance_name("local")
        ('tiled-l2 distance', 'copy distance (1 - verified-match score)')

    """
    names = {
        "tiled_l2": "tiled-l2 distance",
        "cosine": "cosine distance (1 - cosine)",
        "local": "copy distance (1 - verified-match score)",
    }
    return names.get(metric, f"{metric} distance")


def find_candidates(
    group: str, gen: EmbeddingSet, train: EmbeddingSet, config: ExtractConfig
) -> list[Candidate]:
    """Cliques among one group's generations, each confirmed against training."""
    sim = Similarity.of(gen.info)
    metric = gen.info.metric
    adjacency = near_graph(gen.vectors, score_at_distance(config.delta, metric), sim)
    out = []
    for clique in greedy_cliques(adjacency, config.min_clique):
        inside = gen.vectors[clique]
        rep = clique[medoid(sim.pairwise(inside, inside))]
        n_near = max(1, min(config.relative_n, len(train)))
        sims, idx = sim.knn(gen.vectors[[rep]], train.vectors, n_near)
        dists = np.asarray(score_to_distance(sims[0], metric))
        d1 = float(dists[0])
        rel = d1 / float(dists.mean()) if dists.mean() > 0 else 0.0
        hit = rel < config.alpha if config.relative else d1 < config.delta
        out.append(
            Candidate(
                group=group,
                clique_size=len(clique),
                representative=gen.ids[rep],
                members=[gen.ids[i] for i in clique],
                train_match=train.ids[int(idx[0, 0])] if hit else None,
                nearest_train=train.ids[int(idx[0, 0])],
                distance=d1,
                relative_distance=rel,
                extracted=bool(hit),
            )
        )
    return out


def generation_groups(generated: str | os.PathLike[str]) -> dict[str, Path]:
    """Split generations into groups: sub-folders each, or the folder as one group."""
    root = Path(generated)
    if not root.is_dir():
        return {root.name: root}
    subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    # The prompt texts and the manifest beside generated groups are not generations.
    direct = [
        p
        for p in root.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix not in (".txt", ".json")
    ]
    if subs and not direct:
        return {p.name: p for p in subs}
    return {root.name: root}


def extract(
    generated: str | os.PathLike[str],
    train: str | os.PathLike[str],
    *,
    config: ExtractConfig | None = None,
    argv: list[str] | None = None,
) -> ExtractResult:
    """Find cliques of near-identical generations and the training images they copy.

    Args:
        generated: a folder of generated images (sub-folders = one group per
            prompt), e.g. written by :func:`trainleak.generators.materialise`.
        train: the training images.
        config: settings.
        argv: the command line, recorded in the report.

    """
    config = config or ExtractConfig()
    groups = generation_groups(generated)
    candidates: list[Candidate] = []
    group_rows = []
    skipped = []
    with make_embedder(config.embed) as embedder:
        train_set = embed_nonempty(embedder, train, "train")
        skipped.extend(train_set.skipped)
        for name, folder in groups.items():
            if not list_records(folder):
                continue
            gen = embedder.embed(folder, f"generated/{name}")
            skipped.extend(gen.skipped)
            found = find_candidates(name, gen, train_set, config) if len(gen) else []
            candidates.extend(found)
            group_rows.append(
                {
                    "group": name,
                    "generations": len(gen),
                    "cliques": len(found),
                    "extracted": sum(c.extracted for c in found),
                }
            )
    extracted = sorted({c.train_match for c in candidates if c.extracted and c.train_match})
    report = {
        **report_header("extract", argv, config.to_dict()),
        "encoder": train_set.info.to_dict(),
        "inputs": {
            "train": train_set.counts(),
            "generated": {"root": os.fspath(generated), "groups": len(group_rows)},
        },
        "summary": {
            "extracted": extracted,
            "n_extracted": len(extracted),
            "candidates": len(candidates),
            "groups": group_rows,
            "criterion": (
                f"relative: d / mean(d to {config.relative_n} nearest) < {config.alpha}"
                if config.relative
                else f"{distance_name(train_set.info.metric)} to the nearest training image "
                f"< delta = {config.delta}"
            ),
        },
        "candidates": [
            {
                "group": c.group,
                "clique_size": c.clique_size,
                "representative": c.representative,
                "train_match": c.train_match,
                "nearest_train": c.nearest_train,
                "distance": c.distance,
                "relative_distance": c.relative_distance,
                "extracted": c.extracted,
                "members": c.members,
            }
            for c in candidates
        ],
        "skipped": [s.to_dict() for s in skipped],
    }
    return ExtractResult(report, train_set)


class ExtractResult(Result):
    """What :func:`extract` found."""

    def __init__(self, report: dict[str, Any], train: EmbeddingSet) -> None:
        super().__init__(report)
        self.train = train

    @property
    def verdict(self) -> str:
        """E.g. ``3 cliques of near-identical generations; 2 training images extracted``."""
        s = self.report["summary"]
        return (
            f"{s['candidates']} cliques of near-identical generations; "
            f"{s['n_extracted']} training images extracted"
        )

    @property
    def extracted(self) -> list[str]:
        """Training images extracted (paths as found under the training root)."""
        return list(self.report["summary"]["extracted"])
