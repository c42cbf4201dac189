"""Eval profiles: which eval flags each model folder of a fleet gets.

A profile is a dict of flag dests (underscore form, only `PROFILE_KEYS`) to values typed as the
flag would take them. The caller merges it: profile values override the command line for the
keys they set; every other flag keeps its command-line value. Keys that feed the model's identity
(category, test_data_path, index_path, num_beams, sid_levels, seed, dataset, cb_setting,
eval_split) also choose its state file and W&B run id, so changing them starts a fresh run.

Two formats, chosen by the file's extension (`.yaml`/`.yml` rules, `.json` manifest) or, for
any other name, by content (a JSON object with "datasets"/"aliases" is a manifest, else rules):

1. Rules (YAML), the first matching rule wins; `defaults` apply to every matched model and a
   rule's own values override them::

       defaults: {num-beams: 50}
       rules:
         - match: "Instruments-grec-*"                  # fnmatch glob on the folder name
           category: Instruments_grec
         - regex: "^(?P<ds>[A-Z][a-z]+_[a-z]+)-sft-"    # re.search; named groups are captures
           category: "{ds}"
         - match: "scratch-*"
           skip: true                                   # never evaluated

   Keys may use dashes or underscores. String values may use `{model}` (the folder name) and the
   matched rule's captures; `{{`/`}}` are literal braces. Relative paths stay as written (the
   caller resolves them against --repo-root like any flag).

2. The original tool's manifest (JSON), read unchanged: `aliases[name]` names a `datasets` entry
   by `dataset_variant` and may override its keys; a name that is no alias uses the longest
   dataset variant contained in it (`_` and `-` alike, any case). Relative test_data_path,
   index_path and eval_script are resolved against `data_root` (default: the manifest's folder).

Everything that can be checked without a model name is checked at load time (`ConfigError`, one
line naming the file, the rule and the key); what depends on the name (a placeholder filled by a
capture, a default using a capture the matched rule lacks, an alias naming a missing dataset)
gives a `Resolved` without values and the reason.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import string
from dataclasses import dataclass
from pathlib import Path

from ..config import _BY_DEST, _convert
from ..errors import ConfigError

log = logging.getLogger(__name__)

PROFILE_KEYS: frozenset[str] = frozenset({
    "category", "test_data_path", "index_path", "num_beams", "sid_levels", "seed", "dataset",
    "cb_setting", "eval_split", "eval_script", "batch_size", "max_new_tokens", "temperature",
    "do_sample", "length_penalty", "python_bin", "eval_timeout_seconds", "max_attempts",
})
_PATH_KEYS = ("test_data_path", "index_path", "eval_script")
_RULE_KEYS = ("match", "regex", "skip")


@dataclass(frozen=True)
class Resolved:
    """The profile of one model folder: its values, or None with the reason."""

    model: str
    values: dict[str, object] | None
    source: str
    reason: str = ""


class Profiles:
    """Profiles loaded from one file; `resolve` is pure (no I/O)."""

    path: Path

    def resolve(self, model: str) -> Resolved:
        """The profile of the model folder named `model` (its base name)."""
        raise NotImplementedError

    @property
    def summary(self) -> str:
        """What was loaded, for a log line, e.g. `3 rules`."""
        raise NotImplementedError


# --- values ----------------------------------------------------------------------------------


def _typed(dest: str, raw: object, where: str) -> object:
    """`raw` as the flag `dest` takes it (config._convert), or ConfigError naming `where`."""
    if raw is None or isinstance(raw, (list, dict)):
        kind = "nothing" if raw is None else type(raw).__name__
        raise ConfigError(f"{where}: expected a single value, got {kind}")
    flag = _BY_DEST[dest]
    if isinstance(raw, bool) and flag.kind != "bool":
        raw = str(raw)  # YAML `do-sample: true` means the text True (_convert expects text here)
    return _convert(flag, raw, where)


def _fields(text: str, where: str) -> set[str]:
    """The placeholder names in `text`; ConfigError for unbalanced braces or `{x!r}`, `{x.y}`, `{}`."""
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc} in {text!r} (write {{{{ and }}}} for literal braces)") from None
    names = set()
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ConfigError(f"{where}: placeholder {{{name}{'!' + conversion if conversion else ''}"
                              f"{':' + spec if spec else ''}}} in {text!r}: only {{name}} is supported")
        names.add(name)
    return names


@dataclass(frozen=True)
class _Values:
    """A mapping's values: typed ones, and templates (strings with placeholders) typed at resolve."""

    typed: dict[str, object]
    templates: dict[str, tuple[str, str, frozenset[str]]]  # dest -> (text, where, placeholder names)

    def keys(self) -> set[str]:
        return set(self.typed) | set(self.templates)


def _read_values(mapping: dict, allowed: tuple[str, ...], where: str) -> tuple[dict, _Values]:
    """Split `mapping` into its rule keys (`allowed`) and its profile values, keys normalised."""
    own: dict = {}
    typed: dict[str, object] = {}
    templates: dict[str, tuple[str, str, frozenset[str]]] = {}
    seen: dict[str, str] = {}
    for key, raw in mapping.items():
        dest = str(key).replace("-", "_")
        if dest not in PROFILE_KEYS and dest not in allowed:
            names = ", ".join([*allowed, *sorted(k.replace("_", "-") for k in PROFILE_KEYS)])
            raise ConfigError(f"{where}: unknown key {key!r} (allowed: {names})")
        if dest in seen:
            raise ConfigError(f"{where}: key {key!r} is given twice (also as {seen[dest]!r})")
        seen[dest] = str(key)
        key_where = f"{where}: {key}"
        fields = _fields(raw, key_where) if isinstance(raw, str) and dest not in allowed else set()
        if dest in allowed:
            own[dest] = raw
        elif fields:
            templates[dest] = (raw, key_where, frozenset(fields))
        else:  # `.format()` turns {{ and }} into braces
            typed[dest] = _typed(dest, raw.format() if isinstance(raw, str) else raw, key_where)
    return own, _Values(typed, templates)


def _fill(values: _Values, captures: dict[str, str | None], skip: set[str], rule_name: str) -> tuple[dict, str]:
    """The typed values with placeholders filled (keys in `skip` left out), or ({}, reason)."""
    out = {k: v for k, v in values.typed.items() if k not in skip}
    for dest, (text, where, names) in values.templates.items():
        if dest in skip:
            continue
        missing = sorted(n for n in names if captures.get(n) is None)
        if missing:
            why = "does not capture" if missing[0] not in captures else "did not capture here"
            return {}, f"{where} uses {{{missing[0]}}}, which {rule_name} {why}"
        try:
            out[dest] = _typed(dest, text.format_map(captures), where)
        except ConfigError as exc:
            return {}, f"{exc} (from {text!r})"
    return out, ""


# --- the rules format ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    number: int
    kind: str  # "glob" | "regex"
    pattern: str
    regex: re.Pattern | None
    skip: bool
    values: _Values

    def captures(self, model: str) -> dict[str, str | None] | None:
        """`{model}` and the named groups when the rule matches `model`, else None."""
        if self.regex is None:
            return {"model": model} if fnmatch.fnmatchcase(model, self.pattern) else None
        found = self.regex.search(model)
        return None if found is None else {**found.groupdict(), "model": model}


class RuleProfiles(Profiles):
    """A YAML rules file: ordered rules, the first match wins, defaults under the rule's values."""

    def __init__(self, path: Path, defaults: _Values, rules: list[_Rule]) -> None:
        self.path = path
        self.defaults = defaults
        self.rules = rules

    @property
    def summary(self) -> str:
        return f"{len(self.rules)} rule{'s' * (len(self.rules) != 1)}"

    def resolve(self, model: str) -> Resolved:
        name = self.path.name
        for rule in self.rules:
            captures = rule.captures(model)
            if captures is None:
                continue
            source = f"{name} rule {rule.number} ({rule.kind} {rule.pattern!r})"
            if rule.skip:
                return Resolved(model, None, source, f"excluded by {name} rule {rule.number} (skip)")
            own, reason = _fill(rule.values, captures, set(), f"rule {rule.number}")
            if not reason:
                defaults, reason = _fill(self.defaults, captures, rule.values.keys(), f"rule {rule.number}")
            if reason:
                return Resolved(model, None, source, reason)
            return Resolved(model, {**defaults, **own}, source)
        return Resolved(model, None, name, f"no rule of {name} matches {model!r}")


def _parse_rules(path: Path, data: object) -> RuleProfiles:
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ConfigError(f"{path}: expected a mapping with a 'rules' list (and optional 'defaults'), got {got}")
    extra = sorted(str(k) for k in data if k not in ("defaults", "rules"))
    if extra:
        raise ConfigError(f"{path}: unknown top-level key {extra[0]!r} (allowed: defaults, rules)")
    if "rules" not in data:
        raise ConfigError(f"{path}: no 'rules' list (write `rules: []` for no profiles)")
    defaults_raw = {} if data.get("defaults") is None else data["defaults"]
    if not isinstance(defaults_raw, dict):
        raise ConfigError(f"{path}: defaults: expected a mapping of flag names to values")
    _, defaults = _read_values(defaults_raw, (), f"{path}: defaults")
    rules_raw = [] if data["rules"] is None else data["rules"]
    if not isinstance(rules_raw, list):
        raise ConfigError(f"{path}: rules: expected a list of mappings, got a {type(rules_raw).__name__}")
    return RuleProfiles(path, defaults, [_parse_rule(path, i, r) for i, r in enumerate(rules_raw, 1)])


def _parse_rule(path: Path, number: int, raw: object) -> _Rule:
    where = f"{path}: rule {number}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping (match or regex, then flag values), got {raw!r}")
    own, values = _read_values(raw, _RULE_KEYS, where)
    if ("match" in own) == ("regex" in own):
        both = "both match and regex" if "match" in own else "neither match nor regex"
        raise ConfigError(f"{where}: give exactly one of match (a glob) or regex, got {both}")
    kind = "glob" if "match" in own else "regex"
    pattern = own.get("match", own.get("regex"))
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(f"{where}: {'match' if kind == 'glob' else 'regex'}: expected a non-empty string, "
                          f"got {pattern!r}")
    regex = None
    available = {"model"}
    if kind == "regex":
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"{where}: regex {pattern!r} is not valid ({exc})") from None
        if "model" in regex.groupindex:
            raise ConfigError(f"{where}: regex group 'model' would hide {{model}}; rename the group")
        available |= set(regex.groupindex)
    skip = own.get("skip", False)
    if not isinstance(skip, bool):
        raise ConfigError(f"{where}: skip: expected true or false, got {skip!r}")
    if skip and values.keys():
        raise ConfigError(f"{where}: a skip rule sets no values (got {', '.join(sorted(values.keys()))})")
    for text, key_where, names in values.templates.values():
        unknown = sorted(names - available)
        if unknown:
            offer = ", ".join(f"{{{n}}}" for n in sorted(available))
            raise ConfigError(f"{key_where}: {{{unknown[0]}}} in {text!r} is not captured by this rule's "
                              f"{kind} (available: {offer})")
    return _Rule(number, kind, pattern, regex, skip, values)


# --- the manifest format ---------------------------------------------------------------------


def _norm(name: str) -> str:
    return name.replace("_", "-").lower()


class ManifestProfiles(Profiles):
    """The original tool's manifest: aliases, then dataset variants found in the name."""

    def __init__(self, path: Path, datasets: dict[str, dict], aliases: dict[str, tuple[str, dict]]) -> None:
        self.path = path
        self.datasets = datasets
        self.aliases = aliases
        # the longest variant wins; among equally long ones, the first in the file
        self._by_length = sorted((v for v in datasets if v), key=lambda v: -len(v))

    @property
    def summary(self) -> str:
        return f"{len(self.datasets)} datasets, {len(self.aliases)} aliases"

    def resolve(self, model: str) -> Resolved:
        name = self.path.name
        if model in self.aliases:
            variant, overrides = self.aliases[model]
            source = f"{name} alias {model!r} -> dataset {variant!r}"
            if variant not in self.datasets:
                return Resolved(model, None, source, f"{name} alias {model!r} names dataset {variant!r}, "
                                                     f"which its datasets do not hold")
            return Resolved(model, {**self.datasets[variant], **overrides}, source)
        for variant in self._by_length:
            if _norm(variant) in _norm(model):
                return Resolved(model, dict(self.datasets[variant]), f"{name} dataset {variant!r} (matched by name)")
        return Resolved(model, None, name,
                        f"{model!r} is no alias of {name} and contains none of its dataset names")


def _manifest_values(entry: object, where: str, data_root: Path) -> dict[str, object]:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected an object of flag names to values, got {entry!r}")
    out: dict[str, object] = {}
    for key, raw in entry.items():
        dest = str(key).replace("-", "_")
        if dest not in PROFILE_KEYS:
            log.debug("%s: ignoring key %r (not an eval profile key)", where, key)
            continue
        value = _typed(dest, raw, f"{where}.{key}")
        if dest in _PATH_KEYS:
            value = os.path.abspath(data_root / Path(value))  # an absolute value stays as it is
        out[dest] = value
    return out


def _parse_manifest(path: Path, data: object, data_root: Path | None) -> ManifestProfiles:
    if not isinstance(data, dict) or not ({"datasets", "aliases"} & set(data)):
        raise ConfigError(f"{path}: expected a manifest (a JSON object with \"datasets\" and/or \"aliases\")")
    version = data.get("version", 1)
    if type(version) is not int or version != 1:
        raise ConfigError(f"{path}: manifest version {version!r} is not supported (this sidecar reads version 1)")
    root = Path(os.path.abspath(data_root if data_root is not None else path.parent))
    sections = {}
    for section in ("datasets", "aliases"):
        sections[section] = {} if data.get(section) is None else data[section]
        if not isinstance(sections[section], dict):
            raise ConfigError(f"{path}: {section}: expected an object keyed by name")
    datasets = {str(name): _manifest_values(entry, f"{path}: datasets.{name}", root)
                for name, entry in sections["datasets"].items()}
    aliases = {}
    for name, entry in sections["aliases"].items():
        where = f"{path}: aliases.{name}"
        variant = entry.get("dataset_variant") if isinstance(entry, dict) else None
        if not isinstance(variant, str) or not variant:
            raise ConfigError(f"{where}: expected an object with a \"dataset_variant\" naming a dataset")
        aliases[str(name)] = (variant, _manifest_values(entry, where, root))
    return ManifestProfiles(path, datasets, aliases)


# --- loading ---------------------------------------------------------------------------------


def load_profiles(path: Path, data_root: Path | None = None) -> Profiles:
    """The profiles in `path` (rules or manifest, see the module docstring); ConfigError (one line
    naming the file, and the rule and key where there is one) for anything wrong in it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the profiles file ({getattr(exc, 'strerror', None) or exc})") from exc
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml"):
        try:
            data = json.loads(text)
        except ValueError as exc:
            if suffix == ".json":
                raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        else:
            if suffix == ".json" or (isinstance(data, dict) and {"datasets", "aliases"} & set(data)):
                return _parse_manifest(path, data, data_root)
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise ConfigError(f"{path}: not valid YAML ({problem}{where})") from None
    return _parse_rules(path, data)


class ProfilesFile:
    """The profiles file as the running fleet sees it: re-read when it changes."""

    def __init__(self, path: Path, data_root: Path | None = None) -> None:
        self.path = Path(path)
        self.data_root = data_root
        self._stamp = self._stat()  # before reading: a change while loading is seen next time
        self.profiles: Profiles = load_profiles(self.path, data_root)

    def _stat(self) -> tuple | str:
        """What identifies one version of the file, or the reason it cannot be stat'ed."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            return exc.strerror or str(exc)
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)

    def refresh(self) -> bool:
        """One stat; True if the file changed and its new content is now `profiles`. A bad edit
        or a deleted file is logged once (until the file changes again); the old profiles stay."""
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        if isinstance(stamp, str):
            log.warning("profiles file %s: cannot read it (%s); the previous profiles stay in use", self.path, stamp)
            return False
        try:
            profiles = load_profiles(self.path, self.data_root)
        except ConfigError as exc:
            log.error("%s; the previous profiles stay in use", exc)
            return False
        self.profiles = profiles
        log.info("profiles file %s changed: %s loaded", self.path, profiles.summary)
        return True
