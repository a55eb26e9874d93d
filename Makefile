# The README's two commands: `make demo` (the quickstart pipeline, locally, on CPU) and
# `make test` (the whole suite). Both build what they need on a fresh machine: a virtualenv
# from uv.lock and the control-plane binaries, cached outside the clone (~/.cache/mentor).
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

VENV = $$(bash .ci/env.sh | tail -n 1)
CLUSTER_BIN = $$(bash tests/cluster/build.sh | tail -n 1)
PYTEST_ARGS ?=

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

env:  ## build (or reuse) the cached virtualenv and print its path
	@echo "$(VENV)"

demo:  ## run the quickstart pipeline locally on CPU
	venv="$(VENV)"
	"$$venv/bin/mentor" validate -f examples/quickstart/
	"$$venv/bin/mentor-trainer" smollm2 --out .mentor/smollm2  # the base model, converted once
	"$$venv/bin/mentor" run -f examples/quickstart/ --root .mentor/quickstart --serve-seconds 0 \
		--ask "How many pheromone traps per hectare are used against the frost moth?"

loop:  ## the quickstart's drift -> retrain loop locally: serve, traffic, drift check, retraining, swap
	venv="$(VENV)"
	"$$venv/bin/mentor-trainer" smollm2 --out .mentor/smollm2  # the base model, converted once
	"$$venv/bin/mentor" loop -f examples/quickstart/ --root .mentor/loop

test:  ## run the whole test suite (builds the control plane, helm and MinIO on first use)
	venv="$(VENV)"
	export MENTOR_K8S_BIN="$(CLUSTER_BIN)"
	export MENTOR_HELM="$$(bash tests/cluster/build-helm.sh | tail -n 1)"
	export MENTOR_MINIO="$$(bash tests/storage/build-minio.sh | tail -n 1)"
	"$$venv/bin/python" -m pytest $(PYTEST_ARGS)

test-unit:  ## pure tests only (no control plane, no training)
	"$(VENV)/bin/python" -m pytest tests/unit $(PYTEST_ARGS)

cluster-bin:  ## build kube-apiserver, controller-manager, scheduler, kubectl, etcd and kwok
	@echo "$(CLUSTER_BIN)"

crds:  ## regenerate crds/ from the api models (and the Helm chart's copies)
	"$(VENV)/bin/python" -m mentor_operator.api.crdgen --out crds
	rm -f charts/mentor/crds/*.yaml
	cp crds/*.yaml manifests/base/kopf-peering-crds.yaml charts/mentor/crds/

bench-operator:  ## 1,000 FineTuneJobs against the real control plane
	venv="$(VENV)"
	MENTOR_K8S_BIN="$(CLUSTER_BIN)" "$$venv/bin/python" bench/operator_scale.py

.PHONY: help env demo loop test test-unit cluster-bin crds bench-operator
