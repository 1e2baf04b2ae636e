.PHONY: run test bench lock
run:  ## set everything up and run gateway + worker in the foreground
	scripts/run
test:  ## set everything up and run the test suite
	scripts/test
bench:  ## set everything up and benchmark against ceilings (~10 min); BENCH_ARGS=--quick for a smoke run
	scripts/bootstrap
	.venv/bin/pip install -q --require-hashes -r requirements/bench.txt
	.venv/bin/python -m bench $(BENCH_ARGS)
lock:  ## after changing dependencies in pyproject.toml: re-pin requirements/*.txt (scripts/lock --help)
	scripts/lock
