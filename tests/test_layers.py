"""The package's layers: no import circle anywhere, and the inference half of each family stands alone."""

import ast
import re
import sys

from conftest import ROOT, run_command


def _imports() -> dict[str, set[str]]:
    """module -> the package modules it imports (function-level imports included)."""
    package = ROOT / "colorization"
    modules = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
        for path in package.rglob("*.py")
    }
    edges = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets |= {
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                }
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
        edges[name] = {t for t in targets if t in modules and t != name}
    return edges


def test_no_import_circle_in_the_package():
    edges = _imports()
    state, circles = {}, []

    def visit(module, stack):
        state[module] = "open"
        for target in sorted(edges[module]):
            if state.get(target) == "open":
                circles.append(" -> ".join(stack[stack.index(target) :] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not circles, circles


def test_inference_never_imports_training_code():
    edges = _imports()
    training = {
        "colorization.training",
        "colorization.tasks",
        "colorization.evaluation",
        "colorization.data",
        "colorization.checkpoints",
        "colorization.reproduce",
        "colorization.validation",
        "colorization.optimization",
        "colorization.tracking",
    }
    inference = [
        m
        for m in edges
        if m.startswith("colorization.models")
        or m
        in (
            "colorization.colorizer",
            "colorization.inference",
            "colorization.cli",
            "colorization.color",
            "colorization.images",
            "colorization.metrics",
            "colorization.measure",
        )
    ]
    for module in inference:
        assert not edges[module] & training, (module, edges[module] & training)


def test_loading_and_running_a_cnn_or_gan_imports_no_trainer(cnn_run, gan_run):
    script = f"""
import sys
from PIL import Image
from colorization import load_colorizer
for path in {[str(cnn_run[0]), str(gan_run[0])]!r}:
    load_colorizer(path, device="cpu").colorize(Image.new("RGB", (20, 12), (90, 120, 150)))
loaded = [m for m in ("accelerate", "datasets", "diffusers", "colorization.training", "colorization.tasks",
                      "colorization.data") if m in sys.modules]
print("LOADED", loaded)
"""
    result = run_command([sys.executable, "-c", script])
    assert "LOADED []" in result.stdout, result.stdout


def test_no_class_in_the_package_is_over_250_lines():
    sizes = {}
    for path in (ROOT / "colorization").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                sizes[f"{path.relative_to(ROOT)}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert max(sizes.values()) <= 250, sorted(sizes.items(), key=lambda item: -item[1])[:3]


def test_the_package_face_and_reproduce_import_no_torch():
    script = """
import runpy, sys
import colorization, colorization.version
assert colorization.__version__ and "torch" not in sys.modules, "import colorization imported torch"
sys.argv = ["reproduce", "--help"]
try:
    runpy.run_module("colorization.reproduce", run_name="__main__")
except SystemExit:
    pass
print("TORCH", "torch" in sys.modules)
from colorization import load_colorizer, Colorizer  # the lazy names still work
print("LAZY", callable(load_colorizer), Colorizer.__name__)
"""
    result = run_command([sys.executable, "-c", script])
    assert "TORCH False" in result.stdout and "LAZY True Colorizer" in result.stdout, result.stdout


def test_one_registry_of_families_serves_loading_training_and_reproduce(cnn_run, gan_run, diffusion_run):
    from colorization import load_colorizer, reproduce
    from colorization.families import FAMILIES
    from colorization.tasks import TRAINING_TASKS

    assert list(FAMILIES) == list(TRAINING_TASKS) == [reproduce.family_of(m) for m in reproduce.MODELS][: len(FAMILIES)]
    for name, run in zip(FAMILIES, (cnn_run, gan_run, diffusion_run)):
        assert TRAINING_TASKS[name].model_type == name and (ROOT / FAMILIES[name].script).is_file()
        colorizer = load_colorizer(str(run[0]), "cpu")
        assert type(colorizer) is FAMILIES[name].colorizer_class() and colorizer.model_type == name


def test_the_version_is_written_once():
    version = re.search(r'__version__ = "([^"]+)"', (ROOT / "colorization" / "version.py").read_text()).group(1)
    result = run_command([sys.executable, "-c", "import colorization; print(colorization.__version__)"])
    assert result.stdout.strip() == version and version not in (ROOT / "setup.py").read_text()
