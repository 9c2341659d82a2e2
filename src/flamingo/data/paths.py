"""Shard lists: paths, globs, shell-style brace patterns and folders, local or remote (URLs, see
:mod:`flamingo.data.remote`)."""

from __future__ import annotations

import glob
import itertools
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger("flamingo.data")

PathSpec = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_GLOB_CHARS = re.compile(r"[*?\[]")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """Shell-style brace expansion: ``a-{000..002}.tar`` and ``{x,y}.tar`` (nested braces allowed).

    Numeric ranges keep the zero padding of their first bound.
    """
    start = pattern.find("{")
    if start < 0:
        return [pattern]
    depth, end, commas = 0, -1, []
    for index in range(start, len(pattern)):
        char = pattern[index]
        depth += (char == "{") - (char == "}")
        if char == "," and depth == 1:
            commas.append(index)
        if depth == 0:
            end = index
            break
    if end < 0:  # an unmatched brace is a literal character
        return [pattern]
    head, body, tail = pattern[:start], pattern[start + 1 : end], pattern[end + 1 :]
    range_match = _RANGE.match(body)
    if range_match:
        first, last = range_match.group(1), range_match.group(2)
        step = 1 if int(last) >= int(first) else -1
        width = len(first.lstrip("-"))
        options = [f"{i:0{width}d}" for i in range(int(first), int(last) + step, step)]
    elif commas:
        bounds = [start, *commas, end]
        options = [pattern[a + 1 : b] for a, b in itertools.pairwise(bounds)]
    else:
        return [head + "{" + option + "}" + rest for option in [body] for rest in expand_braces(tail)]
    return [expanded for option in options for expanded in expand_braces(head + option + tail)]


def expand_paths(spec: PathSpec, suffixes: Sequence[str] = SHARD_SUFFIXES) -> list[Path | str]:
    """Files named by ``spec``: paths, globs, brace patterns and folders (files ending in ``suffixes``).

    Local files come back as ``Path``; URLs (``s3://``, ``gs://``, ``http(s)://``, ``pipe:``) as ``str``, their
    braces expanded here and their globs and folders (``s3://bucket/prefix/``) listed by the store (see
    :func:`flamingo.data.remote.expand_url`). Order is the order given, each glob and folder sorted. A path
    that does not exist is returned as is, so a reader counts it as missing; a glob that matches nothing is
    logged.
    """
    from flamingo.data.remote import expand_url, is_url

    items = [spec] if isinstance(spec, str | os.PathLike) else list(spec)
    paths: list[Path | str] = []
    for item in items:
        for pattern in expand_braces(os.fspath(item)):
            if is_url(pattern):
                found = expand_url(pattern, suffixes)
                if not found:
                    logger.warning("%s: the pattern matches no file", pattern)
                paths.extend(found)
                continue
            path = Path(pattern)
            if path.is_dir():
                found = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(tuple(suffixes)))
                paths.extend(found)
            elif _GLOB_CHARS.search(pattern):
                matches = sorted(glob.glob(pattern, recursive=True))
                if not matches:
                    logger.warning("%s: the pattern matches no file", pattern)
                paths.extend(Path(m) for m in matches)
            else:
                paths.append(path)
    return paths
