"""Profiles — "GPTs": a model with standing instructions, knowledge and tools, in one TOML file.

    name = "pydocs"
    description = "Answers questions about Python's standard library, with citations."
    instructions = "Answer from the documentation; cite the passage you used in brackets."
    knowledge = ["~/docs/python"]       # one directory, indexed for the `files` tool
    tools = ["files", "calculator"]
    model = "runs/speedrun/sft"          # the default model directory (a server may override)

    [sampling]                           # defaults a request may override
    temperature = 0.3
    top_p = 0.95
    max_tokens = 256

Profiles live as `NAME.toml` in a profiles directory (`--profiles DIR`; default
`~/.cache/llmos/profiles`). `llmos chat --profile P` and `llmos agent --profile P` take a name
or a path; `llmos serve` lists each profile as a model in `/v1/models`, so any OpenAI client
picks one by name, and the web UI picks, creates and edits them. A profile's knowledge is
indexed on first use into the profiles directory (`NAME.index/`), and again, re-embedding only
changed files, whenever it is loaded.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from llmos.agent.files import Index, IndexConfig, build_index
from llmos.common import LlmosError, atomic_write_text, cache_dir, log

NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
SAMPLING_KEYS = {"temperature": float, "top_p": float, "max_tokens": int}


class ProfileError(LlmosError):
    """A profile file that cannot be read as written: the message names the file and field."""


@dataclass
class Profile:
    name: str
    description: str = ""
    instructions: str = ""
    knowledge: list[str] = field(default_factory=list)
    tools: list[str] = field(default_factory=list)
    model: str = ""
    sampling: dict = field(default_factory=dict)

    def system_message(self, custom: str = "") -> list[dict]:
        """The profile's instructions, then the user's own custom instructions, as one system
        message (none if both are empty): both outrank anything the user says in the chat."""
        text = "\n\n".join(x for x in (self.instructions.strip(), custom.strip()) if x)
        return [{"role": "system", "content": text}] if text else []

    def to_toml(self) -> str:
        def q(x) -> str:  # a TOML basic string (JSON's escapes are TOML's)
            # JSON leaves DEL (0x7f) as it is; TOML forbids it raw (found by the fuzz test).
            return json.dumps(x, ensure_ascii=False).replace("\x7f", "\\u007f")

        lines = [f"{k} = {q(getattr(self, k))}" for k in ("name", "description", "instructions")]
        lines += [f"{k} = [{', '.join(q(x) for x in getattr(self, k))}]"
                  for k in ("knowledge", "tools")]  # fmt: skip
        if self.model:
            lines.append(f"model = {q(self.model)}")
        if self.sampling:
            lines += ["", "[sampling]", *(f"{k} = {v!r}" for k, v in self.sampling.items())]
        return "\n".join(lines) + "\n"


def default_dir() -> Path:
    return cache_dir() / "profiles"


def parse_profile(data: dict, where: str) -> Profile:
    """A Profile from a TOML table, every field checked by name."""
    known = {f for f in Profile.__dataclass_fields__}
    for k in data:
        if k not in known:
            raise ProfileError(f"{where}: unknown field {k!r} (fields: {', '.join(sorted(known))})")
    name = data.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ProfileError(f"{where}: 'name' must be 1-64 lower-case letters, digits, . _ or -")
    for k in ("description", "instructions", "model"):
        if not isinstance(data.get(k, ""), str):
            raise ProfileError(f"{where}: {k!r} must be a string")
    for k in ("knowledge", "tools"):
        v = data.get(k, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ProfileError(f"{where}: {k!r} must be a list of strings")
    sampling = data.get("sampling", {})
    if not isinstance(sampling, dict):
        raise ProfileError(f"{where}: [sampling] must be a table")
    for k, v in sampling.items():
        kind = SAMPLING_KEYS.get(k)
        if kind is None:
            raise ProfileError(
                f"{where}: unknown sampling field {k!r} ({', '.join(SAMPLING_KEYS)})"
            )
        if not isinstance(v, int | float) or isinstance(v, bool) or (kind is int and v != int(v)):
            raise ProfileError(f"{where}: sampling.{k} must be a number")
    return Profile(**{**data, "sampling": dict(sampling)})


def load_profile(name_or_path: str, profiles_dir: str | Path | None = None) -> Profile:
    """A profile by file path, or by name in the profiles directory."""
    path = Path(name_or_path)
    if not path.suffix:
        path = Path(profiles_dir or default_dir()) / f"{name_or_path}.toml"
    if not path.is_file():
        raise ProfileError(f"no profile {name_or_path!r} (looked for {path})")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{path}: {e}") from None
    return parse_profile(data, str(path))


def list_profiles(profiles_dir: str | Path | None = None) -> list[Profile]:
    """Every readable profile in the directory; an unreadable one is skipped with a warning."""
    out = []
    for p in sorted(Path(profiles_dir or default_dir()).glob("*.toml")):
        try:
            out.append(load_profile(str(p)))
        except ProfileError as e:
            log.warning("skipping profile: %s", e)
    return out


def save_profile(p: Profile, profiles_dir: str | Path | None = None) -> Path:
    """Write `NAME.toml` atomically (checked by reading it back first)."""
    parse_profile(tomllib.loads(p.to_toml()), p.name)
    path = Path(profiles_dir or default_dir()) / f"{p.name}.toml"
    atomic_write_text(path, p.to_toml())
    return path


def knowledge_tools(p: Profile, profiles_dir: str | Path | None = None) -> dict:
    """The `files` tool over the profile's knowledge directories (each indexed, or brought up
    to date, under the profiles directory); {} if it has none."""
    if not p.knowledge:
        return {}
    if len(p.knowledge) > 1:
        raise ProfileError(f"profile {p.name}: one knowledge directory is supported, not several")
    out = Path(profiles_dir or default_dir()) / f"{p.name}.index"
    build_index(IndexConfig(str(Path(p.knowledge[0]).expanduser()), str(out)))
    return Index.load(out).tool()
