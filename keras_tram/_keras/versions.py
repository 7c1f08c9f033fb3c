"""The Keras versions keras-tram supports, checked when it is imported
(without importing Keras, which the `keras-tram` command does not need).

`OLDEST` is the floor `pyproject.toml` declares and CI's floor job installs;
`NEWEST_CHECKED` the newest Keras the whole suite has passed on. A newer
Keras is allowed: the private API keras-tram reads (`_keras/compat.py`)
fails with an error that names the version if it has changed.

    >>> parse("3.10.0.dev2025052003")
    (3, 10, 0)
    >>> check("3.15.1") is None
    True
"""

import importlib.metadata

OLDEST = "3.8.0"
NEWEST_CHECKED = "3.15.1"
# The distributions that install the `keras` module.
DISTRIBUTIONS = ("keras", "keras-nightly")


def parse(version):
    """`(major, minor, patch)` of a version string ("3.10.0rc1" -> (3, 10, 0))."""
    numbers = []
    for part in version.split(".")[:3]:
        digits = ""
        for character in part:
            if not character.isdigit():
                break
            digits += character
        numbers.append(int(digits or 0))
    return tuple(numbers + [0] * (3 - len(numbers)))


def installed():
    """The installed Keras's version, or None if no distribution of it is
    found (a Keras on `sys.path` only: then nothing is checked)."""
    for name in DISTRIBUTIONS:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def check(version=None):
    """Raises `ImportError` if Keras `version` (the installed one by
    default) is older than `OLDEST`."""
    version = installed() if version is None else version
    if version is not None and parse(version) < parse(OLDEST):
        raise ImportError(
            f"keras-tram needs Keras >= {OLDEST}, and Keras {version} is installed. "
            f"Upgrade it: pip install 'keras>={OLDEST}' (keras-tram is checked on "
            f"Keras {OLDEST} to {NEWEST_CHECKED})."
        )


def describe():
    """`'Keras <installed> (keras-tram is checked on <OLDEST> to <NEWEST>)'`."""
    return (f"Keras {installed() or 'of unknown version'} (keras-tram is checked on "
            f"Keras {OLDEST} to {NEWEST_CHECKED})")
