"""The checks every public entry point makes on its arguments: a wrong type or value is refused with its name,
before any work, rather than guessed at or failing deep inside NumPy."""

import numbers

import numpy as np

DTYPES = {"float32": np.float32, "float64": np.float64}
TRUNCATIONS = ("warn", "ignore", "error")


def as_text_list(texts):
    """(list of str, was a single str). Rejects anything else with the index and type of the first bad item."""
    if isinstance(texts, str):
        return [texts], True
    if isinstance(texts, (bytes, bytearray)):
        raise TypeError("texts must be a str or a list of str, got bytes; decode it first (e.g. b.decode('utf-8'))")
    try:
        texts = list(texts)
    except TypeError:
        raise TypeError(f"texts must be a str or a list of str, got {type(texts).__name__}") from None
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str")
    return texts, False


def integer(value):
    """value as an int if it is an integer (a NumPy one too), else None: a bool is not one, nor is 2.0."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def check_positive_int(name, value):
    number = integer(value)
    if number is None or number < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return number


def dtype_name(dtype):
    """"float32" or "float64" for those names and for NumPy's types of them (np.float64, np.dtype("float64")),
    "float32" for None (the default; np.dtype(None) would say float64); ValueError for anything else."""
    if dtype is None:
        return "float32"
    try:
        name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return name


def check_flag(name, value):
    """value as a bool; anything but True/False (a "false" string is truthy) is refused rather than guessed at."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_truncation(truncation):
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation must be 'warn', 'ignore' or 'error', got {truncation!r}")
    return truncation


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value
