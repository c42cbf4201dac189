"""Acceptance 1: identity compatible with the original (a pure derivation, no folders needed)."""

from pathlib import Path

from sidecar.config import build_config
from sidecar.identity import sanitize


def test_identity_matches_the_original_for_the_documented_example():
    args = {
        "repo_root": "/data/GenRec",
        "sft_root": "saves/Instruments-grec-sft-qwen4B-4-cb64-dsz0",
        "test_data_path": "data/Instruments_grec/sft/test.json",
        "index_path": "data/Instruments_grec/id2sid.json",
    }
    config = build_config(args, environ={}, cwd=Path("/"), check_paths=False)
    ident = config.identity
    expected = ('{"model_name":"Instruments-grec-sft-qwen4B-4-cb64-dsz0","dataset":"Instruments_grec",'
                '"cb_setting":"cb64","seed":42,"num_beams":50,"sid_levels":-1,"eval_split":"test",'
                '"sft_root":"/data/GenRec/saves/Instruments-grec-sft-qwen4B-4-cb64-dsz0",'
                '"test_data_path":"/data/GenRec/data/Instruments_grec/sft/test.json",'
                '"index_path":"/data/GenRec/data/Instruments_grec/id2sid.json"}')
    import json
    assert ident.payload == json.loads(expected)
    assert ident.key == "ceaf3cb9f84eae4dc4da"
    assert config.state_file.name == "Instruments-grec-sft-qwen4B-4-cb64-dsz0_ceaf3cb9f84eae4dc4da.json"
    assert config.lock_file.name == "Instruments-grec-sft-qwen4B-4-cb64-dsz0_ceaf3cb9f84eae4dc4da.lock"
    assert config.state_file.parent == Path("/data/GenRec/state/wandb_eval_sidecar")
    assert ident.default_run_id == "eval-ceaf3cb9f84eae4dc4da"
    assert ident.default_run_name == "Instruments-grec-sft-qwen4B-4-cb64-dsz0-eval"


def test_root_that_is_a_checkpoint_takes_its_parents_name():
    config = build_config({"repo_root": "/r", "sft_root": "/r/saves/m-cb128-2/checkpoint-500"}, {}, Path("/"),
                          check_paths=False)
    assert config.identity.model_name == "m-cb128-2"
    assert config.identity.cb_setting == "cb128-2"


def test_dataset_falls_back_to_parent_folder_then_explicit_flags_win():
    config = build_config({"repo_root": "/r", "sft_root": "/r/s/m", "test_data_path": "/x/valid.json"}, {},
                          Path("/"), check_paths=False)
    assert config.identity.dataset == "x"
    assert config.identity.eval_split == "valid"
    assert config.identity.cb_setting == "unknown"
    config = build_config({"repo_root": "/r", "sft_root": "/r/s/m", "dataset": "D", "cb_setting": "cb9",
                           "eval_split": "dev"}, {}, Path("/"), check_paths=False)
    assert (config.identity.dataset, config.identity.cb_setting, config.identity.eval_split) == ("D", "cb9", "dev")


def test_sanitize_is_the_originals_rule():
    assert sanitize("toy-grec-sft-cb16 (run 1)") == "toy-grec-sft-cb16-run-1"
    assert sanitize("..__a b__..") == "a-b"
    assert sanitize("模型") == "unknown"
    assert sanitize("-x-") == "x"
