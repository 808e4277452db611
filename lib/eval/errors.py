"""The evaluation's generation errors (lib.eval.generation and lib.eval.merge raise them)."""


class GenerationError(RuntimeError):
    """Generation that cannot run as asked; one line naming the model, adapter or value."""


class MergeMismatch(GenerationError):
    """A merged model whose log-probs differ from its base + adapter's by more than the tolerance (`check_merge`)."""
