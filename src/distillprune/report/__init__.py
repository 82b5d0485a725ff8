"""Reports: data objects with separate rendering."""

from distillprune.report.render import print_table, render_markdown, write_markdown
from distillprune.report.report import CompressionReport, StageResult, environment

__all__ = ["CompressionReport", "StageResult", "environment", "write_markdown", "print_table", "render_markdown"]
