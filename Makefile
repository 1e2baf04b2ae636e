.PHONY: run test
run:  ## set everything up and run gateway + worker in the foreground
	scripts/run
test:  ## set everything up and run the test suite
	scripts/test
