"""Quality of an embedder against its teacher: how close the embeddings are and whether retrieval agrees.

* mean cosine: the average cosine similarity between the student's and the teacher's embedding of each
  held-out text;
* top-k overlap: for each text, its k nearest neighbours among the other held-out texts (cosine) under
  the teacher and under the student; the share they have in common, averaged (1.0: every search returns
  the same k results, in any order).
"""

from __future__ import annotations

import numpy as np

from distillprune.export.onnx import mean_cosine


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def topk_overlap(student: np.ndarray, teacher: np.ndarray, k: int = 10) -> float:
    n = len(teacher)
    k = min(k, n - 1)
    if k < 1:
        return 1.0

    def neighbours(e: np.ndarray) -> np.ndarray:
        u = _unit(e)
        sim = u @ u.T
        np.fill_diagonal(sim, -np.inf)
        return np.argpartition(-sim, k - 1, axis=1)[:, :k]

    ns, nt = neighbours(student), neighbours(teacher)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ns, nt, strict=True)]))


def embedding_quality(student: np.ndarray, teacher: np.ndarray, k: int = 10) -> dict[str, float]:
    """{"cosine": mean cosine to the teacher, "top10_overlap": share of common top-k neighbours}; the cosine
    only when the two embeddings have one width (a student of another width is compared by neighbours)."""
    out = {"cosine": round(mean_cosine(student, teacher), 5)} if student.shape == teacher.shape else {}
    return {**out, f"top{k}_overlap": round(topk_overlap(student, teacher, k), 4)}
