"""Great Expectations gates for interactions, items, users, new items and training examples.

    from mfli.validation import RunScope, ValidationFailed, validate
    validate(df, "interactions", run_dir, RunScope(window=w, previous_count=n))   # raises on failure

Suites live in :mod:`mfli.validation.suites`, the runner in :mod:`mfli.validation.runner`. Great
Expectations itself is imported on the first validation, not by this package.
"""

from mfli.validation.runner import Failure, ValidationFailed, ValidationReport, validate
from mfli.validation.suites import RunScope, ValidationConfig

__all__ = ["Failure", "RunScope", "ValidationConfig", "ValidationFailed", "ValidationReport", "validate"]
