"""The one error type for bad user input; the CLI turns it into one line and exit code 2."""


class DistillpruneError(Exception):
    """Bad input or an unusable state the user can fix (recipe, files, shapes, checkpoints, NaN loss)."""


class RecipeError(DistillpruneError):
    """A recipe that does not validate: unknown keys, wrong types, out-of-range values."""


class CheckpointError(DistillpruneError):
    """A checkpoint that is missing, corrupt, or does not match the model it should rebuild."""


class DataError(DistillpruneError):
    """A data source that is missing, empty, or whose shapes do not fit the model."""


class TrainingDiverged(DistillpruneError):
    """The loss became NaN or infinite."""


class QuantizationError(DistillpruneError):
    """Quantization cannot proceed: empty calibration set, an unsupported operator, failed parity."""


class CompressionError(DistillpruneError):
    """Low-rank factorization or weight clustering cannot proceed (unsupported layer, bad packed file)."""


class ExportError(DistillpruneError):
    """A model that cannot be exported to ONNX, or an ONNX file that ONNX Runtime cannot load or run."""


def printable(text: object) -> str:
    """``text`` with every character a terminal would act on (ESC, BEL, CR, bidi overrides...) written as its
    Python escape (``\\x1b``): text from files (a lock's contents, folder names, keys) may be printed in a
    message, never obeyed by the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
