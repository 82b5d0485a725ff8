"""Self-supervised methods: one file each, registered in SSL_METHODS. Importing this package registers them."""

from distillprune.ssl.methods import byol, mlm, simclr  # noqa: F401
