"""The project's exception types: each message names the file, key or value and the fix."""


class PipelineError(Exception):
    """A problem the user can fix; `python -m pipeline` prints it without a traceback."""


class ConfigError(PipelineError):
    """The composed configuration is invalid (unknown key, wrong type, impossible value)."""


class DataError(PipelineError):
    """The dataset cannot be used as configured."""


class GuardrailError(PipelineError):
    """A configuration that breaks one of the guide's rules (e.g. hue jitter on thermal)."""


class MissingDependencyError(PipelineError):
    """A stage needs something this machine does not have (TensorRT, CUDA, a prior stage's output)."""
