"""The package's layers: no import circle anywhere, and the inference half of each family stands alone."""

import ast
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
