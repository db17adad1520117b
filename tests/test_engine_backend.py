"""Engine selection by LLU_ENGINE, checked without Dassl installed (docs/dassl.md covers the real Dassl)."""
import ast
import importlib.util
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Import the engine in a fresh interpreter and print the error it raises as "TypeName: message".
IMPORT_ENGINE = """
try:
    from llu import engine
    engine.select_backend()
except Exception as e:
    print(f"{type(e).__name__}: {e}")
    raise SystemExit(1)
"""


def import_engine_error(engine_name):
    env = dict(os.environ, LLU_ENGINE=engine_name, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", IMPORT_ENGINE], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    return result.stdout.rstrip("\n")


def test_unknown_engine_is_a_one_line_user_error_naming_the_variable():
    line = import_engine_error("bogus")
    assert "\n" not in line
    assert line.startswith("UserError: LLU_ENGINE must be 'builtin' or 'dassl'")
    assert "'bogus'" in line


@pytest.mark.skipif(importlib.util.find_spec("dassl") is not None, reason="Dassl is installed here")
def test_dassl_engine_without_dassl_says_how_to_install_it():
    line = import_engine_error("dassl")
    assert "\n" not in line
    assert line.startswith("UserError: LLU_ENGINE=dassl but Dassl is not installed")
    assert "pip install" in line and "Dassl.pytorch" in line


def module_tree(relative_path):
    with open(os.path.join(REPO, relative_path)) as f:
        return ast.parse(f.read())


def top_level_statements(tree):
    for node in tree.body:
        yield node
        if isinstance(node, (ast.Try, ast.If)):
            yield from node.body


def bound_names(relative_path):
    """The names a module binds at its top level (imports, functions, classes, assignments)."""
    bound = set()
    for node in top_level_statements(module_tree(relative_path)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {alias.asname or alias.name for alias in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.Assign):
            bound |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return bound


BACKEND_FILES = ("llu/engine/builtin.py", "llu/engine/dassl_backend.py")


def test_the_engine_names_are_listed_once_and_bound_by_each_backend():
    from llu import engine
    assert len(engine.__all__) == len(set(engine.__all__))
    for path in BACKEND_FILES:
        assert "__all__" not in bound_names(path), f"{path}: the names are listed once, in llu/engine/__init__.py"
        missing = set(engine.__all__) - bound_names(path)
        assert not missing, f"{path} binds no {sorted(missing)}"


def test_a_chosen_backend_binds_the_names_as_module_attributes():
    from llu import engine
    assert engine._backend is not None  # conftest chose it
    for name in engine.__all__:
        assert engine.__dict__[name] is getattr(engine._backend, name)


# A fresh interpreter that reads a name without choosing a backend, then tries to choose Dassl.
READ_BEFORE_CHOOSING = """
from llu.engine import TrainerX
from llu import engine
print(TrainerX.__module__, engine._backend.__name__)
try:
    engine.select_backend("dassl")
except Exception as e:
    print(f"{type(e).__name__}: {e}")
"""


def test_the_first_name_read_without_a_choice_chooses_the_builtin_engine():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("LLU_ENGINE", None)
    result = subprocess.run([sys.executable, "-c", READ_BEFORE_CHOOSING], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    first, second = result.stdout.splitlines()
    assert first == "llu.engine.trainer llu.engine.builtin"
    assert second.startswith("UserError: ") and ("already runs on llu.engine.builtin" in second
                                                 or "Dassl is not installed" in second)


# Dassl 0.6.3's methods of TrainerBase, SimpleTrainer and TrainerX (dassl/engine/trainer.py).
DASSL_TRAINER_METHODS = {
    "__init__", "after_epoch", "after_train", "before_epoch", "before_train", "build_data_loader", "build_model",
    "check_cfg", "close_writer", "detect_anomaly", "forward_backward", "get_current_lr", "get_model_names",
    "init_writer", "load_model", "model_backward", "model_backward_and_update", "model_inference", "model_update",
    "model_zero_grad", "parse_batch_test", "parse_batch_train", "register_model", "resume_model_if_exist",
    "run_epoch", "save_model", "set_model_mode", "test", "train", "update_lr", "write_scalar",
}
BUILTIN_LOOP_HELPERS = {"log_batch", "log_epoch"}  # the built-in run_epoch's, which Dassl's run_epoch replaces
PROJECT_MIXINS = ("ProjectRun", "ModelCheckpoints")  # llu/engine/trainer.py, used by both engines' trainers


def class_members(relative_path, class_names):
    members = set()
    for node in module_tree(relative_path).body:
        if isinstance(node, ast.ClassDef) and node.name in class_names:
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    members.add(item.name)
                elif isinstance(item, ast.Assign):
                    members |= {t.id for t in item.targets if isinstance(t, ast.Name)}
    return members


def test_the_builtin_trainer_classes_add_nothing_to_dassls_but_through_the_shared_mixins():
    # What the project adds to Dassl's trainer lives in the mixins, so the Dassl backend has it too.
    builtin = class_members("llu/engine/trainer.py", ("TrainerBase", "SimpleTrainer", "TrainerX"))
    extra = builtin - DASSL_TRAINER_METHODS - BUILTIN_LOOP_HELPERS
    assert not extra, f"move {sorted(extra)} into ProjectRun or ModelCheckpoints (llu/engine/trainer.py)"


def test_the_dassl_trainers_are_dassls_under_the_shared_mixins():
    classes = {node.name: node for node in module_tree("llu/engine/dassl_backend.py").body
               if isinstance(node, ast.ClassDef)}
    bases = [ast.unparse(base) for base in classes["SimpleTrainer"].bases]
    assert bases == [*PROJECT_MIXINS, "_DasslSimpleTrainer"]
    assert [ast.unparse(base) for base in classes["TrainerX"].bases] == ["SimpleTrainer", "_DasslTrainerX"]
    # Nothing copied from the built-in classes: the Dassl trainers only override Dassl's own methods.
    added = class_members("llu/engine/dassl_backend.py", ("SimpleTrainer", "TrainerX"))
    assert added - DASSL_TRAINER_METHODS <= {"TENSORBOARD_EVENTS", "scalar_step"}  # ProjectRun's hooks for Dassl's scalars


def test_the_builtin_trainer_classes_are_made_of_the_mixins():
    from llu.engine import trainer
    for mixin in PROJECT_MIXINS:
        assert getattr(trainer, mixin) in trainer.TrainerX.__mro__
