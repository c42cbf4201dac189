"""Fleet eval profiles: the rules file, the original manifest, and re-reading the file as it changes."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from sidecar.errors import ConfigError
from sidecar.fleet.profiles import PROFILE_KEYS, ProfilesFile, Resolved, load_profiles

ROOT = Path(__file__).resolve().parent.parent
SFT = "Instruments-grec-sft-qwen4B-4-cb64-dsz0"


@pytest.fixture
def folder(tmp_path) -> Path:
    """A folder with an awkward name for the profiles files."""
    path = tmp_path / "fleet cfg 'q' ünï"
    path.mkdir()
    return path


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def rules(folder: Path, text: str, name: str = "profiles.yaml") -> Path:
    return write(folder / name, text)


def load_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_profiles(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    return message


# --- rules -----------------------------------------------------------------------------------

RULES = """
defaults:
  num-beams: 50
  index-path: "data/{dataset}/id2sid.json"
rules:
  - match: "Instruments-grec-*"
    category: Instruments_grec
    test-data-path: data/Instruments_grec/sft/test.json
    index-path: data/Instruments_grec/id2sid.json
  - regex: "^(?P<dataset>[A-Z][a-z]+_[a-z]+)-sft-"
    category: "{dataset}"
    test_data_path: "data/{dataset}/sft/test.json"
    dataset: "{dataset}"
    num_beams: 20
  - match: "scratch-*"
    skip: true
  - match: "*"
    category: "{model}"
"""


def test_a_glob_rule_gives_its_values_over_the_defaults(folder):
    profiles = load_profiles(rules(folder, RULES))
    got = profiles.resolve(SFT)
    assert got == Resolved(SFT, {"num_beams": 50, "category": "Instruments_grec",
                                 "test_data_path": "data/Instruments_grec/sft/test.json",
                                 "index_path": "data/Instruments_grec/id2sid.json"},
                           "profiles.yaml rule 1 (glob 'Instruments-grec-*')")


def test_a_regex_rule_fills_its_captures_into_its_values_and_the_defaults(folder):
    got = load_profiles(rules(folder, RULES)).resolve("Beauty_grec-sft-qwen4B")
    assert got.values == {"category": "Beauty_grec", "test_data_path": "data/Beauty_grec/sft/test.json",
                          "dataset": "Beauty_grec", "num_beams": 20,
                          "index_path": "data/Beauty_grec/id2sid.json"}
    assert got.source == "profiles.yaml rule 2 (regex '^(?P<dataset>[A-Z][a-z]+_[a-z]+)-sft-')"


def test_the_first_matching_rule_wins(folder):
    profiles = load_profiles(rules(folder, RULES))
    # "Instruments-grec-*" (rule 1) also matches "*" (rule 4); rule 1 comes first
    assert profiles.resolve("Instruments-grec-rl").source.startswith("profiles.yaml rule 1 ")
    assert profiles.resolve("scratch-Beauty_grec-sft-x").reason == "excluded by profiles.yaml rule 3 (skip)"


def test_a_skip_rule_excludes_the_model(folder):
    got = load_profiles(rules(folder, RULES)).resolve("scratch-1")
    assert got.values is None
    assert got.reason == "excluded by profiles.yaml rule 3 (skip)"
    assert got.source == "profiles.yaml rule 3 (glob 'scratch-*')"


def test_a_default_using_a_capture_the_matched_rule_lacks_gives_no_profile(folder):
    got = load_profiles(rules(folder, RULES)).resolve("other-model")
    assert got.values is None
    assert "defaults: index-path uses {dataset}, which rule 4 does not capture" in got.reason
    assert got.source == "profiles.yaml rule 4 (glob '*')"


def test_no_matching_rule_and_an_empty_rules_list_give_no_profile(folder):
    got = load_profiles(rules(folder, "rules:\n  - match: a*\n    seed: 1\n")).resolve("foo")
    assert got == Resolved("foo", None, "profiles.yaml", "no rule of profiles.yaml matches 'foo'")
    assert load_profiles(rules(folder, "rules: []\n")).resolve("foo").values is None
    assert load_profiles(rules(folder, "defaults: {seed: 3}\nrules:\n")).resolve("foo").values is None


def test_values_are_typed_as_the_flags_take_them(folder):
    profiles = load_profiles(rules(folder, """
rules:
  - match: "*"
    seed: "7"
    temperature: 0.5
    do-sample: true
    max_attempts: 2
    eval-timeout-seconds: 60
    python-bin: /opt/py 3/bin/python
    eval-split: "{{literal}}-{model}"
    cb-setting: "{{x}}"
"""))
    assert profiles.resolve("m").values == {
        "seed": 7, "temperature": 0.5, "do_sample": "True", "max_attempts": 2, "eval_timeout_seconds": 60.0,
        "python_bin": "/opt/py 3/bin/python", "eval_split": "{literal}-m", "cb_setting": "{x}"}


def test_a_placeholder_value_that_is_invalid_once_filled_gives_no_profile(folder):
    profiles = load_profiles(rules(folder, """
rules:
  - regex: "-b(?P<beams>\\\\w+)$"
    num-beams: "{beams}"
  - regex: "^(?P<a>x)?y"
    category: "{a}"
"""))
    assert profiles.resolve("m-b20").values == {"num_beams": 20}
    bad = profiles.resolve("m-bten")
    assert bad.values is None
    assert "rule 1: num-beams: expected an integer, got 'ten'" in bad.reason
    unmatched = profiles.resolve("y")  # the optional group took no part in the match
    assert unmatched.values is None
    assert "rule 2: category uses {a}, which rule 2 did not capture here" in unmatched.reason


def test_profile_keys_are_the_eval_flags():
    assert "num_beams" in PROFILE_KEYS and "test_data_path" in PROFILE_KEYS and "max_attempts" in PROFILE_KEYS
    assert "sft_root" not in PROFILE_KEYS and "wandb_project" not in PROFILE_KEYS
    assert len(PROFILE_KEYS) == 18


@pytest.mark.parametrize("text, expected", [
    ("rules:\n  - match: a\n    num-beam: 3\n", "rule 1: unknown key 'num-beam' (allowed: match, regex, skip, batch-size,"),
    ("defaults:\n  sft-root: x\nrules: []\n", "defaults: unknown key 'sft-root' (allowed: batch-size, category,"),
    ("rules:\n  - match: a\n  - category: x\n", "rule 2: give exactly one of match (a glob) or regex, got neither"),
    ("rules:\n  - match: a\n    regex: b\n", "rule 1: give exactly one of match (a glob) or regex, got both"),
    ("rules:\n  - regex: '(unclosed'\n", "rule 1: regex '(unclosed' is not valid (missing ), unterminated subpattern"),
    ("rules:\n  - regex: '(?P<model>x)'\n", "rule 1: regex group 'model' would hide {model}"),
    ("rules:\n  - match: '*'\n    category: '{ds}'\n",
     "rule 1: category: {ds} in '{ds}' is not captured by this rule's glob (available: {model})"),
    ("rules:\n  - regex: '(?P<ds>x)'\n    test-data-path: 'data/{d}/t.json'\n",
     "rule 1: test-data-path: {d} in 'data/{d}/t.json' is not captured by this rule's regex (available: {ds}, {model})"),
    ("rules:\n  - match: '*'\n    category: '{x!r}'\n", "rule 1: category: placeholder {x!r} in '{x!r}': only {name} is supported"),
    ("rules:\n  - match: '*'\n    category: 'a{b'\n", "rule 1: category: "),
    ("defaults:\n  category: '{0}'\nrules: []\n", "defaults: category: placeholder {0} in '{0}'"),
    ("rules:\n  - match: '*'\n    num-beams: many\n", "rule 1: num-beams: expected an integer, got 'many'"),
    ("rules:\n  - match: '*'\n    num-beams: 0\n", "rule 1: num-beams: must be at least 1, got 0"),
    ("rules:\n  - match: '*'\n    do-sample: maybe\n", "rule 1: do-sample: 'maybe' is not one of true, false"),
    ("rules:\n  - match: '*'\n    category: [a, b]\n", "rule 1: category: expected a single value, got list"),
    ("rules:\n  - match: '*'\n    seed:\n", "rule 1: seed: expected a single value, got nothing"),
    ("rules:\n  - match: '*'\n    num-beams: 2\n    num_beams: 3\n", "rule 1: key 'num_beams' is given twice (also as 'num-beams')"),
    ("rules:\n  - match: '*'\n    skip: true\n    seed: 1\n", "rule 1: a skip rule sets no values (got seed)"),
    ("rules:\n  - match: '*'\n    skip: sometimes\n", "rule 1: skip: expected true or false, got 'sometimes'"),
    ("rules:\n  - match: 12\n", "rule 1: match: expected a non-empty string, got 12"),
    ("rules:\n  - just a string\n", "rule 1: expected a mapping"),
    ("rules:\n  match: a\n", "rules: expected a list of mappings, got a dict"),
    ("defaults: [1]\nrules: []\n", "defaults: expected a mapping"),
    ("rule:\n  - match: a\n", "unknown top-level key 'rule' (allowed: defaults, rules)"),
    ("defaults: {seed: 1}\n", "no 'rules' list"),
    ("", "expected a mapping with a 'rules' list (and optional 'defaults'), got an empty file"),
    ("rules:\n  - match: a\n - b\n", "not valid YAML ("),
])
def test_each_load_error_is_one_line_naming_the_file_and_the_rule_or_key(folder, text, expected):
    message = load_error(rules(folder, text))
    assert expected in message
    assert message.startswith(str(folder / "profiles.yaml"))


def test_a_missing_file_is_a_load_error(folder):
    assert "cannot read the profiles file (No such file or directory)" in load_error(folder / "absent.yaml")


# --- the original manifest -------------------------------------------------------------------


def manifest(folder: Path, **extra) -> Path:
    data = {
        "version": 1,
        "datasets": {
            "Instruments_grec": {"category": "Instruments_grec", "test_data_path": "Instruments_grec/sft/test.json",
                                 "index_path": "Instruments_grec/id2sid.json", "num_beams": 50,
                                 "description": "musical instruments", "sft_root": "saves/x"},
            "Instruments": {"category": "Instruments", "test_data_path": "/abs/data/test.json"},
            "Beauty_grec": {"category": "Beauty_grec", "num_beams": "30"},
        },
        "aliases": {
            SFT: {"dataset_variant": "Instruments_grec", "num_beams": 20},
            "odd-name": {"dataset_variant": "Missing_variant"},
        },
    }
    data.update(extra)
    return write(folder / "eval_profile_manifest.json", json.dumps(data))


def test_a_manifest_alias_gives_its_dataset_with_the_alias_overrides(folder):
    got = load_profiles(manifest(folder)).resolve(SFT)
    assert got.values == {"category": "Instruments_grec", "num_beams": 20,
                          "test_data_path": str(folder / "Instruments_grec" / "sft" / "test.json"),
                          "index_path": str(folder / "Instruments_grec" / "id2sid.json")}
    assert got.source == f"eval_profile_manifest.json alias '{SFT}' -> dataset 'Instruments_grec'"


def test_a_manifest_dataset_named_in_the_folder_name_is_used_the_longest_first(folder):
    profiles = load_profiles(manifest(folder))
    got = profiles.resolve("instruments-GREC-rl-grpo-cb64")  # '_' and '-' alike, any case
    assert got.values["category"] == "Instruments_grec"  # longer than "Instruments", which also appears
    assert got.source == "eval_profile_manifest.json dataset 'Instruments_grec' (matched by name)"
    plain = profiles.resolve("Instruments-sft-2")
    assert plain.values == {"category": "Instruments", "test_data_path": "/abs/data/test.json"}
    assert profiles.resolve("beauty_grec_sft").values == {"category": "Beauty_grec", "num_beams": 30}


def test_a_manifest_without_a_match_or_with_an_unknown_variant_gives_no_profile(folder):
    profiles = load_profiles(manifest(folder))
    none = profiles.resolve("Toys-sft")
    assert none.values is None and "eval_profile_manifest.json" in none.reason and "'Toys-sft'" in none.reason
    odd = profiles.resolve("odd-name")
    assert odd.values is None
    assert odd.reason == ("eval_profile_manifest.json alias 'odd-name' names dataset 'Missing_variant', "
                          "which its datasets do not hold")


def test_manifest_paths_are_resolved_against_the_data_root(folder, tmp_path):
    data_root = tmp_path / "the data root"
    got = load_profiles(manifest(folder), data_root=data_root).resolve(SFT)
    assert got.values["test_data_path"] == str(data_root / "Instruments_grec" / "sft" / "test.json")
    assert got.values["index_path"] == str(data_root / "Instruments_grec" / "id2sid.json")


def test_manifest_version_2_and_bad_entries_are_load_errors(folder):
    assert "manifest version 2 is not supported (this sidecar reads version 1)" in load_error(manifest(folder, version=2))
    message = load_error(manifest(folder, datasets={"X": {"num_beams": "lots"}}))
    assert "datasets.X.num_beams: expected an integer, got 'lots'" in message
    assert "aliases.a: expected an object with a \"dataset_variant\"" in load_error(manifest(folder, aliases={"a": {}}))
    assert "not valid JSON" in load_error(write(folder / "m.json", "{not json"))
    assert "expected a manifest" in load_error(write(folder / "m.json", '{"rules": []}'))


def test_the_format_follows_the_content_when_the_extension_does_not_say(folder):
    as_manifest = load_profiles(write(folder / "profiles", (manifest(folder)).read_text()))
    assert as_manifest.resolve(SFT).values["num_beams"] == 20
    as_rules = load_profiles(write(folder / "profiles.conf", '{"rules": [{"match": "*", "seed": 5}]}'))
    assert as_rules.resolve("m").values == {"seed": 5}


# --- the file as the fleet sees it -----------------------------------------------------------


def edit(path: Path, text: str) -> None:
    """Rewrite the file so that its stat surely differs (a later mtime, whatever the clock's grain)."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text, encoding="utf-8")
    later = before + 5_000_000_000
    os.utime(path, ns=(later, later))


def test_refresh_loads_a_changed_file(folder):
    path = rules(folder, "rules:\n  - match: '*'\n    seed: 1\n")
    live = ProfilesFile(path)
    assert live.refresh() is False  # unchanged
    edit(path, "rules:\n  - match: '*'\n    seed: 2\n")
    assert live.refresh() is True
    assert live.profiles.resolve("m").values == {"seed": 2}
    assert live.refresh() is False


def test_an_invalid_edit_keeps_the_old_profiles_and_is_logged_once(folder, caplog):
    path = rules(folder, "rules:\n  - match: '*'\n    seed: 1\n")
    live = ProfilesFile(path)
    edit(path, "rules:\n  - match: '*'\n    seed: one\n")
    with caplog.at_level(logging.INFO, logger="sidecar.fleet.profiles"):
        assert live.refresh() is False
        assert live.refresh() is False
        assert live.refresh() is False
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and errors[0].levelno == logging.ERROR
    message = errors[0].getMessage()
    assert str(path) in message and "rule 1: seed: expected an integer, got 'one'" in message
    assert "the previous profiles stay in use" in message and "\n" not in message
    assert live.profiles.resolve("m").values == {"seed": 1}

    caplog.clear()
    edit(path, "rules: {}\n")  # another bad edit: logged again
    with caplog.at_level(logging.INFO, logger="sidecar.fleet.profiles"):
        assert live.refresh() is False
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
    edit(path, "rules:\n  - match: '*'\n    seed: 3\n")
    assert live.refresh() is True
    assert live.profiles.resolve("m").values == {"seed": 3}


def test_a_deleted_file_keeps_the_old_profiles_with_one_warning(folder, caplog):
    path = rules(folder, "rules:\n  - match: '*'\n    seed: 1\n")
    live = ProfilesFile(path)
    path.unlink()
    with caplog.at_level(logging.INFO, logger="sidecar.fleet.profiles"):
        assert live.refresh() is False
        assert live.refresh() is False
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert str(path) in warnings[0].getMessage() and "previous profiles stay in use" in warnings[0].getMessage()
    assert live.profiles.resolve("m").values == {"seed": 1}
    edit(path, "rules:\n  - match: '*'\n    seed: 4\n")  # put back
    assert live.refresh() is True
    assert live.profiles.resolve("m").values == {"seed": 4}


def test_a_file_invalid_at_start_is_a_config_error(folder):
    with pytest.raises(ConfigError, match="rule 1: unknown key 'sed'"):
        ProfilesFile(rules(folder, "rules:\n  - match: '*'\n    sed: 1\n"))


# --- the example -----------------------------------------------------------------------------


def test_the_example_profiles_resolve_the_example_tree():
    profiles = load_profiles(ROOT / "examples" / "profiles.yaml")
    sft = profiles.resolve(SFT)
    assert sft.values == {"num_beams": 50, "max_new_tokens": 256, "batch_size": 8, "category": "Instruments_grec",
                          "test_data_path": "data/Instruments_grec/sft/test.json",
                          "index_path": "data/Instruments_grec/id2sid.json"}
    beauty = profiles.resolve("Beauty-grec-sft-qwen4B-4-cb16-dsz0")
    assert beauty.values["category"] == "Beauty_grec"
    assert beauty.values["test_data_path"] == "data/Beauty_grec/sft/test.json"
    assert beauty.source == sft.source
    rl = profiles.resolve("Instruments-grec-rl-grpo-cb64")
    assert rl.values["num_beams"] == 20 and rl.values["eval_timeout_seconds"] == 7200.0
    assert rl.values["index_path"] == "data/Instruments_grec/id2sid.json"
    assert rl.source.startswith("profiles.yaml rule 2 (regex")
    assert profiles.resolve("Instruments-grec-sft-debug-2").values is None
    assert profiles.resolve("Toys-grec-sft-qwen4B").values["eval_split"] == "valid"
