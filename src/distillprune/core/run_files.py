"""The names a run folder holds: the pipeline writes them (``pipeline.rundir``), the report pages and the
compare page must not overwrite them (``report.compare``)."""

MARKER = "run.json"
STATE = "state.json"
LOCK = "run.lock"
#: what a run writes besides the recipe's named output files (cleared when a never-completed run starts over)
RUN_FILES = ("stages", "teacher", "tb", "metrics.jsonl", "report.json", "report.md", "report.html", STATE, "error.log")
#: names a recipe's output ``filename`` may not take: the run's own files
RESERVED = frozenset(RUN_FILES) | {MARKER, LOCK, "run.log", "baseline.onnx"}
