"""No module of gazekit outside gazekit/models/vlm.py reads or writes a private attribute of a VLM.

Interventions go through the public API (`gazekit.intervene`, `VLM.intervene`, `VLM.forward`, `VLM.interventions`),
so the wiring between the core verbs is something users can use too. An AST walk over gazekit/**/*.py flags
`<expr>._name` (not a dunder) where <expr> names a VLM — a variable or attribute whose name contains "vlm"
(`vlm`, `self.vlm`, `session.vlm`, `base_vlm`) — and any access, on anything but `self`/`cls`, to a private name
the VLM class itself defines (`_session`, `_shared`, ...), whatever the variable is called."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "gazekit"
ALLOWED = PACKAGE / "models" / "vlm.py"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def vlm_private_names() -> set[str]:
    """Private attributes and methods the VLM class defines (in gazekit/models/vlm.py)."""
    tree = ast.parse(ALLOWED.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "VLM")
    names = set()
    for node in ast.walk(cls):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _private(node.name):
            names.add(node.name)
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
              and _private(node.attr)):
            names.add(node.attr)
    return names


def _names_a_vlm(expr) -> bool:
    if isinstance(expr, ast.Name):
        return "vlm" in expr.id.lower()
    if isinstance(expr, ast.Attribute):
        return "vlm" in expr.attr.lower()
    return False


def violations(source: str, filename: str = "<source>", vlm_names=None) -> list[str]:
    """Every private VLM attribute access in `source`, as 'file:line: expr._name'."""
    vlm_names = vlm_private_names() if vlm_names is None else vlm_names
    out = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Attribute) or not _private(node.attr):
            continue
        receiver = node.value
        self_like = isinstance(receiver, ast.Name) and receiver.id in ("self", "cls")
        if _names_a_vlm(receiver) or (node.attr in vlm_names and not self_like):
            out.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
    return out


def test_the_check_catches_planted_accesses():
    """The walk is not vacuous: each way of reaching into a VLM is caught, the public API is not."""
    names = vlm_private_names()
    assert {"_session", "_shared"} <= names
    planted = ["vlm._session", "self.vlm._current", "vlm._intervene(rec, 'record')", "session.vlm._stack",
               "model_vlm._anything = 1", "v._session", "w._shared.session"]
    for src in planted:
        assert violations(src, vlm_names=names), f"not caught: {src}"
    for src in ["vlm.intervene(rec)", "vlm.forward(prep)", "vlm.interventions", "self._session",
                "prep._inputs", "vlm.__class__"]:
        assert not violations(src, vlm_names=names), f"false alarm: {src}"


def test_no_module_outside_vlm_py_touches_vlm_private_attributes():
    names = vlm_private_names()
    found = []
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20  # the walk sees the package
    for path in files:
        if path == ALLOWED:
            continue
        found += violations(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)), names)
    assert not found, ("modules reach into a VLM's private attributes; use the public API (gazekit.intervene, "
                       "vlm.intervene, vlm.forward, vlm.interventions) or add a public method to VLM:\n"
                       + "\n".join(found))
