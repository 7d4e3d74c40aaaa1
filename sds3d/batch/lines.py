"""Prompt files -> validated batch entries, every bad line reported before any work starts.

A line is a prompt, optionally followed by ``|`` and overrides ``key=value`` (any RunConfig
field, dotted for nested ones, ``-`` or ``_``): ``a corgi | seed=3 steps=2000 recipe=exemplar``.
``#`` comment lines and blank lines are skipped; duplicate lines run once.

Each line's config is :func:`sds3d.recipes.resolve_run` of the command line's options merged
with the line's (recipe < command-line options < line overrides). Every line of every file is
parsed and validated; the rejected ones are reported together as ``FILE:LINE: reason``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from sds3d.config import RunConfig
from sds3d.factory import build_prompts
from sds3d.prompts import read_prompt_lines
from sds3d.recipes import resolve_run
from sds3d.types import SDS3DError


class BadLines(SDS3DError):
    """Some prompt lines were rejected; ``lines`` holds one ``FILE:LINE: reason`` each."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


@dataclass(frozen=True)
class BatchEntry:
    index: int  # position in the de-duplicated list of all files (stable across reruns and shards)
    prompt: str
    overrides: tuple[tuple[str, str], ...]  # as written in the line
    cfg: RunConfig

    @property
    def key(self) -> str:
        return self.prompt + "".join(f" {k}={v}" for k, v in self.overrides)

    def run_name(self) -> str:
        from sds3d.train import slugify

        return f"{self.index:04d}-{slugify(self.prompt, 40)}"

    def record(self, **fields: Any) -> dict[str, Any]:
        """A manifest record of this entry: who it is, then ``fields`` (status, error, ...)."""
        return {"index": self.index, "prompt": self.prompt, "overrides": dict(self.overrides), "run_dir": self.run_name(), **fields}


def parse_line(line: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """``'a corgi | seed=3 steps=2000'`` -> ``('a corgi', (('seed','3'), ('steps','2000')))``."""
    prompt, sep, rest = line.partition("|")
    overrides = []
    if sep:
        for item in rest.split():
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise SDS3DError(f"bad override {item!r}: write key=value, e.g. seed=3")
            overrides.append((key.replace("-", "_"), value))
    return prompt.strip(), tuple(overrides)


def typed_overrides(overrides: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """Line overrides as typed leaf values, by the RunConfig field types."""
    return {key: _convert(value, _field_type(key), key) for key, value in overrides}


def _field_type(path: str) -> Any:
    cls: Any = RunConfig
    names = path.split(".")
    for i, name in enumerate(names):
        fields = {f.name for f in dataclasses.fields(cls)}
        if name not in fields:
            where = f" of {'.'.join(names[:i])}" if i else ""
            raise SDS3DError(f"unknown option {path!r}: no field {name!r}{where}; use a RunConfig field such as seed, steps, guidance, sds.guidance_scale")
        hint = typing.get_type_hints(cls)[name]
        if i + 1 < len(names):
            if not dataclasses.is_dataclass(hint):
                raise SDS3DError(f"option {path!r}: {'.'.join(names[: i + 1])} has no sub-options")
            cls = hint
        elif dataclasses.is_dataclass(hint):
            raise SDS3DError(f"option {path!r} is a group of options; set one of them, e.g. {path}.{dataclasses.fields(hint)[0].name}=...")
    return hint


def _convert(value: str, hint: Any, full: str) -> Any:
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    try:
        if hint is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError("write true or false")
            return value.lower() in ("true", "1", "yes")
        if hint in (int, float, str, Path):
            return hint(value)
        if origin is typing.Literal:
            if value not in args:
                raise ValueError(f"choose from {', '.join(map(str, args))}")
            return value
        if origin is tuple:
            return tuple(_convert(v, args[0], full) for v in value.split(","))
        if type(None) in args:  # Optional[X]
            if value.lower() == "none":
                return None
            return _convert(value, next(a for a in args if a is not type(None)), full)
    except ValueError as e:
        raise SDS3DError(f"bad value for {full!r}: {value!r} ({e})") from None
    raise SDS3DError(f"option {full!r} cannot be set from a prompt line")


def line_config(prompt: str, overrides: tuple[tuple[str, str], ...], cli: Mapping[str, Any], check_device: bool = True) -> RunConfig:
    """The resolved, validated config of one line."""
    if not prompt:
        raise SDS3DError("empty prompt: write the text before any '|'")
    cfg = resolve_run({**cli, **typed_overrides(overrides)})
    cfg.validate(check_device=check_device)
    build_prompts(prompt, cfg)
    return cfg


def read_entries(files: tuple[Path, ...], cli: Mapping[str, Any], check_device: bool = True) -> list[BatchEntry]:
    """All prompts of all files, duplicates dropped, configs resolved and validated. Raises
    :class:`BadLines` with every rejected line when any is bad."""
    if not files:
        raise SDS3DError("no prompt file given: sds3d batch prompts/FILE.txt")
    entries: list[BatchEntry] = []
    errors: list[str] = []
    seen: set[str] = set()
    for f in files:
        for number, line in read_prompt_lines(f):
            try:
                prompt, overrides = parse_line(line)
                cfg = line_config(prompt, overrides, cli, check_device)
            except SDS3DError as e:
                errors.append(f"{f}:{number}: {e}")
                continue
            entry = BatchEntry(len(entries), prompt, overrides, cfg)
            if entry.key not in seen:
                seen.add(entry.key)
                entries.append(entry)
    if errors:
        raise BadLines(errors)
    if not entries:
        raise SDS3DError(f"no prompts in {', '.join(map(str, files))}: write one prompt a line")
    return entries
