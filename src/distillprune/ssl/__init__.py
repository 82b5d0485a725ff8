"""Self-supervised learning: methods that train a model without labels (SimCLR, BYOL for images, masked
language modelling for text encoders), one file each, registered in ``SSL_METHODS``; the ``ssl`` block of a
training stage (``SSLConfig``) and the objective the trainer runs (``SSLObjective``). Self-supervised
*distillation* (SEED) is a distillation loss (``distill.losses.seed``); evaluation without a classifier
(kNN, linear probe) is ``measure.probe``."""

from distillprune.ssl.base import SSL_METHODS, SSLMethod
from distillprune.ssl.config import SSLConfig, SSLOptions
from distillprune.ssl.objective import SSLObjective

__all__ = ["SSL_METHODS", "SSLConfig", "SSLMethod", "SSLObjective", "SSLOptions"]
