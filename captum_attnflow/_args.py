"""Captum's ``additional_forward_args``, normalised once for the whole package."""

from typing import Any, Tuple


def format_forward_args(additional_forward_args: Any) -> Tuple[Any, ...]:
    """Captum's ``additional_forward_args`` as a tuple: ``None`` is ``()``, a single value a 1-tuple.

    Captum accepts a lone value or a tuple and passes the values positionally after the
    inputs; every caller here unpacks the result into ``forward_func(inputs, *args)``.

    Example:
        >>> format_forward_args(None), format_forward_args(3), format_forward_args((1, 2))
        ((), (3,), (1, 2))
    """
    if additional_forward_args is None:
        return ()
    if isinstance(additional_forward_args, tuple):
        return additional_forward_args
    return (additional_forward_args,)
