"""Every public function, method and class of the installed package says what it does (issue G item 6): a
definition is public when neither it nor a module or class on its path starts with an underscore."""
import ast
from pathlib import Path

import gazekit

PACKAGE = Path(gazekit.__file__).parent


def _public_definitions_without_docstring(root: Path) -> list[str]:
    missing = []

    def visit(node, where: str):
        for child in getattr(node, "body", []):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and \
                    not child.name.startswith("_"):
                if not ast.get_docstring(child):
                    missing.append(f"{where}:{child.lineno} {child.name}")
                if isinstance(child, ast.ClassDef):
                    visit(child, where)

    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part.startswith("_") and part not in ("__init__.py", "__main__.py") for part in rel.parts):
            continue
        visit(ast.parse(path.read_text()), str(rel))
    return missing


def test_every_public_definition_has_a_docstring():
    missing = _public_definitions_without_docstring(PACKAGE)
    assert not missing, f"{len(missing)} public definitions without a docstring: {missing[:20]}"


def test_the_check_sees_a_missing_docstring(tmp_path):
    (tmp_path / "mod.py").write_text('def documented():\n    """Yes."""\n\n\ndef bare():\n    pass\n\n\n'
                                     'def _private():\n    pass\n\n\nclass C:\n    """C."""\n\n    def m(self):\n'
                                     '        pass\n')
    assert _public_definitions_without_docstring(tmp_path) == ["mod.py:5 bare", "mod.py:16 m"]
