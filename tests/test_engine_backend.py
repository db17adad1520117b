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


def imported_names(nodes):
    return {alias.asname or alias.name for node in nodes if isinstance(node, ast.ImportFrom) for alias in node.names}


def module_all(relative_path):
    tree = module_tree(relative_path)
    assignment = next(node for node in tree.body if isinstance(node, ast.Assign)
                      and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets))
    return ast.literal_eval(assignment.value)


def builtin_exports():
    """The names llu/engine/builtin.py imports, which must be its ``__all__``."""
    names = imported_names(module_tree("llu/engine/builtin.py").body)
    assert set(module_all("llu/engine/builtin.py")) == names
    return names


def dassl_backend_all():
    return module_all("llu/engine/dassl_backend.py")


def test_dassl_backend_exports_the_builtin_names():
    from llu import engine
    exports = dassl_backend_all()
    assert len(exports) == len(set(exports))
    assert set(exports) == builtin_exports() == engine.NAMES


def top_level_statements(tree):
    for node in tree.body:
        yield node
        if isinstance(node, (ast.Try, ast.If)):
            yield from node.body


def test_every_name_in_the_dassl_backend_all_is_bound_there():
    bound = set()
    for node in top_level_statements(module_tree("llu/engine/dassl_backend.py")):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {alias.asname or alias.name for alias in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.Assign):
            bound |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    assert set(dassl_backend_all()) <= bound


# Dassl 0.6.3's methods of TrainerBase, SimpleTrainer and TrainerX (dassl/engine/trainer.py).
DASSL_TRAINER_METHODS = {
    "__init__", "after_epoch", "after_train", "before_epoch", "before_train", "build_data_loader", "build_model",
    "check_cfg", "close_writer", "detect_anomaly", "forward_backward", "get_current_lr", "get_model_names",
    "init_writer", "load_model", "model_backward", "model_backward_and_update", "model_inference", "model_update",
    "model_zero_grad", "parse_batch_test", "parse_batch_train", "register_model", "resume_model_if_exist",
    "run_epoch", "save_model", "set_model_mode", "test", "train", "update_lr", "write_scalar",
}
# Used only by the built-in run_epoch, which Dassl's run_epoch replaces.
BUILTIN_LOOP_HELPERS = {"log_batch", "log_epoch"}  # run_epoch's, which Dassl has its own of


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


def test_the_dassl_trainer_has_every_method_the_builtin_trainer_adds_to_dassl():
    builtin = class_members("llu/engine/trainer.py", ("TrainerBase", "SimpleTrainer", "TrainerX"))
    mixin = class_members("llu/engine/dassl_backend.py", ("ProjectTrainerMixin",))
    missing = builtin - DASSL_TRAINER_METHODS - BUILTIN_LOOP_HELPERS - mixin
    assert not missing, f"add {sorted(missing)} to ProjectTrainerMixin in engine/dassl_backend.py"
