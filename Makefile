# llmserve developer commands. `make` alone lists them.
# Docker targets use Compose v2 (`docker compose`); the others run through Poetry.

.DEFAULT_GOAL := help
SHELL := /bin/sh

DOCKER ?= docker
DOCKER_COMPOSE ?= $(DOCKER) compose
POETRY ?= poetry
# Compose with the development override (source mounted, --reload) or the production file alone.
COMPOSE_DEV = $(DOCKER_COMPOSE) -f docker-compose.yml -f docker-compose.dev.yml
COMPOSE_PROD = $(DOCKER_COMPOSE) -f docker-compose.yml

# Options: `make bake-image MODEL=llama3.2:1b TAG=... PUSH=1`, `make logs SERVICE=api`,
# `make up-cpu HOST_BIND_IP=0.0.0.0`, `make up-scale N=3`.
MODEL ?=
TAG ?=
PUSH ?=
SERVICE ?=
HOST_BIND_IP ?= 127.0.0.1
N ?= 2
BAKE_ARGS = $(if $(MODEL),--model '$(MODEL)') $(if $(TAG),--tag '$(TAG)') $(if $(PUSH),--push)

# Point .env (read by Compose) at $(1); refuse to replace a .env that is a real file.
LINK_ENV = if [ ! -f '$(1)' ]; then echo "$(1) is missing: run 'make setup' first" >&2; exit 1; fi; \
	if [ -e .env ] && [ ! -L .env ]; then \
		echo ".env is a regular file, not the symlink make manages: move it (e.g. to $(1))" >&2; \
		exit 1; \
	fi; \
	ln -sfn '$(1)' .env && echo ".env -> $(1)"

.PHONY: help setup up up-prod up-scale up-cpu down logs shell migrate format format-check lint lint-fix \
	typecheck test image-check bake-image

help: ## Show this list of targets
	@echo "Usage: make <target>"
	@awk 'BEGIN { FS = ":.*## " } /^[a-zA-Z0-9_-]+:.*## / { printf "  %-14s %s\n", $$1, $$2 }' \
		$(MAKEFILE_LIST)

setup: ## Create .env.dev and .env.prod from .env.example (never overwrites) and pull postgres:16-alpine
	@for f in .env.dev .env.prod; do \
		if [ -e "$$f" ]; then echo "$$f exists: left unchanged"; \
		else cp .env.example "$$f" && echo "created $$f from .env.example: edit it"; fi; \
	done
	$(DOCKER) pull postgres:16-alpine

up: ## Start the dev stack (.env -> .env.dev, source mounted, hot reload)
	@$(call LINK_ENV,.env.dev)
	$(COMPOSE_DEV) up -d --build

up-prod: ## Start the production stack (.env -> .env.prod, docker-compose.yml alone)
	@$(call LINK_ENV,.env.prod)
	$(COMPOSE_PROD) up -d --build

up-scale: ## Production stack with N API replicas (default 2) behind nginx on HOST_BIND_IP:8080
	@$(call LINK_ENV,.env.prod)
	$(COMPOSE_PROD) --profile scale up -d --build --scale api-replica=$$(( $(N) - 1 ))

up-cpu: ## No GPU: build the cpu image (llama.cpp, built-in model) and serve it on HOST_BIND_IP:8000
	$(DOCKER) build -f docker/api.Dockerfile --target cpu -t llmserve-api:cpu .
	$(DOCKER) run --rm -p '$(HOST_BIND_IP):8000:8000' -v llmserve-data:/data llmserve-api:cpu

down: ## Stop and remove the stack's containers, replicas and nginx included (the database volume is kept)
	$(DOCKER_COMPOSE) --profile scale down

logs: ## Follow the stack's logs (SERVICE=api for one service)
	$(DOCKER_COMPOSE) logs -f --tail=200 $(SERVICE)

shell: ## Open a shell in the running api container
	$(DOCKER_COMPOSE) exec api sh

migrate: ## Apply the database migrations inside the running api container
	$(DOCKER_COMPOSE) exec api llmserve migrate

format: ## Format the code with black
	$(POETRY) run black .

format-check: ## Check the formatting with black (no changes)
	$(POETRY) run black --check .

lint: ## Lint with ruff
	$(POETRY) run ruff check .

lint-fix: ## Lint with ruff and apply its safe fixes
	$(POETRY) run ruff check --fix .

typecheck: ## Type-check the package with mypy --strict (settings in pyproject.toml)
	$(POETRY) run mypy

test: ## Run the test suite
	$(POETRY) run pytest

image-check: ## Build both API images and run them for real without Docker (root, Debian)
	bash docker/smoke.sh

bake-image: ## Build the Ollama image with a model baked in (MODEL=..., TAG=..., PUSH=1)
	$(POETRY) run llmserve bake-image $(BAKE_ARGS)
