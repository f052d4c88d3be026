"""Check that environment.yml agrees with pyproject.toml (no conda needed).

Every environment.yml dependency (conda or pip) must be a pyproject dependency or belong to one of its extras, with
bounds inside pyproject's specifier; every core pyproject dependency must appear in environment.yml; the python pin
must satisfy requires-python. Exit code 1 and one line per problem otherwise.
"""
from __future__ import annotations

import re
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

CONDA_TO_PYPI = {"matplotlib-base": "matplotlib", "pytorch": "torch", "pytorch-cpu": "torch"}
CONDA_ONLY = {"python", "pip", "cpuonly", "nodejs"}
SPEC_RE = re.compile(r"^([A-Za-z0-9_.\-]+)\s*(.*)$")


def conda_spec(s: str):
    """'numpy>=1.26' / 'python=3.11' / 'conda-forge::x=1.2' -> (name, SpecifierSet)."""
    s = s.split("::")[-1].strip()
    m = SPEC_RE.match(s)
    if not m:
        raise ValueError(f"unparseable conda spec {s!r}")
    name, ver = m.group(1), m.group(2).replace(" ", "")
    parts = []
    for p in filter(None, ver.split(",")):
        if re.match(r"^=[^=]", p):  # conda '=3.11' means 3.11.*
            p = "=" + p + ("" if p.endswith("*") else ".*")
        elif re.match(r"^\d", p):
            p = "==" + p
        parts.append(p)
    return name, SpecifierSet(",".join(parts))


def bounds(spec: SpecifierSet):
    return [Version(s.version.rstrip(".*")) for s in spec if s.operator in (">=", "==", "~=", ">")]


def check(env_path="environment.yml", pyproject_path="pyproject.toml") -> list[str]:
    env = yaml.safe_load(open(env_path))
    proj = tomllib.load(open(pyproject_path, "rb"))["project"]
    core = {canonicalize_name(Requirement(d).name): Requirement(d).specifier for d in proj["dependencies"]}
    extras = {}
    for deps in proj.get("optional-dependencies", {}).values():
        for d in deps:
            r = Requirement(d)
            extras.setdefault(canonicalize_name(r.name), r.specifier)
    known = {**extras, **core}
    errors, seen = [], set()
    python_pinned = False
    for dep in env.get("dependencies", []):
        items = []
        if isinstance(dep, dict):
            for p in dep.get("pip", []):
                if p.startswith("-"):
                    continue  # '-e .', '-r file', '-c file'
                r = Requirement(p)
                items.append((r.name, r.specifier, "pip"))
        else:
            n, sp = conda_spec(dep)
            items.append((n, sp, "conda"))
        for name, spec, kind in items:
            if name == "python":
                python_pinned = True
                rp = SpecifierSet(proj.get("requires-python", ""))
                for v in bounds(spec):
                    if v not in rp:
                        errors.append(f"python {spec} outside requires-python {rp}")
                continue
            if name in CONDA_ONLY:
                continue
            key = canonicalize_name(CONDA_TO_PYPI.get(name, name))
            seen.add(key)
            if key not in known:
                errors.append(f"{kind} dependency {name!r} is in {env_path} but not in pyproject (core or extras)")
                continue
            for v in bounds(spec):
                if known[key] and v not in known[key]:
                    errors.append(f"{name} {spec} ({env_path}) vs {key} {known[key]} (pyproject): {v} not allowed")
    if not python_pinned:
        errors.append(f"{env_path} does not pin python")
    for missing in sorted(set(core) - seen):
        errors.append(f"pyproject dependency {missing!r} missing from {env_path}")
    return errors


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    errors = check(*argv)
    for e in errors:
        print("ERROR:", e)
    print(f"environment.yml check: {len(errors)} problem(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
