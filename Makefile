.PHONY: run test bench
run:  ## set everything up and run gateway + worker in the foreground
	scripts/run
test:  ## set everything up and run the test suite
	scripts/test
bench:  ## set everything up and benchmark against ceilings (~10 min); BENCH_ARGS=--quick for a smoke run
	scripts/bootstrap
	.venv/bin/pip install -q -e '.[test,bench]'
	.venv/bin/python -m bench $(BENCH_ARGS)
