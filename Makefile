# Two commands do all the set-up on a fresh machine:
#   make tutorials   - create .venv, install gazekit, run every tutorial headless on the embedded model, write figures/
#   make test        - create .venv, install gazekit + test extras, run the whole test suite (unit, tiny real
#                      families, organism, notebooks with nbval, browser test when chromium is installed)
# Torch: the CPU wheel torch==2.13.0 is installed first. For a CUDA build:  make test TORCH_SPEC=torch CONSTRAINTS=
PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
CONSTRAINTS ?= ci/constraints.txt
FIGURES     ?= figures
PIP_C        = $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
BIN          = $(VENV)/bin

export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export HF_HUB_DISABLE_TELEMETRY = 1
export PYTHONHASHSEED = 0

.PHONY: setup tutorials test bench wheel clean

$(BIN)/.gazekit-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(PIP_C) "$(TORCH_SPEC)"
	$(BIN)/pip install -q --disable-pip-version-check $(PIP_C) -e ".[test]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

setup: $(BIN)/.gazekit-installed

tutorials: setup
	$(BIN)/python -m gazekit.tutorials --out $(FIGURES)

test: setup
	$(BIN)/python ci/check_environment_yml.py environment.yml pyproject.toml
	$(BIN)/python -m pytest -p no:cacheprovider -q tests tutorials \
	  --nbval --nbval-current-env --nbval-sanitize-with tutorials/nbval_sanitize.cfg --nbval-cell-timeout 600

bench: setup
	$(BIN)/python -m benchmarks

# the distribution students install on Colab (gazekit-vlm, imported as gazekit), with the embedded model inside:
# dist/gazekit_vlm-<version>-py3-none-any.whl. Needs only pip (which fetches setuptools in an isolated build).
wheel:
	$(PYTHON) -m pip wheel --no-deps --disable-pip-version-check -q -w dist .

clean:
	rm -rf $(VENV) $(FIGURES) dist build
