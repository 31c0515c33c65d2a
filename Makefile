# The two commands of the README:
#   make generate   - set up, then generate product images with the shipped default pipeline
#   make test       - set up (with test tools and data), then run the test suite
PROMPT ?= red striped dress
PYTEST_ARGS ?=

.PHONY: setup setup-dev generate test

setup:
	bash scripts/setup.sh

setup-dev:
	bash scripts/setup.sh dev

generate: setup
	HF_HUB_OFFLINE=1 prodimg generate "$(PROMPT)" -n 8 -o outputs

test: setup-dev
	HF_HUB_OFFLINE=1 python3 -m pytest $(PYTEST_ARGS)
