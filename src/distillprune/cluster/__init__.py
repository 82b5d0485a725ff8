"""Weight clustering (Deep Compression weight sharing): k-means per layer, packed and entropy-coded."""

from distillprune.cluster.config import ClusterConfig
from distillprune.cluster.kmeans import ClusterOp, ClusterReport, WeightClustering, cluster_, kmeans_1d
from distillprune.cluster.pack import load_packed, pack, save_packed, sizes, unpack

__all__ = [
    "ClusterConfig",
    "ClusterOp",
    "ClusterReport",
    "WeightClustering",
    "cluster_",
    "kmeans_1d",
    "load_packed",
    "pack",
    "save_packed",
    "sizes",
    "unpack",
]
