"""results.json as one record (``llu.results.RunResults``): written by the trainer with its schema
version, read back field for field, version 1 files still read; ablation configs declare themselves."""
import glob
import json
import os

import pytest
import yaml

from llu.results import SCHEMA_VERSION, ResultsError, RunResults

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def a_record(**fields):
    values = dict(dataset="Shapes", trainer="LLU", backbone="toy", seed=1, shots=16, subsample_classes="base",
                  accuracy=81.25, num_classes=2, config_files={"dataset": "d.yaml", "trainer": "t.yaml"},
                  train_dataset="Shapes", train_subsample_classes="base", dataset_reader="Shapes", eval_split="test",
                  error=18.75, macro_f1=80.0, per_class_accuracy={"circle": 75.0, "square": 87.5},
                  elapsed_seconds=1.5, timing={"training_seconds": 1.0}, train_shots=16, ablation="no_mask",
                  extras={"llu_regularizer": 1e-4}, provenance={"gpu": "H200", "threads": 1})
    values.update(fields)
    return RunResults(**values)


def test_written_record_has_its_schema_version_and_reads_back_equal(tmp_path):
    record = a_record()
    path = str(tmp_path / "results.json")
    record.write(path)
    content = json.loads(open(path).read())
    assert content["schema_version"] == SCHEMA_VERSION and list(content)[0] == "schema_version"
    assert content["llu_regularizer"] == 1e-4 and "extras" not in content  # extras at the top level, as before
    assert list(content)[-1] == "provenance"
    assert RunResults.from_json(path) == record


def test_a_file_without_schema_version_reads_as_version_1(tmp_path):
    content = a_record().as_dict()
    del content["schema_version"], content["ablation"]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(content))
    record = RunResults.from_json(str(path))
    assert record.schema_version == 1 and record.ablation is None
    assert record.extras == {"llu_regularizer": 1e-4} and record.accuracy == content["accuracy"]
    assert json.loads(record.to_json()) == {"schema_version": 1, **content}  # written back as what it is


def test_a_current_file_must_say_its_ablation(tmp_path):
    content = a_record().as_dict()
    del content["ablation"]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ResultsError, match=r"missing field 'ablation' \(expected a string\)"):
        RunResults.from_json(str(path))


def test_extras_must_be_declared_by_the_trainer():
    a_record().check_extras({"llu_regularizer": float}, "LLU")
    with pytest.raises(TypeError, match="LLU.extra_results writes 'llu_regularizer', which its RESULT_EXTRAS"):
        a_record().check_extras({}, "LLU")
    with pytest.raises(TypeError, match="'llu_regularizer' is str"):
        a_record(extras={"llu_regularizer": "small"}).check_extras({"llu_regularizer": float}, "LLU")


def test_every_ablation_config_declares_its_ablation():
    """configs/trainers/LLU/<c>_<ablation>.yaml say TRAINER.LLU.ABLATION: <ablation>; the defaults say nothing."""
    declared = {}
    for path in sorted(glob.glob(os.path.join(REPO, "configs", "trainers", "LLU", "*.yaml"))):
        llu = (yaml.safe_load(open(path)).get("TRAINER") or {}).get("LLU") or {}
        declared[os.path.basename(path)[:-len(".yaml")]] = llu.get("ABLATION")
    defaults = {stem for stem, ablation in declared.items() if ablation is None}
    assert defaults == {"toy", "vit_b16"}
    for stem, ablation in declared.items():
        assert stem in defaults or any(stem == f"{default}_{ablation}" for default in defaults), stem


def test_the_trainer_writes_the_record_with_its_ablation(tmp_path, tiny_clip_file, monkeypatch):
    from llu import train
    from conftest import write_image_folder
    from llu.engine import build_trainer, set_random_seed
    from llu.trainers.llu import LLU

    write_image_folder(str(tmp_path / "data" / "my_images"), per_class=4)
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("LLU_CACHE", str(tmp_path / "cache"))
    argv = ["--root", str(tmp_path / "data"), "--trainer", "LLU", "--dataset-config-file",
            "configs/datasets/imagefolder.yaml", "--config-file", "configs/trainers/LLU/toy_no_mask.yaml",
            "--backbone", tiny_clip_file, "--output-dir", str(tmp_path / "out"), "--seed", "1",
            "DATASET.NUM_SHOTS", "2", "OPTIM.MAX_EPOCH", "1", "FEATURES.AUG_VIEWS", "1"]
    cfg = train.setup_cfg(train.build_parser().parse_args(argv))
    set_random_seed(cfg.SEED)
    build_trainer(cfg).train()
    path = str(tmp_path / "out" / "results.json")
    content = json.loads(open(path).read())
    assert content["schema_version"] == SCHEMA_VERSION and content["ablation"] == "no_mask"
    record = RunResults.from_json(path)
    assert set(record.extras) == set(LLU.RESULT_EXTRAS) and record.trainer == "LLU"


def test_a_results_file_nested_too_deeply_is_one_line(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ResultsError, match="results.json: not a readable JSON file"):
        RunResults.from_json(str(path))
