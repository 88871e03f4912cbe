# Two commands set up and exercise a fresh machine:
#   make demo   - builds a tiny random LLaVA-1.5 and runs the evaluation pipeline end to end (CPU; about 70 s
#                 on 2 idle cores, minutes on a busy machine; the first install comes on top)
#   make test   - runs the test suite
# Both install what they need first (a virtual environment in .venv).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# torch is pinned to the build this project is tested against. On a GPU machine, create .venv and
# install your CUDA build of torch 2.13 into it first; `make install` then keeps it.
TORCH  ?= torch==2.13.0

.PHONY: install demo test lint format clean eval-mini

install: $(STAMP)

# lmms-eval goes in without its declared dependencies (torchvision, timm, wandb, ...): its core needs only the
# packages of requirements-lmms.txt (README, "lmms-eval").
$(STAMP): pyproject.toml requirements.txt requirements-lmms.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -r requirements.txt -r requirements-lmms.txt
	$(PY) -m pip install -q -e ".[video,judge,plot,dev,lmms]"
	$(PY) -m pip install -q --no-deps lmms-eval==0.7.3
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m llava.demo --out demo_out

# Two pytest-xdist workers: CI has 2 cores, and every test runs its tiny models on one torch thread
# (tests/conftest.py). TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .

format: $(STAMP)
	$(VENV)/bin/ruff format .

clean:
	rm -rf demo_out .pytest_cache

# Every method x benchmark script end to end on the tiny checkpoint and the mini fixtures (CPU; 204 runs, each
# loading the tiny model, so far longer than the demo; then scripts/v1_6 on the tiny LLaVA-NeXT checkpoint).
# The tiny LLM has 4 decoder layers, so in-LLM methods whose default layers are deeper get shallower ones
# (and PyramidDrop a budget its layer average can reach).
# scripts/qwen2_5_vl runs on the tiny Qwen2.5-VL checkpoint (at most 144 tokens per image there, so PyramidDrop
# gets a budget of 64) for the methods the qwen2.5-vl family integrates.
TINY_KNOBS_PDrop      := -- --pdrop-layers 1,2,3
TINY_KNOBS_SparseVLM  := -- --sparsevlm-layers 0,1,2
TINY_KNOBS_FiCoCo-L   := 2
TINY_KNOBS_FiCoCo-VL  := 2
# the arguments of one script in $$script (method folder = its parent): the budget and the tiny knobs
TINY_SCRIPT_ARGS = method=$$(basename $$(dirname $$script)); \
	  case $$method in baseline) args="";; PDrop) args="192 $(TINY_KNOBS_PDrop)";; \
	    SparseVLM) args="64 $(TINY_KNOBS_SparseVLM)";; FiCoCo-L) args="64 $(TINY_KNOBS_FiCoCo-L)";; \
	    FiCoCo-VL) args="64 $(TINY_KNOBS_FiCoCo-VL)";; *) args="64";; esac; \
	  case $$args in *--*) extra="";; *) extra="--";; esac
# scripts/v1_6 (LLaVA-NeXT) runs on the tiny NeXT checkpoint for the methods the llava-next family integrates
# (`python -m llava.eval.make_scripts --supported llava-next`; the others are refused by the family).
eval-mini: $(STAMP)
	$(PY) -m llava.model.tiny --out demo_out/checkpoints/tiny-llava-v1.5
	$(PY) -m llava.model.tiny --family llava-next --out demo_out/checkpoints/tiny-llava-next
	$(PY) -m llava.model.tiny --family qwen2.5-vl --out demo_out/checkpoints/tiny-qwen2.5-vl
	$(PY) -m llava.data.mini --out demo_out/eval-mini
	set -e; for script in scripts/v1_5/eval/*/*.sh; do \
	  $(TINY_SCRIPT_ARGS); \
	  MODEL_PATH=demo_out/checkpoints/tiny-llava-v1.5 DATA_ROOT=demo_out/eval-mini CUDA_VISIBLE_DEVICES= \
	    bash $$script $$args $$extra --max_new_tokens 16 --num-workers 0; \
	done
	set -e; for folder in $$($(PY) -m llava.eval.make_scripts --supported llava-next); do \
	  for script in scripts/v1_6/eval/$$folder/*.sh; do \
	    $(TINY_SCRIPT_ARGS); \
	    MODEL_PATH=demo_out/checkpoints/tiny-llava-next DATA_ROOT=demo_out/eval-mini CUDA_VISIBLE_DEVICES= \
	      bash $$script $$args $$extra --max_new_tokens 16 --num-workers 0; \
	  done; \
	done
	set -e; for folder in $$($(PY) -m llava.eval.make_scripts --supported qwen2.5-vl); do \
	  for script in scripts/qwen2_5_vl/eval/$$folder/*.sh; do \
	    $(TINY_SCRIPT_ARGS); \
	    case $$method in PDrop) args="64 -- --pdrop-layers 1,2,3"; extra="";; esac; \
	    MODEL_PATH=demo_out/checkpoints/tiny-qwen2.5-vl DATA_ROOT=demo_out/eval-mini CUDA_VISIBLE_DEVICES= \
	      bash $$script $$args $$extra --max_new_tokens 16 --num-workers 0; \
	  done; \
	done
	$(PY) -m llava.eval.summarize --root demo_out/eval-mini
