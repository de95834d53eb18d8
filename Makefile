# The two commands a newcomer needs: `make demo` and `make test`.
CARGO ?= cargo

.PHONY: demo test build bench bench-control-plane profile lint fmt manifests clean

## Run the whole mesh locally (identity, controller, services and proxies on loopback).
demo:
	$(CARGO) build --release --bins
	./target/release/mesh demo

## Unit and end-to-end tests (the end-to-end tests start the real binaries).
test:
	$(CARGO) build --bins
	$(CARGO) test --workspace --no-fail-fast

build:
	$(CARGO) build --release --bins

## Proxy pair vs direct connection, same run (needs wrk and nginx: apt-get install -y wrk nginx-light).
bench:
	$(CARGO) build --release --bins
	# Alone, so the proxy does not inherit features the control plane's deps (kube)
	# switch on in shared crates: the binary users deploy is built this way too.
	$(CARGO) build --release -p mesh-proxy
	python3 bench/run.py

## Where the proxy spends its CPU under a bench load (needs perf: apt-get install -y linux-perf).
profile:
	$(CARGO) build --release --bins
	$(CARGO) build --profile profiling -p mesh-proxy
	python3 bench/profile.py

## The controller under load (release build): 1,000 Services, 10,000 pods, 2,000 proxies
## × 3 streams on a fake Kubernetes API; endpoint changes timed to every stream.
bench-control-plane:
	$(CARGO) build --release --bins
	./target/release/mesh-bench-control-plane

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## Regenerate manifests/crds/ from the CRD types (a test fails when they are out of date).
manifests:
	$(CARGO) run --quiet -p mesh-cli --bin mesh -- install --crds --output-dir manifests/crds

clean:
	$(CARGO) clean
