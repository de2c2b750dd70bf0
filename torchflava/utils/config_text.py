"""Text that goes into a config OmegaConf reads (the recipes' YAML): kept as it is."""

import re

_INTERPOLATION = re.compile(r"(\\*)\$\{")  # "${" and the run of backslashes before it


def escape_interpolations(text: str) -> str:
    """``text`` as OmegaConf reads it back unchanged: each ``${``, which OmegaConf reads as an interpolation
    ("${x}": a missing key; "${oc.env:HOME}": the environment's value; "${": a grammar error), escaped as its
    grammar escapes it, the run of n backslashes before it (0 or more) written as 2n + 1 of them. Other backslashes,
    and text without ``${``, are left as they are (OmegaConf parses no such text).

    Args:
        text (str): any text.

    Returns:
        str: the escaped text.
    """
    return _INTERPOLATION.sub(lambda found: "\\" * (2 * len(found.group(1)) + 1) + "${", text)
