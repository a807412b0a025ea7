import subprocess
import sys

import minispan


def test_public_api_names_resolve():
    for name in minispan.__all__:
        assert getattr(minispan, name) is not None
    names = dir(minispan)  # after every name was looked up (and cached in the module's globals)
    assert "load_model" in names and len(names) == len(set(names))


def test_pipeline_stays_the_function_after_its_module_is_imported():
    code = "import minispan.answer, minispan; print(callable(minispan.pipeline) and minispan.pipeline.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "pipeline"


def test_evaluation_does_not_import_torch():
    # evaluate.py should start as fast as the official script: no torch import on its path.
    code = "import sys, minispan, minispan.metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_documented_module_paths_work_after_import_minispan():
    # DESIGN's public API names minispan.metrics.squad_v2_metrics: no `import minispan.metrics` needed.
    code = ("import minispan; "
            "print(minispan.metrics.squad_v2_metrics.__name__, minispan.metrics.normalize_answer('The Cat.')); "
            "print(hasattr(minispan, 'no_such_name'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["squad_v2_metrics", "cat", "False"]
