"""The configuration module: reference configs load unchanged, every problem is reported at once."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from arrows.config import (
    Config,
    ConfigError,
    ResolvedPaths,
    check_paths,
    config_from_dict,
    dataset_problems,
    load_config,
)
from arrows.errors import ArrowsError, InputError

REFERENCE = Path(__file__).resolve().parent.parent.parent / "shared" / "reference-configs"
REFERENCE_FILES = ["en_small.json", "en_med_backwards.json", "gru_en_med.json", "later_blueprint.json"]


def reference(name: str) -> Path:
    path = REFERENCE / name
    if not path.exists():
        pytest.skip("../shared/reference-configs is not beside the project")
    return path


def small(**training) -> dict:
    """A small valid GPT config as a dict."""
    return {
        "model_params": {"vocab_size": 100, "n_layers": 2, "n_heads": 2, "embed_dim": 16, "attn_length": 8},
        "training_params": {"dataset_folder": "data", "batch_size": 4, **training},
        "optim_params": {"lr": 3e-4},
    }


def problems_of(d: dict, **kw) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_dict(d, **kw)
    return info.value.problems


# ---------------------------------------------------------------------------------------------
# The reference configs, unchanged


def test_en_small_loads_unchanged():
    c = load_config(reference("en_small.json"))
    assert (c.model.model_type, c.model.n_layers, c.model.n_heads, c.model.embed_dim, c.model.attn_length) == ("gpt", 10, 10, 380, 256)
    assert c.model.embd_dropout == c.model.dropout == 0.1  # null = same as dropout
    t = c.training
    assert (t.batch_size, t.aggregate, t.backwards, t.steps_to_train) == (250, 1, False, None)
    assert (t.save_every, t.backup_every, t.step_log, t.valid_steps) == (3000, 15000, 400, 1000)
    # The reference's meaning of valid_steps: 1000 batches every 20,000 steps (its train.py).
    assert (t.valid_every, t.valid_batches) == (20_000, 1000)
    assert t.save_loc == "runs" and t.run_name == "en_small_fw" and t.direction == "forward"
    o = c.optim
    assert (o.lr, o.warmup_steps, o.oscil_steps, o.lr_shrink, o.lr_init, o.lr_min) == (1e-4, 4000, 200000, 0.85, 1e-7, 1e-6)
    assert c.schedule == "cosine" and c.notes == []
    assert c.source_path == reference("en_small.json").absolute()


def test_en_med_backwards_loads_unchanged():
    c = load_config(reference("en_med_backwards.json"))
    assert (c.model.n_layers, c.model.n_heads, c.model.embed_dim) == (24, 16, 1024)
    assert c.training.backwards and c.training.direction == "backward"
    assert (c.training.batch_size, c.training.aggregate, c.training.val_batch_size) == (90, 2, 90)
    assert c.training.save_every == 1000  # absent there: the default
    assert c.training.run_name == "en_med_backwards_bw"


def test_gru_config_needs_a_model_type():
    path = reference("gru_en_med.json")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert "model_params.model_type" in message and "--model gru" in message and "lstm" in message
    assert len(info.value.problems) == 1  # nothing else is wrong with it

    c = load_config(path, model_type="gru")
    assert c.model.model_type == "gru" and c.model.n_heads is None
    assert (c.model.n_layers, c.model.embed_dim, c.model.attn_length) == (3, 512, 256)  # desired_attn_length
    assert (c.model.dropout, c.model.embd_dropout) == (0.0, 0.05)
    assert load_config(path, model_type="lstm").model.model_type == "lstm"

    d = json.loads(path.read_text())
    d["model_params"]["model_type"] = "lstm"
    assert config_from_dict(d).model.model_type == "lstm"


def test_later_generation_loads_unchanged():
    c = load_config(reference("later_blueprint.json"))
    t = c.training
    assert t.save_loc == "runs/" and t.tokenizer_path == "modules/tokenizers/shake_test_tokenizer"
    assert (t.batch_size, t.val_batch_size, t.steps_to_train, t.permutation) == (10, 5, 1000, None)
    assert (t.valid_steps, t.valid_every, t.valid_batches) == (10, 200, 10)  # 10 batches of 5 every 200 steps
    assert t.cooldown_finish == 0.15 and c.schedule == "cooldown"
    assert t.fast_scrambling is False  # an exact shuffle, which arrows always does: nothing to say
    assert not any("fast_scrambling" in n for n in c.notes)
    o = c.optim  # only lr and warmup_steps given: the rest are defaults
    assert (o.lr, o.warmup_steps, o.oscil_steps, o.lr_shrink, o.lr_init, o.lr_min) == (1e-4, 10, None, 1.0, 1e-7, 1e-6)
    assert (o.weight_decay, o.betas, o.clip) == (0.01, (0.9, 0.999), 1.0)


def test_permutation_era_config_with_both_save_locations_loads_unchanged():
    # The training_params of the reference's TrainParams/permutations/fr/fr_512_fw.json, as written
    # (its perm_zoo files are the same plus a 256-entry permutation): both save_loc and
    # state_save_loc, a cooldown with lr_init/lr_min. Its later code reads save_loc.
    d = {
        "model_params": {"vocab_size": 50257, "n_layers": 24, "n_heads": 16, "embed_dim": 1024, "attn_length": 512,
                         "mlp_ratio": 4.0, "dropout": 0.1, "embd_dropout": None},
        "training_params": {"dataset_folder": "datavol/french/french.h5", "tokenizer_path": "modules/tokenizers/fr_tokenizer",
                            "batch_size": 60, "aggregate": 3, "steps_to_train": None, "save_every": 3000, "backwards": False,
                            "backup_every": 15000, "step_log": 200, "valid_steps": 1000, "state_save_loc": "runs",
                            "save_loc": "datavol/refinements/runs/", "fast_scrambling": False, "cooldown_finish": 0.15},
        "optim_params": {"lr": 0.0001, "warmup_steps": 5000, "lr_init": 1e-07, "lr_min": 1e-06},
    }  # fmt: skip
    c = config_from_dict(d)
    assert c.training.save_loc == "datavol/refinements/runs/" and c.schedule == "cooldown"
    d["training_params"]["permutation"] = list(range(511, -1, -1))  # fr_256_bw.json's kind (no backwards key)
    assert config_from_dict(d).training.direction == "permutation"


@pytest.mark.parametrize("name", REFERENCE_FILES)
def test_to_dict_round_trips(name, tmp_path):
    kw = {"model_type": "gru"} if name.startswith("gru") else {}
    c = load_config(reference(name), **kw)
    d = c.to_dict()
    assert list(d) == ["model_params", "training_params", "optim_params"]
    again = config_from_dict(json.loads(json.dumps(d)))  # JSON-able, and no model_type needed any more
    assert again == c
    assert again.to_dict() == d
    # saved in a run folder and read back as a file
    saved = tmp_path / "config.json"
    saved.write_text(c.to_json())
    assert load_config(saved) == c
    assert load_config(saved).training.run_name == c.training.run_name


def test_defaults_are_filled_in():
    d = config_from_dict(small()).to_dict()
    assert d["model_params"] == {
        "model_type": "gpt", "vocab_size": 100, "n_layers": 2, "n_heads": 2, "embed_dim": 16, "attn_length": 8,
        "mlp_ratio": 4.0, "dropout": 0.1, "embd_dropout": 0.1, "attention": "auto", "head_loss": "auto",
    }  # fmt: skip
    assert d["training_params"] == {
        "dataset_folder": "data", "tokenizer_path": None, "batch_size": 4, "val_batch_size": 4, "aggregate": 1,
        "backwards": False, "permutation": None, "steps_to_train": None, "save_every": 1000, "backup_every": None,
        "step_log": 100, "valid_steps": 1000, "valid_every": 20000, "valid_batches": 1000, "valid_fraction": 0.01,
        "sample_every": 20000, "sample_tokens": 64, "save_loc": "runs", "run_name": "run_fw", "seed": 0, "threads": 2,
        "fast_scrambling": False, "cooldown_finish": None, "stride": None,
    }  # fmt: skip
    assert d["optim_params"] == {
        "lr": 3e-4, "warmup_steps": 0, "oscil_steps": None, "lr_shrink": 1.0, "lr_init": 1e-7, "lr_min": 1e-6,
        "weight_decay": 0.01, "betas": [0.9, 0.999], "clip": 1.0,
    }  # fmt: skip


def test_optim_section_may_be_left_out_and_ints_are_floats():
    d = small()
    del d["optim_params"]
    d["model_params"]["dropout"] = 0
    c = config_from_dict(d)
    assert c.optim.lr == 1e-4 and isinstance(c.model.dropout, float) and c.model.dropout == 0.0


def test_valid_every_and_sample_every():
    # valid_steps as the reference reads it: validation batches, validated every 20 × valid_steps.
    c = config_from_dict(small(valid_steps=500))
    assert (c.training.valid_every, c.training.valid_batches, c.training.sample_every) == (10_000, 500, 10_000)
    assert not c.notes
    c = config_from_dict(small(valid_steps=500, valid_every=200, sample_every=0))
    assert (c.training.valid_every, c.training.valid_batches, c.training.sample_every) == (200, 500, 0)
    assert any("valid_every (200) sets the validation cadence" in n and "10000" in n for n in c.notes)
    assert config_from_dict(c.to_dict()) == c
    # An explicit null: the whole validation split at each validation.
    c = config_from_dict(small(valid_steps=500, valid_batches=None))
    assert c.training.valid_batches is None and config_from_dict(c.to_dict()) == c


def test_run_name_follows_stem_and_direction(tmp_path):
    path = tmp_path / "french_small.json"
    path.write_text(json.dumps(small()))
    assert load_config(path).training.run_name == "french_small_fw"
    bw = load_config(path, overrides={"training_params": {"backwards": True}})
    assert bw.training.run_name == "french_small_bw"
    assert load_config(path, overrides={"training_params": {"run_name": "x"}}).training.run_name == "x"
    assert "run_name" in problems_of(small(run_name="a/b"))[0]


# ---------------------------------------------------------------------------------------------
# Every problem at once


def test_five_mistakes_are_all_reported(tmp_path):
    d = small()
    d["training_params"]["bacth_size"] = 8  # 1. a typo
    del d["model_params"]["embed_dim"]  # 2. missing
    d["training_params"]["aggregate"] = "2"  # 3. wrong type
    d["model_params"]["dropout"] = 1.5  # 4. impossible value
    d["optim_params"]["lr_shrink"] = 0  # 5. another
    path = tmp_path / "mistakes.json"
    path.write_text(json.dumps(d, indent=2))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    e = info.value
    lines = str(e).splitlines()
    assert lines[0].startswith(str(path)) and "5 problems" in lines[0]
    assert len(e.problems) == 5 and len(lines) == 6
    assert "training_params.bacth_size: unknown key; did you mean batch_size?" in e.problems
    assert any(p.startswith("model_params.embed_dim: missing") for p in e.problems)
    assert any(p.startswith("training_params.aggregate: expected an integer") for p in e.problems)
    assert any(p.startswith("model_params.dropout: must be in [0, 1)") for p in e.problems)
    assert any(p.startswith("optim_params.lr_shrink: must be > 0") for p in e.problems)
    assert isinstance(e, InputError) and isinstance(e, ArrowsError) and isinstance(e, ValueError)
    assert e.path == path


def test_unknown_sections_and_missing_sections():
    d = small()
    d["optm_params"] = d.pop("optim_params")
    del d["training_params"]
    ps = problems_of(d)
    assert "optm_params: unknown section; did you mean optim_params?" in ps
    assert "training_params: missing section" in ps
    assert any(p.startswith("model_params") for p in problems_of({"model_params": [], "training_params": {}}))
    with pytest.raises(ConfigError):
        config_from_dict([1, 2])


def test_unknown_key_without_a_close_one_lists_the_valid_keys():
    (p,) = problems_of(small(zzz=1))
    assert p.startswith("training_params.zzz: unknown key (valid: dataset_folder, ")


@pytest.mark.parametrize(
    "section,key,value,expect",
    [
        ("training_params", "batch_size", True, "expected an integer, got true (a boolean)"),
        ("training_params", "batch_size", 4.0, "expected an integer, got 4.0 (write 4)"),
        ("training_params", "batch_size", "4", 'expected an integer, got "4"'),
        ("training_params", "batch_size", None, "expected an integer, got null"),
        ("training_params", "batch_size", 0, "must be > 0"),
        ("training_params", "backwards", 1, "expected true or false, got 1"),
        ("training_params", "dataset_folder", 3, "expected a string"),
        ("training_params", "valid_fraction", 0, "must be in (0, 1)"),
        ("training_params", "cooldown_finish", 1.0, "must be in (0, 1)"),
        ("training_params", "cooldown_finish", 0, "must be in (0, 1)"),
        ("training_params", "threads", 0, "must be in 1..1024"),
        ("training_params", "threads", 40_000, "must be in 1..1024"),  # a traceback: the loader's threads could not start
        ("training_params", "seed", -1, "must be ≥ 0"),
        # the loader refused it deep inside: "seed must be an integer of at least 0", no key, no file
        ("training_params", "seed", 2**64 - 1, "expected an integer below 2^63"),
        ("training_params", "batch_size", 2**63, "expected an integer below 2^63"),
        ("model_params", "dropout", -0.1, "must be in [0, 1)"),
        ("model_params", "embd_dropout", 1, "must be in [0, 1)"),
        ("model_params", "n_heads", 3, "3 does not divide embed_dim 16"),
        # the loader refused it at the start: "attention length 1 is too short", without the key
        ("model_params", "attn_length", 1, "must be ≥ 2 (a window is the BOS and at least one token to predict)"),
        ("model_params", "model_type", "GPT", "did you mean gpt?"),
        ("model_params", "attention", "flash", "must be one of 'auto', 'sdpa', 'flex', 'triton', 'plain'"),
        ("model_params", "vocab_size", float("nan"), "expected an integer"),
        ("optim_params", "lr", float("inf"), "expected a finite number"),
        ("optim_params", "lr", True, "(a boolean)"),
        ("optim_params", "lr_shrink", -1, "must be > 0"),
        ("optim_params", "lr_min", 1e-3, "is above lr"),
        ("optim_params", "betas", [0.9, 1.0], "each must be in [0, 1)"),
        ("optim_params", "betas", 0.9, "expected a list"),
        ("optim_params", "clip", 0, "must be > 0"),
    ],
)
def test_types_and_values(section, key, value, expect):
    d = small()
    d[section][key] = value
    ps = problems_of(d)
    assert len(ps) == 1, ps
    assert ps[0].startswith(f"{section}.{key}: ") and expect in ps[0], ps[0]


def test_null_where_it_has_a_meaning():
    d = small(steps_to_train=None, backup_every=None, tokenizer_path=None, valid_batches=None)
    d["optim_params"].update(oscil_steps=None, clip=None)
    c = config_from_dict(d)
    assert c.training.steps_to_train is None and c.optim.clip is None


def test_gpt_needs_heads_and_rnn_refuses_them():
    d = small()
    del d["model_params"]["n_heads"]
    (p,) = problems_of(d)
    assert p.startswith("model_params.n_heads: missing") and "model_type" in p
    (p,) = problems_of(small(), model_type="gru")
    assert p.startswith("model_params.n_heads: only for model_type 'gpt'")
    d["model_params"]["model_type"] = "lstm"
    assert config_from_dict(d).model.n_heads is None


def test_model_type_argument_wins_over_the_key():
    d = small()
    del d["model_params"]["n_heads"]
    d["model_params"]["model_type"] = "gru"
    c = config_from_dict(d, model_type="lstm")
    assert c.model.model_type == "lstm" and any("replaced" in n for n in c.notes)
    assert "model_params.model_type" in problems_of(small(), model_type="rnn")[0]


def test_save_loc_and_state_save_loc():
    assert config_from_dict(small(state_save_loc="old")).training.save_loc == "old"
    assert config_from_dict(small(save_loc="new")).training.save_loc == "new"
    # Both, as real configs of the reference's later code have them (e.g. its
    # TrainParams/permutations/fr/fr_512_fw.json: "state_save_loc": "runs", "save_loc":
    # "datavol/refinements/runs/"): that code reads save_loc and ignores state_save_loc. DESIGN §2:
    # configs written for the reference run unchanged, with the same meaning.
    both = config_from_dict(small(save_loc="new", state_save_loc="old"))
    assert both.training.save_loc == "new"
    assert any(n.startswith('training_params.state_save_loc ("old") is ignored') for n in both.notes)
    assert "state_save_loc" not in both.to_dict()["training_params"]
    # an override of one replaces the other
    c = config_from_dict(small(state_save_loc="old"), overrides={"training_params": {"save_loc": "cli"}})
    assert c.training.save_loc == "cli"
    assert "save_loc" in c.to_dict()["training_params"] and "state_save_loc" not in c.to_dict()["training_params"]


def test_attn_length_and_desired_attn_length_together():
    d = small()
    d["model_params"]["desired_attn_length"] = 8
    (p,) = problems_of(d)
    assert p.startswith("model_params.desired_attn_length:") and "not both" in p


def test_permutations():
    c = config_from_dict(small(permutation=[1, 0, 3, 2, 5, 4, 7, 6]))
    assert c.training.permutation == (1, 0, 3, 2, 5, 4, 7, 6)
    assert c.training.direction == "permutation" and c.training.run_name == "run_perm"
    assert config_from_dict(c.to_dict()) == c
    assert c.to_dict()["training_params"]["permutation"] == [1, 0, 3, 2, 5, 4, 7, 6]

    (p,) = problems_of(small(permutation=[0, 1, 2]))
    assert p.startswith("training_params.permutation: not a permutation of range(8)") and "has 3 entries" in p
    (p,) = problems_of(small(permutation=[0, 1, 2, 3, 4, 5, 6, 6]))
    assert "repeated: 6" in p and "missing: 7" in p
    (p,) = problems_of(small(permutation=[0, 1, 2, 3, 4, 5, 6, 8]))
    assert "out of range: 8" in p
    (p,) = problems_of(small(permutation=[0, 1, 2, 3, 4, 5, 6, 7.0]))
    assert "expected a list of integers" in p
    (p,) = problems_of(small(permutation=list(range(8)), backwards=True))
    assert p.startswith("training_params.permutation: not with backwards: true")
    (p,) = problems_of(small(permutation="0,1"))
    assert "expected a list" in p
    # against the attn_length given under its GRU name, and given by an override
    d = small(permutation=[2, 1, 0])
    del d["model_params"]["attn_length"], d["model_params"]["n_heads"]
    d["model_params"]["desired_attn_length"] = 3
    assert config_from_dict(d, model_type="gru").training.permutation == (2, 1, 0)
    assert problems_of(d, model_type="gru", overrides={"model_params": {"attn_length": 4}})[0].startswith("training_params.permutation")
    notes = config_from_dict(d, model_type="gru").notes
    assert any("same as backwards" in n for n in notes)


def test_cooldown_must_fit_with_the_warmup():
    d = small(steps_to_train=100, cooldown_finish=0.5)
    d["optim_params"]["warmup_steps"] = 60
    (p,) = problems_of(d)
    assert p.startswith("optim_params.warmup_steps:") and "do not fit" in p
    d["optim_params"]["warmup_steps"] = 50
    assert config_from_dict(d).schedule == "cooldown"


def test_overrides_are_applied_before_validation_and_leave_the_input_alone():
    d = small()
    before = copy.deepcopy(d)
    c = config_from_dict(d, overrides={"training_params": {"batch_size": 32, "seed": 7}, "optim_params": {"lr": 1e-3}})
    assert (c.training.batch_size, c.training.val_batch_size, c.training.seed, c.optim.lr) == (32, 32, 7, 1e-3)
    assert d == before
    (p,) = problems_of(d, overrides={"training_params": {"batch_size": True}})
    assert p.startswith("training_params.batch_size: expected an integer")
    assert problems_of(d, overrides={"trainig_params": {"seed": 1}}) == ["trainig_params: unknown section; did you mean training_params?"]


def test_bad_json_and_duplicate_keys(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"model_params": {,}}')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(str(path)) and "line 1" in str(info.value)
    path.write_text('{"model_params": {"n_layers": "2')
    with pytest.raises(ConfigError, match="not valid JSON: Unterminated string starting at line 1, column 31"):  # not "at at"
        load_config(path)
    text = json.dumps(small())
    path.write_text(text.replace('"batch_size": 4', '"batch_size": 4, "batch_size": 8'))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == ["training_params.batch_size: given twice; keep one"]
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "absent.json")


@pytest.mark.parametrize("depth", [500, 100_000])
def test_a_config_nested_deeply_is_named_not_a_traceback(tmp_path, depth):
    """Nested lists ended in RecursionError's traceback: 100,000 levels in JSON's reader, 500 in
    the copy the checks make."""
    d = small()
    text = json.dumps(d).replace('"batch_size": 4', f'"batch_size": {"[" * depth}4{"]" * depth}')
    path = tmp_path / "deep.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (problem,) = info.value.problems
    if depth == 500:
        assert problem.startswith("training_params.batch_size: lists or objects nested more than 32 levels deep"), problem
    else:
        assert problem.startswith("not a config: its lists or objects are nested thousands of levels deep"), problem
    # Listed beside those problems when the file can be read; the deep one, unreadable, adds none.
    missing = dataset_problems(path)
    assert (missing == []) if depth > 500 else missing[0].startswith("training_params.dataset_folder: 'data' not found"), missing


def test_a_config_saved_by_a_windows_editor(tmp_path):
    # UTF-8 with a byte-order mark loads; UTF-16 is named (it ended in a UnicodeDecodeError traceback).
    path = tmp_path / "c.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(small()).encode())
    assert load_config(path).training.batch_size == 4
    path.write_bytes(json.dumps(small()).encode("utf-16"))
    with pytest.raises(ConfigError, match="not UTF-8 text: byte 0xff at offset 0 \\(it looks like UTF-16\\); save it as UTF-8"):
        load_config(path)


def test_error_pickles():
    import pickle

    with pytest.raises(ConfigError) as info:
        config_from_dict(small(batch_size=0))
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value)


# ---------------------------------------------------------------------------------------------
# check_paths


def test_check_paths_missing_folder_and_small_vocabulary(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "cfgs" / "c.json"
    cfg.parent.mkdir()
    cfg.write_text(json.dumps(small()))
    c = load_config(cfg)
    with pytest.raises(ConfigError) as info:
        check_paths(c, vocab_size_of_data=50257)
    e = info.value
    assert str(e).startswith(str(cfg))
    assert len(e.problems) == 2
    assert e.problems[0].startswith("training_params.dataset_folder: 'data' not found")
    assert str(tmp_path / "data") in e.problems[0] and str(cfg.parent / "data") in e.problems[0]
    # the reference later_blueprint's tokenizer_path points nowhere too: fine once the data is there
    blueprint = json.loads(reference("later_blueprint.json").read_text())
    blueprint["training_params"]["dataset_folder"] = str(tmp_path)
    c = config_from_dict(blueprint)
    assert check_paths(c, vocab_size_of_data=50257).tokenizer_path is None
    assert e.problems[1] == "model_params.vocab_size: 100 is smaller than the data's vocabulary (50257 ids)"


def test_check_paths_resolution(tmp_path, monkeypatch):
    cfg = tmp_path / "cfgs" / "c.json"
    (cfg.parent / "data").mkdir(parents=True)
    cfg.write_text(json.dumps(small()))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    c = load_config(cfg)
    paths = check_paths(c, vocab_size_of_data=100)  # equal is fine
    assert isinstance(paths, ResolvedPaths) and paths.dataset_folder == cfg.parent / "data"
    assert paths.tokenizer_path is None
    assert any("beside the config file" in n for n in c.notes)
    # the current directory comes first
    (elsewhere / "data").mkdir()
    c = load_config(cfg)
    assert check_paths(c, vocab_size_of_data=None).dataset_folder == elsewhere / "data"
    assert not any("beside" in n for n in c.notes)
    # absolute paths, and the tokenizer
    c = config_from_dict(small(dataset_folder=str(elsewhere / "data"), tokenizer_path="tok.json"))
    assert check_paths(c, vocab_size_of_data=None).tokenizer_path is None  # optional: a note only
    assert any(n.startswith("training_params.tokenizer_path 'tok.json' not found") for n in c.notes)
    (elsewhere / "tok.json").write_text("{}")
    assert check_paths(c, vocab_size_of_data=None).tokenizer_path == elsewhere / "tok.json"
    c = config_from_dict(small(dataset_folder=str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError, match="does not exist"):
        check_paths(c, vocab_size_of_data=None)


# ---------------------------------------------------------------------------------------------
# Housekeeping


def test_every_key_is_documented():
    import arrows.config as module

    for keys in (module._MODEL_KEYS, module._TRAINING_KEYS, module._OPTIM_KEYS):
        for key in keys:
            for name in (key.name, *key.aliases):
                assert f"`{name}`" in module.__doc__, name


def test_no_torch_import():
    code = "import sys, arrows.config; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_config_equality_ignores_notes_and_source():
    a = config_from_dict(small(), source_path="a.json")
    b = config_from_dict(small(run_name="a_fw"))
    assert isinstance(a, Config) and a == b and a.source_path != b.source_path


def test_with_paths_makes_them_absolute(tmp_path, monkeypatch):
    cfg = tmp_path / "c.json"
    (tmp_path / "data").mkdir()
    (tmp_path / "tok.json").write_text("{}")
    cfg.write_text(json.dumps(small(tokenizer_path="tok.json")))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    c = load_config(cfg)
    resolved = c.with_paths(check_paths(c, vocab_size_of_data=None))
    assert resolved.training.dataset_folder == str(tmp_path / "data")
    assert resolved.training.tokenizer_path == str(tmp_path / "tok.json")
    assert c.training.dataset_folder == "data"  # the original is left alone
    again = config_from_dict(resolved.to_dict())
    assert check_paths(again, vocab_size_of_data=None).dataset_folder == tmp_path / "data"


@pytest.mark.parametrize("name", REFERENCE_FILES)
def test_model_dict_builds_the_model(name):
    pytest.importorskip("torch")
    from arrows.models import count_parameters

    kw = {"model_type": "gru"} if name.startswith("gru") else {}
    c = load_config(reference(name), **kw)
    d = c.model_dict()
    assert d["model_type"] == c.model.model_type and d["attn_length"] == c.model.attn_length
    assert count_parameters(d) > 0
    lstm = load_config(reference("gru_en_med.json"), model_type="lstm")
    assert count_parameters(lstm.model_dict()) > 0


def test_an_lr_shrink_above_1_is_said():
    # Accepted without a word: the learning rate then grew at every restart until the loss was NaN.
    d = small()
    d["optim_params"]["lr_shrink"] = 1.5
    assert any(n.startswith("optim_params.lr_shrink 1.5 is above 1") and "grows without bound" in n for n in config_from_dict(d).notes)
    d["optim_params"]["lr_shrink"] = 0.85
    assert not any("lr_shrink" in n for n in config_from_dict(d).notes)


def test_a_resolved_config_repeats_only_the_notes_of_what_the_user_wrote():
    # A study's run configs and a run's config.json hold every default: each of their runs said
    # "fast_scrambling has no effect" and "valid_every (200) sets the validation cadence" for
    # settings the user never wrote.
    given = config_from_dict(small(valid_every=200))
    assert given.notes == [] and config_from_dict(given.to_dict()).notes == []
    scrambled = config_from_dict(small(fast_scrambling=True, valid_steps=500, valid_every=200))
    assert len(scrambled.notes) == 2 and config_from_dict(scrambled.to_dict()).notes == scrambled.notes
